"""Carry out the tier decisions of tiers.py on the history file: hot -> warm -> cold -> expired, in chunks.

Each chunk is one transaction (the caller's) over complete buckets, so a crash between chunks leaves a file in
which every bucket is either compacted or not, and the state at every bucket boundary is the same either way.
Cost: O(c log N) per chunk of c versions, plus re-encoding the segments the chunk touched.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from . import segments, tiers
from .columnar import MetaRow
from .historydb import get_meta, set_meta
from .segments import SegmentCache
from .tiers import COLD, COLD_BUCKET_SECONDS, HOT, WARM, Candidate, Horizons

DEFAULT_CHUNK = 2048


@dataclass(frozen=True)
class _Row:
    table: str
    key: str
    lsn: int
    time: float
    op: str
    key_version: int | None
    size: int | None
    stored_size: int | None
    segment: int | None


_COLS = "tbl, key, lsn, time, op, key_version, size, stored_size, segment"


def _rows(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> list[_Row]:
    return [_Row(*r) for r in conn.execute(sql, params)]


def _chunk(conn: sqlite3.Connection, tier: int, lo: float, hi: float, bucket: float,
           limit: int) -> tuple[list[_Row], float]:
    """Rows of ``tier`` with lo <= time < end, about ``limit`` of them, ``end`` <= hi a bucket boundary (or hi):
    (rows, end). A bucket is never split between chunks."""
    sql = f"SELECT {_COLS} FROM frames WHERE tier = ? AND time >= ? AND time < ? ORDER BY time, lsn LIMIT ?"
    rows = _rows(conn, sql, (tier, lo, hi, limit + 1))
    if len(rows) <= limit:
        return rows, hi
    cut = tiers.floor_to(rows[limit].time, bucket)
    head = [r for r in rows if r.time < cut]
    if head:
        return head, cut
    # One bucket holds more than a chunk: take that whole bucket.
    end = min(hi, tiers.floor_to(rows[0].time, bucket) + bucket)
    return _rows(conn, f"SELECT {_COLS} FROM frames WHERE tier = ? AND time >= ? AND time < ? ORDER BY time, lsn",
                 (tier, lo, end)), end


def _protected(conn: sqlite3.Connection, rows: Sequence[_Row]) -> frozenset[tuple[str, str, int]]:
    """The rows a kept snapshot points to (one index seek each)."""
    return frozenset((r.table, r.key, r.lsn) for r in rows if conn.execute(
        "SELECT 1 FROM snapshot_entries WHERE tbl = ? AND key = ? AND lsn = ? LIMIT 1",
        (r.table, r.key, r.lsn)).fetchone())


def _meta(conn: sqlite3.Connection, cache: SegmentCache, r: _Row, op: str) -> MetaRow:
    if r.segment is None:
        return MetaRow(r.lsn, r.time, r.table, r.key, op, r.key_version, int(r.size or 0), int(r.stored_size or 0))
    return cache.row(conn, r.segment, r.table, r.key, r.lsn)._replace(op=op)


def _settle(conn: sqlite3.Connection, cache: SegmentCache, rows: Sequence[_Row], survivors: Sequence[tiers.Survivor],
            tier: int) -> tuple[int, int]:
    """Survivors into one new segment of ``tier``, the rest deleted, touched segments refreshed: (kept, dropped)."""
    by_id = {(r.table, r.key, r.lsn): r for r in rows}
    keep = {(s.table, s.key, s.lsn): s.op for s in survivors}
    metas = sorted((_meta(conn, cache, by_id[k], op) for k, op in keep.items()), key=lambda m: m.lsn)
    seg = segments.write(conn, tier, metas)
    conn.executemany("UPDATE frames SET tier = ?, segment = ?, op = ?, size = NULL, stored_size = NULL "
                     "WHERE tbl = ? AND key = ? AND lsn = ?", [(tier, seg, op, *k) for k, op in keep.items()])
    dropped = [k for k in by_id if k not in keep]
    conn.executemany("DELETE FROM frames WHERE tbl = ? AND key = ? AND lsn = ?", dropped)
    segments.refresh(conn, cache, {r.segment for r in rows if r.segment is not None})
    return len(keep), len(dropped)


def _candidates(rows: Sequence[_Row]) -> list[Candidate]:
    return [Candidate(r.table, r.key, r.lsn, r.time, r.op) for r in rows]


def move_chunk(conn: sqlite3.Connection, cache: SegmentCache, source: int, h: Horizons,
               limit: int = DEFAULT_CHUNK) -> tuple[int, int]:
    """One chunk from ``source`` (HOT or WARM) to the next tier, thinned to its bucket: (kept, dropped)."""
    before, bucket, target = ((h.warm_before, h.interval, WARM) if source == HOT
                              else (h.cold_before, COLD_BUCKET_SECONDS, COLD))
    rows, _ = _chunk(conn, source, float("-inf"), before, bucket, limit)
    if not rows:
        return 0, 0
    survivors = tiers.thin(_candidates(rows), bucket, _protected(conn, rows))
    return _settle(conn, cache, rows, survivors, target)


def expire_chunk(conn: sqlite3.Connection, cache: SegmentCache, h: Horizons,
                 limit: int = DEFAULT_CHUNK) -> tuple[int, int]:
    """One chunk of cold versions older than the expiry horizon: per key only the base state stays."""
    start = float(get_meta(conn, "expiredThrough", float("-inf")) or float("-inf"))
    rows, end = _chunk(conn, COLD, start, h.expire_before, COLD_BUCKET_SECONDS, limit)
    # Rows before ``end`` are done: only the bases they left remain there, looked up by key from now on.
    set_meta(conn, "expiredThrough", max(start, end))
    if not rows:
        return 0, 0
    first: dict[tuple[str, str], int] = {}
    for r in rows:
        first[(r.table, r.key)] = min(r.lsn, first.get((r.table, r.key), r.lsn))
    bases = []
    for (table, key), lsn in first.items():
        # The base kept by earlier chunks (at most one per key below this chunk).
        bases += _rows(conn, f"SELECT {_COLS} FROM frames WHERE tbl = ? AND key = ? AND lsn < ? AND tier = ? "
                             "ORDER BY lsn DESC LIMIT 1", (table, key, lsn, COLD))
    everything = bases + rows
    survivors = tiers.expire(_candidates(everything))
    return _settle(conn, cache, everything, survivors, COLD)


def drop_snapshots(conn: sqlite3.Connection, h: Horizons) -> int:
    """Delete the snapshots tiers.snapshots_to_keep does not keep (before any version moves): how many."""
    snaps = [tiers.SnapshotRef(*r) for r in conn.execute("SELECT id, boundary, lsn, kind, base FROM snapshots")]
    keep = tiers.snapshots_to_keep(snaps, h)
    gone = [(s.id,) for s in snaps if s.id not in keep]
    conn.executemany("DELETE FROM snapshot_entries WHERE snapshot = ?", gone)
    conn.executemany("DELETE FROM snapshots WHERE id = ?", gone)
    return len(gone)


def exact_from_lsn(conn: sqlite3.Connection, warm_before: float) -> int:
    """The last LSN before the hot horizon: every point from it on stays exact after compaction."""
    row = conn.execute("SELECT lsn FROM frames WHERE time < ? ORDER BY time DESC, lsn DESC LIMIT 1",
                       (warm_before,)).fetchone()
    return int(row[0]) if row else 0
