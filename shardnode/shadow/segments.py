"""Compacted (warm/cold) metadata segments in the history file: written with B1's columnar encoding, kept in step
with the ``frames`` rows that name them, and read back through a small cache of decoded segments.

Invariant: a segment's rows are exactly the ``frames`` rows whose ``segment`` is its id, with their current op,
key version and stored size. Anything that moves, drops or re-seals compacted rows calls ``refresh`` on the
segments it touched, in the same transaction.
"""

from __future__ import annotations

import sqlite3
import threading
import time as _time
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from .columnar import MetaRow, decode_segment, encode_segment

CACHE_SEGMENTS = 64

_Index = dict[tuple[str, str, int], MetaRow]


class SegmentCache:
    """Decoded segments by id (LRU); segment ids are never reused, so an entry never goes stale."""

    def __init__(self, capacity: int = CACHE_SEGMENTS) -> None:
        self.capacity = capacity
        self._items: OrderedDict[int, _Index] = OrderedDict()
        self._lock = threading.Lock()

    def rows(self, conn: sqlite3.Connection, segment: int) -> _Index:
        """The rows of ``segment`` by (table, key, lsn); KeyError if there is no such segment."""
        with self._lock:
            hit = self._items.get(segment)
            if hit is not None:
                self._items.move_to_end(segment)
                return hit
        row = conn.execute("SELECT meta FROM segments WHERE id = ?", (segment,)).fetchone()
        if row is None:
            raise KeyError(f"segment {segment} does not exist")
        index = {(r.table, r.key, r.lsn): r for r in decode_segment(bytes(row[0]))}
        with self._lock:
            self._items[segment] = index
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return index

    def row(self, conn: sqlite3.Connection, segment: int, table: str, key: str, lsn: int) -> MetaRow:
        """One version's metadata from its segment."""
        return self.rows(conn, segment)[(table, key, lsn)]


def write(conn: sqlite3.Connection, tier: int, rows: Sequence[MetaRow], now: float | None = None) -> int | None:
    """Store a new segment of ``rows`` in ``tier`` and return its id (None for no rows)."""
    if not rows:
        return None
    blob = encode_segment(rows)
    cur = conn.execute(
        "INSERT INTO segments (tier, rows, min_lsn, max_lsn, min_time, max_time, raw_bytes, stored_bytes, meta, "
        "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (tier, len(rows), min(r.lsn for r in rows), max(r.lsn for r in rows), min(r.time for r in rows),
         max(r.time for r in rows), sum(r.size for r in rows), sum(r.stored_size for r in rows), blob,
         _time.time() if now is None else now))
    return int(cur.lastrowid or 0)


def refresh(conn: sqlite3.Connection, cache: SegmentCache, segment_ids: Iterable[int]) -> None:
    """Re-encode each segment from the frames rows that still name it (or delete it when none does)."""
    for seg in sorted(set(segment_ids)):
        try:
            old = cache.rows(conn, seg)
        except KeyError:
            continue
        current = conn.execute("SELECT tbl, key, lsn, op, key_version, length(frame), tier FROM frames "
                               "WHERE segment = ? ORDER BY lsn", (seg,)).fetchall()
        if not current:
            conn.execute("DELETE FROM segments WHERE id = ?", (seg,))
            continue
        rows = [old[(t, k, lsn)]._replace(op=op, key_version=kv, stored_size=int(n or 0))
                for t, k, lsn, op, kv, n, _ in current]
        if rows == sorted(old.values(), key=lambda r: r.lsn):
            continue
        new = write(conn, int(current[0][6]), rows)
        conn.execute("UPDATE frames SET segment = ? WHERE segment = ?", (new, seg))
        conn.execute("DELETE FROM segments WHERE id = ?", (seg,))
