"""The target side's SQL against the node's store (blocks.sqlite3, docs/resharding.md): the persisted moves, the
snapshot import and the catch-up apply (each in one writer transaction with the move's cursor), the removal of a
range's blocks, and the content digest of ranges from one read transaction. Every function runs inside the store
writer's transaction (``Store.write``) or a reader's; none commits. The table layouts are the node's
(shardnode/node/store.py, changelog.py); this package sits below the node and repeats the few statements it needs.

Moved-in blocks get this node's own LSNs: each is logged (op as on the source, origin ``move_in``) and the block row
carries that LSN, so the target's mirrors, shadow and cache tail see them like any change.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from chronoshard.shardnode.keyspace.partitioning import keyspace_id
from chronoshard.shardnode.replication.apply import FrameMissing, frames_recorded, last_lsn
from chronoshard.shardnode.serving.changestream import SnapshotBlock, StreamChange

from .fences import Range
from .moves import COPYING, ContentDigest, MoveSpec, parse_move
from .ranges import purge_batch

KEYSPACE_OFFSET = 1 << 63  # as shardnode/node/store.py: keyspace ids are stored shifted into signed range
MOVE_IN = "move_in"  # shardnode/node/changelog.py ORIGINS

SCHEMA = """
CREATE TABLE IF NOT EXISTS moves (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,                -- the move document (JSON, canonical)
    phase TEXT NOT NULL CHECK (phase IN ('copying', 'catching_up', 'failed')),
    snapshot_lsn INTEGER,              -- the source LSN of the snapshot copied (NULL while copying)
    source_lsn INTEGER,                -- the cursor: the source LSN applied through (NULL while copying)
    last_change_lsn INTEGER,           -- the source LSN of the newest change of the ranges applied (or the snapshot)
    copied INTEGER NOT NULL,           -- blocks imported from the snapshot
    total INTEGER,                     -- blocks in the snapshot (the source's estimate until it is copied)
    last_applied_time REAL,            -- the source's commit time of the newest change applied
    error TEXT,                        -- why it failed (phase 'failed')
    created REAL NOT NULL,
    updated REAL NOT NULL
);
"""


@dataclass(frozen=True)
class MoveRow:
    """One persisted move."""

    name: str
    spec: MoveSpec
    phase: str
    snapshot_lsn: int | None
    source_lsn: int | None
    copied: int
    total: int | None
    last_applied_time: float | None
    error: str | None


_COLS = "name, spec, phase, snapshot_lsn, source_lsn, copied, total, last_applied_time, error"


def _row(r: Sequence[Any]) -> MoveRow:
    return MoveRow(r[0], parse_move(json.loads(r[1])), *r[2:])


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the moves table of an older store file (one statement: executescript would commit the writer's
    transaction)."""
    conn.execute(SCHEMA)
    if "last_change_lsn" not in {r[1] for r in conn.execute("PRAGMA table_info(moves)")}:
        conn.execute("ALTER TABLE moves ADD COLUMN last_change_lsn INTEGER")


def load_all(conn: sqlite3.Connection) -> list[MoveRow]:
    """Every persisted move, by name."""
    return [_row(r) for r in conn.execute(f"SELECT {_COLS} FROM moves ORDER BY name")]


def get(conn: sqlite3.Connection, name: str) -> MoveRow | None:
    """One move (None: unknown)."""
    r = conn.execute(f"SELECT {_COLS} FROM moves WHERE name = ?", (name,)).fetchone()
    return None if r is None else _row(r)


def create(conn: sqlite3.Connection, name: str, spec: MoveSpec) -> MoveRow | None:
    """Persist a new move (phase copying); None if one with that name exists."""
    now = time.time()
    cur = conn.execute("INSERT OR IGNORE INTO moves (name, spec, phase, copied, created, updated) "
                       "VALUES (?, ?, ?, 0, ?, ?)", (name, json.dumps(spec.to_doc()), COPYING, now, now))
    return get(conn, name) if cur.rowcount else None


def remove(conn: sqlite3.Connection, name: str) -> bool:
    """Forget a move; False if it was unknown."""
    return conn.execute("DELETE FROM moves WHERE name = ?", (name,)).rowcount > 0


def set_failed(conn: sqlite3.Connection, name: str, error: str) -> None:
    """Stop a move for good (the operator rolls it back)."""
    conn.execute("UPDATE moves SET phase = 'failed', error = ?, updated = ? WHERE name = ?", (error, time.time(), name))


# ---- copying ------------------------------------------------------------------------------------------------------
def begin_copy(conn: sqlite3.Connection, name: str, total: int | None) -> None:
    """(Re)start the copy: no cursor, nothing copied (the caller then clears the ranges)."""
    conn.execute("UPDATE moves SET phase = 'copying', snapshot_lsn = NULL, source_lsn = NULL, last_change_lsn = NULL, "
                 "copied = 0, total = ?, last_applied_time = NULL, error = NULL, updated = ? WHERE name = ?",
                 (total, time.time(), name))


def clear_batch(conn: sqlite3.Connection, ranges: Sequence[Range], limit: int) -> int:
    """Delete up to ``limit`` blocks in ``ranges`` (leftovers of an earlier discarded or interrupted copy, or a
    rollback's imported blocks), logged as deletes with origin ``purge``: downstream consumers saw them arrive."""
    return purge_batch(conn, ranges, limit)


def _upsert(conn: sqlite3.Connection, table: str, key: str, version: int, size: int, checksum: bytes, frame: bytes,
            lsn: int) -> None:
    conn.execute(
        "INSERT INTO blocks (tbl, key, keyspace, key_version, size, checksum, frame, lsn) VALUES (?,?,?,?,?,?,?,?) "
        "ON CONFLICT(tbl, key) DO UPDATE SET key_version=excluded.key_version, size=excluded.size, "
        "checksum=excluded.checksum, frame=excluded.frame, lsn=excluded.lsn",
        (table, key, keyspace_id(table, key) - KEYSPACE_OFFSET, version, size, checksum, frame, lsn))


def _log(conn: sqlite3.Connection, now: float, table: str, key: str, op: str, version: int | None, size: int,
         frame: bytes | None, checksum: bytes | None, identity: str | None, frames: bool) -> int:
    if not frames:
        frame = checksum = None
    cur = conn.execute("INSERT INTO changes (time, tbl, key, op, key_version, size, frame, checksum, identity, origin) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (now, table, key, op, version, size, frame, checksum, identity, MOVE_IN))
    if frame is not None:
        conn.execute("UPDATE changelog_state SET frame_bytes = frame_bytes + ? WHERE id = 1", (len(frame),))
    return int(cur.lastrowid or 0)


def import_blocks(conn: sqlite3.Connection, name: str, blocks: Iterable[SnapshotBlock]) -> int:
    """Store one chunk of snapshot blocks as they are (frames as stored), each under a new local LSN logged with
    origin ``move_in``; returns the move's copied count."""
    frames, now, n = frames_recorded(conn), time.time(), 0
    for b in blocks:
        lsn = _log(conn, now, b.table, b.key, "put", b.key_version, b.size, b.frame, b.checksum, None, frames)
        _upsert(conn, b.table, b.key, b.key_version, b.size, b.checksum, b.frame, lsn)
        n += 1
    conn.execute("UPDATE moves SET copied = copied + ?, updated = ? WHERE name = ?", (n, now, name))
    (copied,) = conn.execute("SELECT copied FROM moves WHERE name = ?", (name,)).fetchone()
    return int(copied)


def finish_copy(conn: sqlite3.Connection, name: str, snapshot_lsn: int) -> None:
    """The snapshot is in: catch up from its LSN (the cursor), with the exact block count as the total."""
    conn.execute("UPDATE moves SET phase = 'catching_up', snapshot_lsn = ?, source_lsn = ?, last_change_lsn = ?, "
                 "total = copied, updated = ? WHERE name = ?", (snapshot_lsn, snapshot_lsn, snapshot_lsn, time.time(),
                                                               name))


# ---- catching up -----------------------------------------------------------------------------------------------
def _apply_one(conn: sqlite3.Connection, c: StreamChange, now: float, frames: bool) -> None:
    if c.op == "delete":
        if conn.execute("DELETE FROM blocks WHERE tbl = ? AND key = ?", (c.table, c.key)).rowcount:
            _log(conn, now, c.table, c.key, "delete", None, 0, None, None, c.identity, frames)
        return
    if c.frame is None or c.checksum is None or c.key_version is None:
        raise FrameMissing(c.lsn)
    lsn = _log(conn, now, c.table, c.key, c.op, c.key_version, c.size, c.frame, c.checksum, c.identity, frames)
    _upsert(conn, c.table, c.key, c.key_version, c.size, c.checksum, c.frame, lsn)


def apply_changes(conn: sqlite3.Connection, name: str, changes: Sequence[StreamChange], through: int) -> int:
    """Apply the (already filtered) source changes after the move's cursor in source-LSN order and move the cursor
    to ``through`` (at least the last applied), all in this transaction: a replayed page is skipped, so each
    change is applied exactly once. Returns the new cursor."""
    row = conn.execute("SELECT source_lsn FROM moves WHERE name = ? AND phase = 'catching_up'", (name,)).fetchone()
    if row is None or row[0] is None:
        raise LookupError(f"move {name} is not catching up")
    at, frames, now = int(row[0]), frames_recorded(conn), time.time()
    newest: float | None = None
    changed: int | None = None
    for c in changes:
        if c.lsn <= at:
            continue
        _apply_one(conn, c, now, frames)
        at, newest, changed = c.lsn, c.time, c.lsn
    at = max(at, through)
    conn.execute("UPDATE moves SET source_lsn = ?, last_change_lsn = coalesce(?, last_change_lsn), "
                 "last_applied_time = coalesce(?, last_applied_time), updated = ? WHERE name = ?",
                 (at, changed, newest, now, name))
    return at


def cursor(conn: sqlite3.Connection, name: str) -> int | None:
    """The source LSN a move has applied through (None: copying or unknown)."""
    row = conn.execute("SELECT source_lsn FROM moves WHERE name = ?", (name,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


# ---- digests --------------------------------------------------------------------------------------------------
def _digest_blocks(conn: sqlite3.Connection, ranges: Sequence[Range]) -> dict[str, Any]:
    d = ContentDigest()
    for lo, hi in sorted(ranges):
        for ks, t, k, v, cs, fr in conn.execute(
                "SELECT keyspace, tbl, key, key_version, checksum, frame FROM blocks WHERE keyspace BETWEEN ? AND ? "
                "ORDER BY keyspace, tbl, key", (lo - KEYSPACE_OFFSET, hi - KEYSPACE_OFFSET)):
            d.add(int(ks) + KEYSPACE_OFFSET, t, k, int(v), bytes(cs), bytes(fr))
    return d.result()


def range_digest(conn: sqlite3.Connection, ranges: Sequence[Range]) -> dict[str, Any]:
    """``{"lsn", "blocks", "digest", "buckets"}``: the ranges' content digest at the node's last LSN, from one read
    transaction (its first read fixes what the rest sees)."""
    conn.execute("BEGIN")
    try:
        lsn = last_lsn(conn)
        return {"lsn": lsn} | _digest_blocks(conn, ranges)
    finally:
        conn.execute("COMMIT")


def move_digest(conn: sqlite3.Connection, name: str, ranges: Sequence[Range], at: int,
                started: Callable[[], None]) -> dict[str, Any] | int | None:
    """The move's ranges' digest as of source LSN ``at``, from one read transaction: the digest when the ranges'
    content here is the source's at ``at`` - the cursor has reached ``at`` and no change of the ranges after ``at``
    was applied (the newest one applied is at or before it) - else the cursor (None: not catching up).
    ``started`` runs once the cursor is read, which fixes what the transaction sees (a held puller may go on)."""
    conn.execute("BEGIN")
    try:
        row = conn.execute("SELECT source_lsn, last_change_lsn FROM moves WHERE name = ?", (name,)).fetchone()
        started()
        applied = None if row is None or row[0] is None else int(row[0])
        changed = applied if row is None or row[1] is None else int(row[1])
        if applied is None or changed is None or not changed <= at <= applied:
            return applied
        return {"sourceLsn": at} | _digest_blocks(conn, ranges)
    finally:
        conn.execute("COMMIT")
