"""The target side of a move, pure parts and SQL on a real store (docs/resharding.md): the move document, which
streamed changes a move applies, the content digest, the snapshot import and the exactly-once catch-up with the
cursor in the same transaction, and the removal of a range's blocks."""

from __future__ import annotations

import time

import pytest
from chronoshard.shardnode.keyspace.partitioning import keyspace_id
from chronoshard.shardnode.node import changelog, consumers
from chronoshard.shardnode.node.store import connect, put_in_txn
from chronoshard.shardnode.resharding import moves_sql as sql
from chronoshard.shardnode.resharding.moves import (
    ContentDigest,
    MoveInvalid,
    differing_buckets,
    lag_seconds,
    parse_move,
    slot_name,
    wanted,
)
from chronoshard.shardnode.serving.changestream import SnapshotBlock, StreamChange

from tests.support.stores import open_store, ring

HALF = 1 << 63
UPPER = (HALF, (1 << 64) - 1)
BODY = {"source": {"url": "https://10.0.0.1:7400/", "shard": 0}, "partition": 1,
        "ranges": [["8000000000000000", "ffffffffffffffff"]]}


def keys_in(lo: int, hi: int, n: int, table: str = "t") -> list[str]:
    out, i = [], 0
    while len(out) < n:
        if lo <= keyspace_id(table, f"k{i}") <= hi:
            out.append(f"k{i}")
        i += 1
    return out


def test_the_move_document():
    spec = parse_move(BODY)
    assert (spec.source_url, spec.source_shard, spec.partition, spec.ranges) == ("https://10.0.0.1:7400", 0, 1,
                                                                                  (UPPER,))
    assert parse_move(spec.to_doc()) == spec  # canonical: a resumed PUT compares equal
    assert parse_move({**BODY, "source": {**BODY["source"], "serverName": "a-0.a-headless.ns.svc"}}) != spec
    bad = [{**BODY, "extra": 1}, {**BODY, "source": {"url": "ftp://x", "shard": 0}},
           {**BODY, "source": {"url": "https://x", "shard": -1}}, {**BODY, "partition": True},
           {**BODY, "ranges": [["ff", "00"]]}, {**BODY, "ranges": []}, [], {**BODY, "source": {"shard": 0}}]
    for doc in bad:
        with pytest.raises(MoveInvalid):
            parse_move(doc)
    assert slot_name("orders-grow.1") == "move.orders-grow.1"


def change(lsn: int, key: str, op: str = "put", origin: str = "write") -> StreamChange:
    return StreamChange(lsn, float(lsn), "t", key, op, 1 if op != "delete" else None, 1,
                        b"F" + key.encode() if op != "delete" else None, b"C" * 16 if op != "delete" else None,
                        None, origin)


def test_wanted_keeps_the_ranges_changes_but_not_purges():
    inside, outside = keys_in(*UPPER, 2), keys_in(0, HALF - 1, 1)
    page = [change(1, inside[0]), change(2, outside[0]), change(3, inside[1], "delete"),
            change(4, inside[0], "delete", origin="purge")]
    assert [c.lsn for c in wanted(page, [UPPER])] == [1, 3]


def test_lag():
    assert lag_seconds(True, 10.0, 20.0) == 0.0
    assert lag_seconds(False, None, 20.0) is None  # unknown until a change was read: never "ready to verify"
    assert lag_seconds(False, 15.0, 20.0) == 5.0


def test_content_digest_covers_version_checksum_and_frame_not_lsn():
    def digest(rows):
        d = ContentDigest()
        for r in rows:
            d.add(*r)
        return d.result()

    base = [(1, "t", "a", 1, b"c" * 16, b"frame-a"), (HALF + 5, "t", "b", 1, b"d" * 16, b"frame-b")]
    a = digest(base)
    assert a["blocks"] == 2 and a == digest(list(base))
    for i, changed in enumerate([(1, "t", "a", 2, b"c" * 16, b"frame-a"), (1, "t", "a", 1, b"x" * 16, b"frame-a"),
                                 (1, "t", "a", 1, b"c" * 16, b"frame-A"), (1, "u", "a", 1, b"c" * 16, b"frame-a")]):
        other = digest([changed, base[1]])
        assert other["digest"] != a["digest"], i
        assert differing_buckets(a["buckets"], other["buckets"]) == 1
    assert digest([])["blocks"] == 0 and differing_buckets(a["buckets"], digest([])["buckets"]) == 2


@pytest.fixture
def stores(tmp_path):
    src, _ = open_store(tmp_path / "src", ring(1, (1,)))
    dst, _ = open_store(tmp_path / "dst", ring(1, (1,)))
    dst.submit(lambda c: consumers.register(c, "mirror.x", None, False, time.time())).result()  # frames logged
    dst.submit(sql.ensure_schema).result()
    yield src, dst
    src.close()
    dst.close()


def reading(store, fn):
    """``fn`` on a reader connection of its own (as the store's readers are: no transaction open)."""
    conn = connect(store.path)
    try:
        return fn(conn)
    finally:
        conn.close()


def stored(store, key):
    return store.submit(lambda c: c.execute("SELECT key_version, checksum, frame, lsn FROM blocks WHERE tbl = 't' "
                                            "AND key = ?", (key,)).fetchone()).result()


def test_import_then_catch_up_exactly_once(stores):
    src, dst = stores
    keys = keys_in(*UPPER, 4)
    blocks = []
    for k in keys[:3]:
        res = src.submit(lambda c, k=k: put_in_txn(c, src.current_keyring(), "t", k, k.encode(), frames=True)).result()
        row = src.submit(lambda c, k=k: c.execute("SELECT key_version, size, checksum, frame FROM blocks "
                                                  "WHERE key = ?", (k,)).fetchone()).result()
        blocks.append(SnapshotBlock("t", k, row[0], row[1], bytes(row[2]), bytes(row[3]), res.lsn))
    spec = parse_move(BODY)
    assert dst.submit(lambda c: sql.create(c, "m", spec)).result().phase == "copying"
    assert dst.submit(lambda c: sql.create(c, "m", spec)).result() is None  # one move per name
    dst.submit(lambda c: sql.begin_copy(c, "m", 3)).result()
    assert dst.submit(lambda c: sql.import_blocks(c, "m", blocks[:2])).result() == 2
    assert dst.submit(lambda c: sql.import_blocks(c, "m", blocks[2:])).result() == 3
    dst.submit(lambda c: sql.finish_copy(c, "m", 10)).result()
    row = dst.submit(lambda c: sql.get(c, "m")).result()
    assert (row.phase, row.snapshot_lsn, row.source_lsn, row.copied, row.total) == ("catching_up", 10, 10, 3, 3)
    # The frames as stored, under the target's own LSNs, logged with origin move_in (and the frame: a slot exists).
    log = dst.submit(lambda c: list(changelog.iter_changes(c, 0, 100, frames=True))).result()
    assert [(e.key, e.op, e.origin, e.frame) for e in log] == [(b.key, "put", "move_in", b.frame) for b in blocks]
    assert stored(dst, keys[0])[2] == blocks[0].frame and stored(dst, keys[0])[3] == log[0].lsn
    # A page applied, then replayed (a crash before the ack): the second time nothing is applied or logged.
    page = [change(11, keys[3]), change(12, keys[0], "delete"), change(13, keys[1], "rewrap")]
    assert dst.submit(lambda c: sql.apply_changes(c, "m", page, 20)).result() == 20
    assert dst.submit(lambda c: sql.apply_changes(c, "m", page, 20)).result() == 20
    after = dst.submit(lambda c: changelog.read(c, 0, 100)).result()
    assert [(e.key, e.op, e.origin) for e in after[3:]] == [(keys[3], "put", "move_in"),
                                                            (keys[0], "delete", "move_in"),
                                                            (keys[1], "rewrap", "move_in")]
    assert stored(dst, keys[0]) is None and stored(dst, keys[3])[2] == b"F" + keys[3].encode()
    # A delete of a key the target never had logs nothing.
    assert dst.submit(lambda c: sql.apply_changes(c, "m", [change(21, "never", "delete")], 21)).result() == 21
    assert len(dst.submit(lambda c: changelog.read(c, 0, 100)).result()) == 6
    # Digest at exactly the cursor, else the cursor.
    d = reading(dst, lambda c: sql.move_digest(c, "m", spec.ranges, 21, lambda: None))
    assert d["sourceLsn"] == 21 and d["blocks"] == 3
    assert reading(dst, lambda c: sql.move_digest(c, "m", spec.ranges, 20, lambda: None)) == 21  # a change at 21
    # Pages with nothing of the ranges move the cursor on: the content is the source's at any LSN from the newest
    # change applied (21) to the cursor.
    assert dst.submit(lambda c: sql.apply_changes(c, "m", [], 30)).result() == 30
    assert reading(dst, lambda c: sql.move_digest(c, "m", spec.ranges, 25, lambda: None))["blocks"] == 3
    assert reading(dst, lambda c: sql.move_digest(c, "m", spec.ranges, 31, lambda: None)) == 30  # not reached
    # Discard: every block of the range goes, logged as purges; the move row goes.
    assert dst.submit(lambda c: sql.clear_batch(c, spec.ranges, 2)).result() == 2
    assert dst.submit(lambda c: sql.clear_batch(c, spec.ranges, 2)).result() == 1
    assert dst.submit(lambda c: sql.clear_batch(c, spec.ranges, 2)).result() == 0
    assert reading(dst, lambda c: sql.range_digest(c, spec.ranges))["blocks"] == 0
    assert [e.origin for e in dst.submit(lambda c: changelog.read(c, 0, 100)).result()[-3:]] == ["purge"] * 3
    assert dst.submit(lambda c: sql.remove(c, "m")).result() and dst.submit(lambda c: sql.load_all(c)).result() == []


def test_a_change_without_its_frame_is_refused(stores):
    from chronoshard.shardnode.replication.apply import FrameMissing

    _, dst = stores
    dst.submit(lambda c: sql.create(c, "m", parse_move(BODY))).result()
    dst.submit(lambda c: sql.finish_copy(c, "m", 5)).result()
    bare = StreamChange(6, 6.0, "t", keys_in(*UPPER, 1)[0], "put", 1, 1, None, None)
    with pytest.raises(FrameMissing):
        dst.submit(lambda c: sql.apply_changes(c, "m", [bare], 6)).result()
    assert dst.submit(lambda c: sql.cursor(c, "m")).result() == 5  # the transaction rolled back
