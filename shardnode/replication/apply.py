"""The mirror's SQL against the node's store (blocks.sqlite3): apply a page of the source's changes with the
source's LSNs, seed from a snapshot, promote, rewind and repair. Every function runs inside the store writer's
transaction (``Store.write``) or a reader's; none commits.

The mirror's blocks and change log carry the source's LSNs (explicit ``lsn`` values, same time, identity, key
version, size, frame and checksum), and the cursor (``meta.replication_cursor``) moves in the same transaction as
the page, so a replay after a crash skips what was applied: exactly once. The table layouts are the node's
(shardnode/node/store.py, changelog.py, consumers.py); this package sits below the node and repeats the few
statements it needs rather than import it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from chronoshard.shardnode.keyspace.partitioning import keyspace_id
from chronoshard.shardnode.serving.changestream import SnapshotBlock, StreamChange

from .role import next_lsn_base

KEYSPACE_OFFSET = 1 << 63  # as shardnode/node/store.py: keyspace ids are stored shifted into signed range
ROLE_META = "replication"  # the role document in force
CURSOR_META = "replication_cursor"  # the source LSN applied up to (mirror)
SEEDING_META = "replication_seeding"  # present while a seed is half done: reads answer 503 mirror_seeding
SKIP_META = "replication_skip"  # repaired keyspace ranges and the snapshot LSN their streamed changes are skipped to
DISCARDED_META = "replication_discarded"  # the LSNs a rewind dropped


class FrameMissing(Exception):
    """A put or rewrap arrived without its frame (logged before the source had a slot): the mirror re-seeds."""

    def __init__(self, lsn: int) -> None:
        super().__init__(f"change {lsn} carries no frame")
        self.lsn = lsn


def get_meta(conn: sqlite3.Connection, name: str) -> Any:
    """A JSON value of the meta table (None if absent)."""
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return json.loads(row[0]) if row else None


def set_meta(conn: sqlite3.Connection, name: str, value: Any) -> None:
    """Write (or with None delete) a JSON value of the meta table."""
    if value is None:
        conn.execute("DELETE FROM meta WHERE name = ?", (name,))
        return
    conn.execute("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                 (name, json.dumps(value)))


def last_lsn(conn: sqlite3.Connection) -> int:
    """The highest LSN the node has assigned or applied (0 if none)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
    return int(row[0]) if row else 0


def set_sequence(conn: sqlite3.Connection, lsn: int) -> None:
    """Make ``lsn`` the change log's last LSN: the next local write gets ``lsn + 1``."""
    if conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'changes'", (lsn,)).rowcount == 0:
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('changes', ?)", (lsn,))


def cursor(conn: sqlite3.Connection) -> int | None:
    """The applied source LSN (None: never seeded)."""
    value = get_meta(conn, CURSOR_META)
    return None if value is None else int(value)


def frames_recorded(conn: sqlite3.Connection) -> bool:
    """True while the node has consumer slots (its log then carries frames, as the node's own writes do)."""
    return conn.execute("SELECT EXISTS (SELECT 1 FROM consumers)").fetchone()[0] == 1


def _upsert(conn: sqlite3.Connection, table: str, key: str, version: int, size: int, checksum: bytes, frame: bytes,
            lsn: int) -> None:
    conn.execute(
        "INSERT INTO blocks (tbl, key, keyspace, key_version, size, checksum, frame, lsn) VALUES (?,?,?,?,?,?,?,?) "
        "ON CONFLICT(tbl, key) DO UPDATE SET key_version=excluded.key_version, size=excluded.size, "
        "checksum=excluded.checksum, frame=excluded.frame, lsn=excluded.lsn",
        (table, key, keyspace_id(table, key) - KEYSPACE_OFFSET, version, size, checksum, frame, lsn))


def _log(conn: sqlite3.Connection, c: StreamChange, frames: bool) -> None:
    frame, checksum = (c.frame, c.checksum) if frames else (None, None)
    conn.execute("INSERT INTO changes (lsn, time, tbl, key, op, key_version, size, frame, checksum, identity, "
                 "origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (c.lsn, c.time, c.table, c.key, c.op, c.key_version, c.size, frame, checksum, c.identity,
                  c.origin))
    if frame is not None:
        conn.execute("UPDATE changelog_state SET frame_bytes = frame_bytes + ? WHERE id = 1", (len(frame),))


@dataclass(frozen=True)
class Skip:
    """Keyspace ranges (inclusive) repaired from a snapshot at ``through``: streamed changes in them up to that
    LSN are already in the blocks and only logged."""

    ranges: tuple[tuple[int, int], ...]
    through: int

    def covers(self, c: StreamChange) -> bool:
        """True if the change is older than the repair's snapshot and in one of its ranges."""
        if c.lsn > self.through:
            return False
        ks = keyspace_id(c.table, c.key)
        return any(lo <= ks <= hi for lo, hi in self.ranges)


def load_skip(conn: sqlite3.Connection) -> Skip | None:
    """The persisted skip set (None if no repair is pending)."""
    doc = get_meta(conn, SKIP_META)
    if doc is None:
        return None
    return Skip(tuple((int(a), int(b)) for a, b in doc["ranges"]), int(doc["through"]))


def _apply_one(conn: sqlite3.Connection, c: StreamChange, skip: Skip | None) -> None:
    if skip is not None and skip.covers(c):
        return
    if c.op == "delete":
        conn.execute("DELETE FROM blocks WHERE tbl = ? AND key = ?", (c.table, c.key))
        return
    if c.frame is None or c.checksum is None or c.key_version is None:
        raise FrameMissing(c.lsn)
    _upsert(conn, c.table, c.key, c.key_version, c.size, c.checksum, c.frame, c.lsn)


def apply_page(conn: sqlite3.Connection, changes: Sequence[StreamChange], through: int) -> int:
    """Apply the changes after the cursor in LSN order and move the cursor to ``through`` (at least the last
    change applied); returns the new cursor. Changes at or below the cursor (a replayed page) are skipped."""
    at = cursor(conn) or 0
    frames = frames_recorded(conn)
    skip = load_skip(conn)
    for c in changes:
        if c.lsn <= at:
            continue
        _apply_one(conn, c, skip)
        _log(conn, c, frames)
        at = c.lsn
    at = max(at, through)
    if at > last_lsn(conn):
        set_sequence(conn, at)
    if skip is not None and at >= skip.through:
        set_meta(conn, SKIP_META, None)  # every change the repair's snapshot held has streamed past
    set_meta(conn, CURSOR_META, at)
    return at


# ---- seeding ---------------------------------------------------------------------------------------
def seed_begin(conn: sqlite3.Connection, lsn: int, chunk: int) -> int:
    """Mark a seed at snapshot LSN ``lsn`` in progress and delete up to ``chunk`` old blocks; returns how many
    went (call again until 0: the writer is held one bounded transaction at a time)."""
    set_meta(conn, SEEDING_META, {"lsn": lsn})
    set_meta(conn, SKIP_META, None)
    ids = [r[0] for r in conn.execute("SELECT id FROM blocks LIMIT ?", (chunk,))]
    conn.executemany("DELETE FROM blocks WHERE id = ?", [(i,) for i in ids])
    return len(ids)


def seed_blocks(conn: sqlite3.Connection, blocks: Iterable[SnapshotBlock]) -> int:
    """Insert one chunk of snapshot blocks with their source LSNs; returns how many."""
    n = 0
    for b in blocks:
        _upsert(conn, b.table, b.key, b.key_version, b.size, b.checksum, b.frame, b.lsn)
        n += 1
    return n


def seed_finish(conn: sqlite3.Connection, lsn: int) -> None:
    """End a seed: the local change log restarts at ``lsn`` (its readers see a gap and resynchronise), the cursor
    is ``lsn``, and the next streamed change follows it."""
    conn.execute("DELETE FROM changes")
    frames_from = lsn + 1 if frames_recorded(conn) else None
    conn.execute("UPDATE changelog_state SET frame_bytes = 0, frames_from = ? WHERE id = 1", (frames_from,))
    set_sequence(conn, lsn)
    set_meta(conn, CURSOR_META, lsn)
    set_meta(conn, SEEDING_META, None)


def seeding(conn: sqlite3.Connection) -> bool:
    """True while a seed is half done (after a crash too: the blocks are not a consistent copy)."""
    return get_meta(conn, SEEDING_META) is not None


# ---- promotion -----------------------------------------------------------------------------------
def promote(conn: sqlite3.Connection, lsn_floor: int, mirrors: Sequence[str], role_doc: dict[str, Any],
            applied: int) -> tuple[int, int]:
    """Become primary: the next LSN is ``max(applied, lsnFloor) + 1``; the mirrors' slots are created at the
    promotion point (so the old primary can rejoin from there), the role is stored. Returns (promotedAtLsn,
    lastLsn)."""
    base = max(next_lsn_base(applied, lsn_floor), last_lsn(conn))
    set_sequence(conn, base)
    ensure_slots(conn, mirrors, applied)
    set_meta(conn, ROLE_META, role_doc)
    set_meta(conn, SKIP_META, None)
    return applied, base


def ensure_slots(conn: sqlite3.Connection, names: Sequence[str], start: int) -> None:
    """Create the named consumer slots at ``start`` unless they exist (the node's frames are recorded from the
    next LSN on, as a slot registration does)."""
    now = time.time()
    if names and not frames_recorded(conn):
        conn.execute("UPDATE changelog_state SET frames_from = ? WHERE id = 1", (last_lsn(conn) + 1,))
    for name in names:
        conn.execute("INSERT OR IGNORE INTO consumers (name, acked_lsn, registered_lsn, created, updated, state) "
                     "VALUES (?, ?, ?, ?, ?, 'active')", (name, start, start, now, now))


# ---- rewind -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalTail:
    """The node's own changes after a divergence point: which keys they touched and their LSNs; ``complete``:
    the local log still reaches the divergence point."""

    keys: tuple[tuple[str, str], ...]
    lsns: tuple[int, ...]
    complete: bool


def local_tail(conn: sqlite3.Connection, diverge: int) -> LocalTail:
    """The local changes after ``diverge`` (one read)."""
    first = conn.execute("SELECT min(lsn) FROM changes").fetchone()[0]
    rows = conn.execute("SELECT lsn, tbl, key FROM changes WHERE lsn > ? ORDER BY lsn", (diverge,)).fetchall()
    complete = last_lsn(conn) <= diverge or (first is not None and int(first) <= diverge + 1)
    keys = tuple(dict.fromkeys((str(t), str(k)) for _, t, k in rows))
    return LocalTail(keys, tuple(int(r[0]) for r in rows), complete)


@dataclass(frozen=True)
class PrimaryBlock:
    """The new primary's current frame of a key (from ``frames:batchGet``)."""

    table: str
    key: str
    key_version: int
    size: int
    checksum: bytes
    frame: bytes
    lsn: int


def rewind(conn: sqlite3.Connection, diverge: int, keys: Sequence[tuple[str, str]],
           current: dict[tuple[str, str], PrimaryBlock | None], discarded: Sequence[int]) -> None:
    """Replace every key changed locally after ``diverge`` by the primary's current block (or delete it), drop the
    local changes after ``diverge`` and continue from there; the dropped LSNs are kept for ``GET
    /v1/replication``."""
    for table, key in keys:
        b = current.get((table, key))
        if b is None:
            conn.execute("DELETE FROM blocks WHERE tbl = ? AND key = ?", (table, key))
        else:
            _upsert(conn, table, key, b.key_version, b.size, b.checksum, b.frame, b.lsn)
    (gone,) = conn.execute("SELECT coalesce(sum(length(frame)), 0) FROM changes WHERE lsn > ?",
                           (diverge,)).fetchone()
    conn.execute("DELETE FROM changes WHERE lsn > ?", (diverge,))
    conn.execute("UPDATE changelog_state SET frame_bytes = frame_bytes - ? WHERE id = 1", (int(gone),))
    set_sequence(conn, diverge)
    set_meta(conn, CURSOR_META, diverge)
    set_meta(conn, DISCARDED_META, list(discarded))


def forget_cursor(conn: sqlite3.Connection, discarded: Sequence[int]) -> None:
    """Drop the cursor (the replicator then seeds from a full snapshot) and keep the LSNs that drops."""
    set_meta(conn, CURSOR_META, None)
    set_meta(conn, DISCARDED_META, list(discarded))


# ---- repair -----------------------------------------------------------------------------------------
def bucket_range(bucket: int, bits: int = 8) -> tuple[int, int]:
    """The keyspace ids of one digest bucket (the top ``bits`` bits), inclusive."""
    shift = 64 - bits
    return bucket << shift, ((bucket + 1) << shift) - 1


def repair_begin(conn: sqlite3.Connection, ranges: Sequence[tuple[int, int]], through: int) -> int:
    """Delete the mirror's blocks in ``ranges`` and persist the skip set up to the snapshot LSN ``through``;
    returns how many blocks went."""
    n = 0
    for lo, hi in ranges:
        n += conn.execute("DELETE FROM blocks WHERE keyspace BETWEEN ? AND ?",
                          (lo - KEYSPACE_OFFSET, hi - KEYSPACE_OFFSET)).rowcount
    set_meta(conn, SKIP_META, {"ranges": [list(r) for r in ranges], "through": through})
    return n


def repair_finish(conn: sqlite3.Connection) -> None:
    """Drop the skip set once the cursor has reached the snapshot (nothing of it is left to stream)."""
    skip = load_skip(conn)
    if skip is not None and (cursor(conn) or 0) >= skip.through:
        set_meta(conn, SKIP_META, None)
