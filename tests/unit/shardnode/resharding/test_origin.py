"""The change log's ``origin`` (docs/resharding.md): 'write' for a client's write, 'move_in' / 'purge' for a
reshard's rows; added to a store file made by the schema before it; served in /v1/changes entries and kept by a
mirror's apply."""

from __future__ import annotations

import sqlite3
import time

import pytest
from chronoshard.shardnode.node import changelog, consumers
from chronoshard.shardnode.node.store import DB_NAME
from chronoshard.shardnode.node.stream_api import change_json
from chronoshard.shardnode.replication import apply
from chronoshard.shardnode.serving.changestream import parse_change

from tests.support.stores import open_store, ring

# The node's store schema as it was before the origin column (blocks.sqlite3 of the release before #19).
OLD_SCHEMA = """
CREATE TABLE blocks (id INTEGER PRIMARY KEY, tbl TEXT NOT NULL, key TEXT NOT NULL, keyspace INTEGER NOT NULL,
    key_version INTEGER NOT NULL, size INTEGER NOT NULL, checksum BLOB NOT NULL, frame BLOB NOT NULL,
    lsn INTEGER NOT NULL, UNIQUE (tbl, key));
CREATE INDEX blocks_keyspace ON blocks (keyspace, tbl, key);
CREATE INDEX blocks_version ON blocks (key_version);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE changes (lsn INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, tbl TEXT NOT NULL,
    key TEXT NOT NULL, op TEXT NOT NULL CHECK (op IN ('put', 'delete', 'rewrap')), key_version INTEGER,
    size INTEGER NOT NULL, frame BLOB, checksum BLOB, identity TEXT);
CREATE TABLE changelog_state (id INTEGER PRIMARY KEY CHECK (id = 1), frame_bytes INTEGER NOT NULL,
    frames_from INTEGER);
INSERT INTO changelog_state (id, frame_bytes, frames_from) VALUES (1, 0, NULL);
CREATE TABLE consumers (name TEXT PRIMARY KEY, acked_lsn INTEGER NOT NULL, registered_lsn INTEGER NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, state TEXT NOT NULL CHECK (state IN ('active', 'behind')));
INSERT INTO changes (time, tbl, key, op, key_version, size, identity) VALUES (1.0, 't', 'old', 'put', 1, 3, 'al');
INSERT INTO changes (time, tbl, key, op, key_version, size) VALUES (2.0, 't', 'old', 'delete', NULL, 0);
"""


async def test_a_store_file_from_before_gains_the_origin(tmp_path):
    conn = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    conn.executescript(OLD_SCHEMA)
    conn.close()
    s, _ = open_store(tmp_path, ring(1, (1,)))
    try:
        await s.put("t", "new", b"v")
        await s.write(lambda c: changelog.append(c, "t", "moved", "put", 1, 1, origin=changelog.MOVE_IN))
        entries = await s.read(lambda c: changelog.read(c, 0, 10))
        assert [(e.lsn, e.key, e.origin) for e in entries] == [(1, "old", "write"), (2, "old", "write"),
                                                               (3, "new", "write"), (4, "moved", "move_in")]
        assert entries[0].identity == "al"  # the older columns are untouched
        with pytest.raises(sqlite3.IntegrityError):  # only the three origins are stored
            await s.write(lambda c: changelog.append(c, "t", "x", "delete", None, 0, origin="moved"))
    finally:
        s.close()
    again, _ = open_store(tmp_path, ring(1, (1,)))  # a second migration is a no-op
    try:
        assert [e.origin for e in await again.read(lambda c: changelog.read(c, 0, 10))][-1] == "move_in"
    finally:
        again.close()


async def test_origin_is_served_parsed_and_kept_by_a_mirror(tmp_path):
    src, _ = open_store(tmp_path / "a", ring(1, (1,)))
    dst, _ = open_store(tmp_path / "b", ring(1, (1,)))
    try:
        await src.write(lambda c: consumers.register(c, "mirror", None, False, time.time()))
        src.frames_enabled = True  # as a slot registration through the API does
        await src.put("t", "w", b"1")
        await src.write(lambda c: changelog.append(c, "t", "p", "delete", None, 0, origin=changelog.PURGE))
        entries = await src.read(lambda c: list(changelog.iter_changes(c, 0, 10, frames=True)))
        docs = [change_json(e, frames=True) for e in entries]  # as GET /v1/changes serves them
        assert [d["origin"] for d in docs] == ["write", "purge"]
        parsed = [parse_change(d) for d in docs]
        assert [p.origin for p in parsed] == ["write", "purge"]
        older = {k: v for k, v in docs[1].items() if k != "origin"}  # a node from before #19 sends none
        assert parse_change(older).origin == "write"
        await dst.write(lambda c: apply.apply_page(c, parsed, entries[-1].lsn))
        kept = await dst.read(lambda c: changelog.read(c, 0, 10))
        assert [(e.lsn, e.origin) for e in kept] == [(1, "write"), (2, "purge")]
    finally:
        src.close()
        dst.close()
