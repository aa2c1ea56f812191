"""The SQLite block store: durability settings, encrypted rows, keyspace ids, group commit, reads."""

import asyncio
import sqlite3

import pytest
from chronoshard.shardnode.keys.crypto import open_block
from chronoshard.shardnode.keyspace.partitioning import keyspace_id
from chronoshard.shardnode.node import changelog
from chronoshard.shardnode.node.store import (
    NoKeyring,
    block_count,
    get_block,
    scan_blocks,
    scan_keyspace,
    version_counts,
)

from tests.support.stores import open_store, ring


async def test_put_get_roundtrip_encrypted_at_rest(store, tmp_path):
    s, holder = store
    res = await s.put("users", "alice", b"plain-secret-value")
    assert res.lsn == 1 and res.key_version == 1
    block = await s.read(lambda c: get_block(c, "users", "alice"))
    assert block.keyspace_id == keyspace_id("users", "alice")
    assert block.size == 18 and block.lsn == 1
    assert open_block(holder.keyring, "users", "alice", block.frame, block.checksum) == b"plain-secret-value"
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("blocks.sqlite3"))
    assert b"alice" in raw  # the file really holds the row...
    assert b"plain-secret-value" not in raw  # ...but only ciphertext


async def test_pragmas_make_commits_durable(store):
    s, _ = store
    conn = s.reader()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


async def test_overwrite_and_delete_log_changes_in_order(store):
    s, _ = store
    await s.put("t", "k", b"1")
    await s.put("t", "k", b"22")
    assert (await s.delete("t", "k")).lsn == 3
    assert await s.delete("t", "k") is None  # nothing to delete: no change entry either
    entries = await s.read(lambda c: changelog.read(c, 0, 10))
    assert [(e.lsn, e.op, e.size, e.key_version) for e in entries] == [(1, "put", 1, 1), (2, "put", 2, 1),
                                                                     (3, "delete", 0, None)]
    assert await s.read(lambda c: get_block(c, "t", "k")) is None
    assert await s.read(changelog.last_lsn) == 3


async def test_concurrent_writes_are_group_committed_and_all_present(store):
    s, _ = store
    results = await asyncio.gather(*(s.put("t", f"k{i:03}", bytes([i]) * 10) for i in range(200)))
    assert sorted(r.lsn for r in results) == list(range(1, 201))
    assert await s.read(block_count) == 200
    entries = await s.read(lambda c: changelog.read(c, 0, 1000))
    assert [e.lsn for e in entries] == list(range(1, 201))


async def test_write_without_keyring_fails_and_changes_nothing(store):
    s, holder = store
    holder.keyring = None
    with pytest.raises(NoKeyring):
        await s.put("t", "k", b"x")
    assert await s.read(block_count) == 0
    assert await s.read(changelog.last_lsn) == 0


async def test_failing_job_in_a_group_rolls_back_only_itself(store):
    s, _ = store

    def bad(conn):
        conn.execute("INSERT INTO meta (name, value) VALUES ('x', '1')")
        raise ValueError("boom")

    futs = [s.submit(lambda c: c.execute("INSERT INTO meta (name, value) VALUES ('a', '1')")), s.submit(bad),
            s.submit(lambda c: c.execute("INSERT INTO meta (name, value) VALUES ('b', '1')"))]
    await asyncio.wrap_future(futs[0])
    with pytest.raises(ValueError):
        await asyncio.wrap_future(futs[1])
    await asyncio.wrap_future(futs[2])
    names = await s.read(lambda c: [r[0] for r in c.execute("SELECT name FROM meta ORDER BY name")])
    assert names == ["a", "b"]


async def test_writes_use_the_primary_current_at_commit(store):
    s, holder = store
    await s.put("t", "a", b"1")
    holder.keyring = ring(2, (1, 2), generation=2)
    await s.put("t", "b", b"2")
    assert await s.read(version_counts) == {1: 1, 2: 1}


async def test_scan_pages_in_key_order(store):
    s, _ = store
    for k in ["c", "a", "b", "d"]:
        await s.put("t", k, k.encode())
    await s.put("other", "a", b"x")
    page1 = await s.read(lambda c: scan_blocks(c, "t", None, 3))
    page2 = await s.read(lambda c: scan_blocks(c, "t", page1[-1].key, 3))
    assert [b.key for b in page1] == ["a", "b", "c"] and [b.key for b in page2] == ["d"]


async def test_keyspace_scan_returns_range_in_keyspace_order(store):
    s, _ = store
    keys = [f"k{i}" for i in range(50)]
    for k in keys:
        await s.put("t", k, b"v")
    ids = sorted(keyspace_id("t", k) for k in keys)
    lo, hi = ids[10], ids[30]
    got = await s.read(lambda c: scan_keyspace(c, lo, hi, 100))
    assert [b.keyspace_id for b in got] == ids[10:31]
    everything = await s.read(lambda c: scan_keyspace(c, 0, 2**64 - 1, 100))
    assert len(everything) == 50


async def test_reopen_keeps_everything(tmp_path):
    s, _ = open_store(tmp_path, ring(1, (1,)))
    await s.put("t", "k", b"v")
    s.close()
    s2, _ = open_store(tmp_path, ring(1, (1,)))
    try:
        assert (await s2.read(lambda c: get_block(c, "t", "k"))).size == 1
        assert (await s2.put("t", "k2", b"v")).lsn == 2
    finally:
        s2.close()


def test_sqlite_rejects_duplicate_rows_directly(tmp_path):
    s, _ = open_store(tmp_path, ring(1, (1,)))
    s.close()
    conn = sqlite3.connect(tmp_path / "blocks.sqlite3")
    conn.execute("INSERT INTO blocks (tbl, key, keyspace, key_version, size, checksum, frame, lsn) "
                 "VALUES ('t','k',0,1,0,x'',x'',1)")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO blocks (tbl, key, keyspace, key_version, size, checksum, frame, lsn) "
                     "VALUES ('t','k',0,1,0,x'',x'',2)")


def test_one_store_per_data_directory(tmp_path):
    from chronoshard.shardnode.node.store import StoreLocked

    s, _ = open_store(tmp_path, ring(1, (1,)))
    with pytest.raises(StoreLocked, match="another process holds"):
        open_store(tmp_path, ring(1, (1,)))
    s.close()
    s2, _ = open_store(tmp_path, ring(1, (1,)))  # released on close
    s2.close()


async def test_conditional_writes_are_checked_in_the_writer_transaction(store):
    from chronoshard.shardnode.node.store import PreconditionFailed

    s, _ = store
    assert (await s.put("t", "k", b"1", if_lsn=0)).lsn == 1
    # a group of jobs all conditioned on LSN 1: the first commits, the others see its LSN inside the same transaction
    outcomes = await asyncio.gather(*(s.put("t", "k", f"w{i}".encode(), if_lsn=1) for i in range(10)),
                                    return_exceptions=True)
    won = [o for o in outcomes if not isinstance(o, BaseException)]
    lost = [o for o in outcomes if isinstance(o, PreconditionFailed)]
    assert len(won) == 1 and len(lost) == 9 and {e.current for e in lost} == {2}
    with pytest.raises(PreconditionFailed) as err:
        await s.delete("t", "k", if_lsn=1)
    assert err.value.current == 2
    assert (await s.delete("t", "k", if_lsn=2)).lsn == 3
    assert await s.read(changelog.last_lsn) == 3  # refused writes logged nothing
