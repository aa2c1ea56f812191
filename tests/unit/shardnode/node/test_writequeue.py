"""Queued writes and exactly-once applies (docs/tokens.md): the idempotency decision in the store's own transaction,
the queue's arrival order and durability across a reopen, the sealed bodies, what an apply's answer means."""

from __future__ import annotations

import asyncio
import time

import pytest
from chronoshard.shardnode.keys.crypto import open_block, seal_block
from chronoshard.shardnode.node import idempotency
from chronoshard.shardnode.node.idempotency import Replayed
from chronoshard.shardnode.node.store import PreconditionFailed, WriteResult
from chronoshard.shardnode.node.writequeue import Applied, WriteQueue, outcome_of

from tests.support.stores import open_store, ring


def changes(store) -> list[tuple[str, str]]:
    return store.reader().execute("SELECT key, op FROM changes ORDER BY lsn").fetchall()


async def test_a_repeated_key_is_answered_from_the_record_and_writes_nothing(tmp_path):
    store, _ = open_store(tmp_path, ring(1, (1,)))
    try:
        once = idempotency.scoped("alice", "k-1")
        first = await store.put_once("t", "a", b"one", once)
        assert isinstance(first, WriteResult)
        again = await store.put_once("t", "a", b"two", once)  # a retry, even with another body
        assert again == Replayed(200, {"table": "t", "key": "a", "lsn": first.lsn, "keyVersion": 1, "size": 3})
        # a conditional write retried after it was made is not a 412: the record answers first
        cond = idempotency.scoped("alice", "k-2")
        made = await store.put_once("t", "a", b"three", cond, if_lsn=first.lsn)
        assert isinstance(await store.put_once("t", "a", b"three", cond, if_lsn=first.lsn), Replayed)
        # the same client key from another writer is another write (keys are scoped by writer)
        other = await store.put_once("t", "a", b"four", idempotency.scoped("bob", "k-1"))
        assert isinstance(other, WriteResult)
        assert changes(store) == [("a", "put")] * 3
        assert isinstance(made, WriteResult) and other.lsn == made.lsn + 1
        gone = await store.delete_once("t", "a", idempotency.scoped("alice", "d"))
        assert isinstance(gone, WriteResult)
        assert await store.delete_once("t", "a", idempotency.scoped("alice", "d")) == Replayed(
            200, {"table": "t", "key": "a", "lsn": gone.lsn})
        missing = await store.delete_once("t", "zz", idempotency.scoped("alice", "m"))
        assert missing is None
        assert (await store.delete_once("t", "zz", idempotency.scoped("alice", "m"))).status == 404
    finally:
        store.close()


async def test_a_failed_write_records_nothing(tmp_path):
    store, _ = open_store(tmp_path, ring(1, (1,)))
    try:
        key = idempotency.scoped("alice", "c")
        with pytest.raises(PreconditionFailed):
            await store.put_once("t", "a", b"x", key, if_lsn=7)
        assert store.reader().execute("SELECT count(*) FROM idempotency").fetchone()[0] == 0
        assert isinstance(await store.put_once("t", "a", b"x", key, if_lsn=0), WriteResult)
    finally:
        store.close()


async def test_idempotency_retention_is_bounded(tmp_path):
    store, _ = open_store(tmp_path, ring(1, (1,)))
    try:
        for i in range(5):
            await store.put_once("t", f"k{i}", b"x", idempotency.scoped(None, str(i)))
        now = time.time()
        assert await store.write(lambda c: idempotency.trim(c, now, max_keys=3)) == 2
        assert await store.write(lambda c: idempotency.trim(c, now + 2 * idempotency.RETAIN_SECONDS)) == 3
    finally:
        store.close()


def enqueue(q: WriteQueue, key: str, method: str = "PUT", body: bytes = b"v") -> tuple[str, int]:
    frame, cs, _ = seal_block(ring(1, (1,)), "t", key, body) if method == "PUT" else (None, None, 0)
    return q.enqueue(owner="alice", writer="alice", method=method, table="t", key=key, idem=None, if_lsn=None,
                     frame=frame, checksum=cs)


def test_the_queue_keeps_arrival_order_and_survives_a_reopen(tmp_path):
    q = WriteQueue(tmp_path)
    ids = [enqueue(q, k, method) for k, method in (("a", "PUT"), ("b", "DELETE"), ("c", "PUT"))]
    assert [pos for _, pos in ids] == [1, 2, 3]
    q.close()
    q = WriteQueue(tmp_path)  # a restart: nothing answered 202 is lost
    head = q.head()
    assert head is not None and head.id == ids[0][0] and head.idem == f"queue-{head.id}"
    # the body is sealed under the table's key (test_sealed_body_is_not_plaintext_on_disk) and opens with it
    assert head.frame is not None and head.checksum is not None
    assert open_block(ring(1, (1,)), "t", "a", head.frame, head.checksum) == b"v"
    q.attempted(head.id, "503 not_primary")
    assert q.head().id == head.id and q.head().attempts == 1  # a retried entry stays first: order holds
    q.finish(head.id, "applied", 7, None)
    assert q.describe(head.id) | {"owner": None} == {"id": head.id, "owner": None, "state": "applied", "lsn": 7,
                                                     "error": None, "position": None, "method": "PUT",
                                                     "table": "t", "key": "a", "attempts": 1}
    nxt = q.head()
    assert nxt is not None and nxt.id == ids[1][0] and nxt.frame is None
    assert q.describe(ids[2][0])["position"] == 2
    assert q.listing()["counts"] == {"queued": 2, "applied": 1, "failed": 0}
    assert q.trim(time.time() + 2 * 86_400) == 1
    q.close()


def test_sealed_body_is_not_plaintext_on_disk(tmp_path):
    q = WriteQueue(tmp_path)
    secret = b"a very recognisable secret payload"
    enqueue(q, "s", body=secret)
    q.close()
    for f in tmp_path.iterdir():
        assert secret not in f.read_bytes(), f.name


@pytest.mark.parametrize("status,state", [
    (200, "applied"), (202, "applied"), (400, "failed"), (403, "failed"), (409, "failed"), (412, "failed"),
    (404, "failed"), (422, "failed"), (421, "retry"), (503, "retry"), (500, "retry"), (0, "retry")])
def test_outcome_of_an_apply(status, state):
    got = outcome_of(Applied(status, {"lsn": 3} if status < 300 else {"error": "e", "message": "m"}))
    assert got[0] == state
    assert got[1] == (3 if state == "applied" else None)
    assert (got[2] is None) == (state == "applied")


def test_writes_from_threads_get_distinct_positions(tmp_path):
    q = WriteQueue(tmp_path)

    async def many() -> list[tuple[str, int]]:
        return list(await asyncio.gather(*(asyncio.to_thread(enqueue, q, f"k{i}") for i in range(20))))

    got = asyncio.run(many())
    assert sorted(pos for _, pos in got) == list(range(1, 21))
    q.close()


def test_queued_bodies_are_counted_per_key_version_until_applied(tmp_path):
    q = WriteQueue(tmp_path)
    enqueue(q, "a")  # sealed under version 1
    frame, cs, _ = seal_block(ring(2, (1, 2)), "t", "b", b"w")  # after a rotation's promotion: version 2
    second, _ = q.enqueue(owner="alice", writer="alice", method="PUT", table="t", key="b", idem=None, if_lsn=None,
                          frame=frame, checksum=cs)
    enqueue(q, "c", "DELETE")  # a delete has no body: it needs no key
    assert q.version_counts() == {1: 1, 2: 1}
    q.finish(q.head().id, "applied", 3, None)  # applied: its body is gone, version 1 is no longer needed
    assert q.version_counts() == {2: 1}
    q.finish(second, "failed", None, "403 forbidden")
    assert q.version_counts() == {}
    q.close()
