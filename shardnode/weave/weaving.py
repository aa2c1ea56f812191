"""Build woven points from the shadow's history file, opened read-only (``file:...?mode=ro``): the state of each
half of a predicted split at the newest shadow snapshot boundary — a full point from the snapshot's pointers
(shadow/snapshots.py ``state``), then differentials from the history's versions after the previous point, read
through the (tbl, lsn) index. Rows are copied as stored (sealed frames, never opened), filtered into the halves by
``keyspace_id(table, key)``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from chronoshard.shardnode.keyspace.partitioning import keyspace_id
from chronoshard.shardnode.shadow import snapshots

from .pages import Row

Ranges = Mapping[str, tuple[int, int]]  # half -> keyspace range (inclusive)
_ROW_SQL = "SELECT time, op, key_version, checksum, frame FROM frames WHERE tbl = ? AND key = ? AND lsn = ?"


@dataclass(frozen=True)
class SnapshotPoint:
    """A shadow snapshot a point is taken at: its id, boundary time and LSN."""

    id: int
    boundary: float
    lsn: int


def open_shadow(path: Path) -> sqlite3.Connection:
    """The shadow's history file, read-only (the weaver never writes it; the shadow keeps writing)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=30)
    conn.isolation_level = None  # autocommit; snapshot reads BEGIN explicitly
    return conn


def newest_snapshot(conn: sqlite3.Connection) -> SnapshotPoint | None:
    """The newest snapshot the shadow has taken, or None."""
    row = conn.execute("SELECT id, boundary, lsn FROM snapshots ORDER BY boundary DESC LIMIT 1").fetchone()
    return None if row is None else SnapshotPoint(int(row[0]), float(row[1]), int(row[2]))


def half_of(table: str, key: str, ranges: Ranges) -> str | None:
    """Which half a key belongs to (None: neither, the key lies outside the partition)."""
    kid = keyspace_id(table, key)
    for half, (start, end) in ranges.items():
        if start <= kid <= end:
            return half
    return None


def _row(conn: sqlite3.Connection, table: str, key: str, lsn: int) -> Row:
    found = conn.execute(_ROW_SQL, (table, key, lsn)).fetchone()
    if found is None:  # a read transaction holds the file still: this is a damaged history
        raise ValueError(f"history version {table}/{key}@{lsn} is not stored")
    t, op, kv, checksum, frame = found
    return Row(table, key, lsn, float(t), op, None if kv is None else int(kv),
               None if checksum is None else bytes(checksum), None if frame is None else bytes(frame))


def _sorted(out: dict[str, list[Row]]) -> dict[str, list[Row]]:
    return {h: sorted(rows, key=lambda r: (r.tbl, r.key)) for h, rows in out.items()}


def full_rows(conn: sqlite3.Connection, snapshot_id: int, ranges: Ranges) -> dict[str, list[Row]]:
    """Each half's live keys at a shadow snapshot, with their versions' rows (one read transaction)."""
    out: dict[str, list[Row]] = {h: [] for h in ranges}
    conn.execute("BEGIN")
    try:
        for (table, key), lsn in snapshots.state(conn, snapshot_id).items():
            half = half_of(table, key, ranges)
            if half is not None:
                out[half].append(_row(conn, table, key, lsn))
    finally:
        conn.execute("COMMIT")
    return _sorted(out)


def _tables(conn: sqlite3.Connection) -> list[str]:
    out: list[str] = []
    row = conn.execute("SELECT tbl FROM frames ORDER BY tbl LIMIT 1").fetchone()
    while row is not None:  # a skip scan of the primary key: one seek per table
        out.append(row[0])
        row = conn.execute("SELECT tbl FROM frames WHERE tbl > ? ORDER BY tbl LIMIT 1", (row[0],)).fetchone()
    return out


def diff_rows(conn: sqlite3.Connection, after_lsn: int, upto_lsn: int, ranges: Ranges) -> dict[str, list[Row]]:
    """Each half's keys changed in ``(after_lsn, upto_lsn]``: the newest version of each (a delete as its
    tombstone), one read transaction, O(m log m) in the changes."""
    out: dict[str, list[Row]] = {h: [] for h in ranges}
    conn.execute("BEGIN")
    try:
        for table in _tables(conn):
            changed = conn.execute("SELECT key, max(lsn) FROM frames WHERE tbl = ? AND lsn > ? AND lsn <= ? "
                                   "GROUP BY key", (table, after_lsn, upto_lsn)).fetchall()
            for key, lsn in changed:
                half = half_of(table, key, ranges)
                if half is not None:
                    out[half].append(_row(conn, table, key, int(lsn)))
    finally:
        conn.execute("COMMIT")
    return _sorted(out)
