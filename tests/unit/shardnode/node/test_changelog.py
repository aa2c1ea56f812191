"""Change-log retention: trimming keeps the newest entries and readers can tell they missed some."""

import asyncio

from chronoshard.shardnode.node import changelog

from tests.support.servers import keyring_dir, serve
from tests.support.stores import open_store, ring


async def test_trim_keeps_newest_and_lsns_never_repeat(tmp_path):
    s, _ = open_store(tmp_path, ring(1, (1,)))
    try:
        for i in range(10):
            await s.put("t", f"k{i}", b"v")
        assert await s.write(lambda c: changelog.trim(c, 4)) == 6
        assert await s.write(lambda c: changelog.trim(c, 4)) == 0
        assert await s.read(changelog.first_lsn) == 7 and await s.read(changelog.last_lsn) == 10
        assert [e.lsn for e in await s.read(lambda c: changelog.read(c, 0, 100))] == [7, 8, 9, 10]
        await s.write(lambda c: changelog.trim(c, 0))
        assert await s.read(changelog.first_lsn) == 0
        assert (await s.put("t", "k", b"v")).lsn == 11  # AUTOINCREMENT: trimmed LSNs are not reused
    finally:
        s.close()


async def test_changes_endpoint_reports_gap_after_retention(tmp_path):
    import aiohttp
    from chronoshard.shardnode.node.server import NodeConfig, create_app

    app = create_app(NodeConfig(data_dir=tmp_path / "d", keyring_dir=keyring_dir(tmp_path), change_log_retain=3,
                                trim_interval_seconds=0.05))
    async with serve(app) as url, aiohttp.ClientSession() as s:
        for i in range(8):
            await s.put(f"{url}/v1/tables/t/blocks/k{i}", data=b"v")
        for _ in range(100):
            body = await (await s.get(f"{url}/v1/changes", params={"after": "0"})).json()
            if body["firstLsn"] == 6:
                break
            await asyncio.sleep(0.05)
        assert body["gap"] and body["firstLsn"] == 6 and [c["lsn"] for c in body["changes"]] == [6, 7, 8]
        body = await (await s.get(f"{url}/v1/changes", params={"after": "5"})).json()
        assert not body["gap"] and body["lastLsn"] == 8
        m = await (await s.get(f"{url}/metrics")).text()
        assert "chronoshard_node_changelog_trimmed_total 5.0" in m


OLD_SCHEMA = """
CREATE TABLE blocks (id INTEGER PRIMARY KEY, tbl TEXT NOT NULL, key TEXT NOT NULL, keyspace INTEGER NOT NULL,
    key_version INTEGER NOT NULL, size INTEGER NOT NULL, checksum BLOB NOT NULL, frame BLOB NOT NULL,
    lsn INTEGER NOT NULL, UNIQUE (tbl, key));
CREATE INDEX blocks_keyspace ON blocks (keyspace, tbl, key);
CREATE INDEX blocks_version ON blocks (key_version);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE changes (lsn INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, tbl TEXT NOT NULL,
    key TEXT NOT NULL, op TEXT NOT NULL CHECK (op IN ('put', 'delete', 'rewrap')), key_version INTEGER,
    size INTEGER NOT NULL);
INSERT INTO changes (time, tbl, key, op, key_version, size) VALUES (1.0, 't', 'gone', 'put', 1, 3);
INSERT INTO changes (time, tbl, key, op, key_version, size) VALUES (2.0, 't', 'gone', 'delete', NULL, 0);
"""


async def test_a_database_from_before_frames_is_migrated_at_open(tmp_path):
    import sqlite3

    from chronoshard.shardnode.keys.crypto import open_block
    from chronoshard.shardnode.node import consumers

    conn = sqlite3.connect(tmp_path / "blocks.sqlite3")
    conn.executescript(OLD_SCHEMA)
    conn.close()
    s, holder = open_store(tmp_path, ring(1, (1,)))
    try:
        cols = {r[1] for r in s.reader().execute("PRAGMA table_info(changes)")}
        assert {"frame", "checksum"} <= cols
        old = await s.read(lambda c: list(changelog.iter_changes(c, 0, 10, frames=True)))
        assert [(e.lsn, e.op, e.frame) for e in old] == [(1, "put", None), (2, "delete", None)]
        assert not s.frames_enabled and await s.read(changelog.frame_bytes) == 0
        await s.write(lambda c: consumers.register(c, "c", None, False, 3.0))
        s.frames_enabled = True
        res = await s.put("t", "k", b"after the migration")
        (entry,) = await s.read(lambda c: list(changelog.iter_changes(c, 2, 10, frames=True)))
        assert entry.lsn == res.lsn == 3
        assert open_block(holder.keyring, "t", "k", entry.frame, entry.checksum) == b"after the migration"
        assert await s.read(changelog.frame_bytes) == len(entry.frame)
    finally:
        s.close()
    s, _ = open_store(tmp_path, ring(1, (1,)))  # opening a migrated database again changes nothing
    try:
        assert s.frames_enabled and await s.read(changelog.last_lsn) == 3
    finally:
        s.close()
