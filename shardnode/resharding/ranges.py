"""The source side's SQL against the node's store (blocks.sqlite3, docs/resharding.md): a keyspace range's stats,
the purge of a moved-away range in batches, and the pushed partition map kept in ``meta``. Every function runs inside
the store writer's transaction (``Store.write``) or a reader's; none commits. The table layouts are the node's
(shardnode/node/store.py, changelog.py); this package sits below the node and repeats the few statements it needs.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chronoshard.shardnode.keyspace.partitioning import PartitionMap, format_id
from chronoshard.shardnode.replication.apply import get_meta, set_meta

from .fences import Range, merge_ranges

KEYSPACE_OFFSET = 1 << 63  # as shardnode/node/store.py: keyspace ids are stored shifted into signed range
PUSHED_MAP_META = "partition_map_pushed"  # the last map taken with PUT /v1/partitions
PURGE_BATCH = 500  # blocks one purge transaction deletes: the writer is never held long
PURGE_ORIGIN = "purge"  # shardnode/node/changelog.py ORIGINS


def _stored(r: Range) -> tuple[int, int]:
    return r[0] - KEYSPACE_OFFSET, r[1] - KEYSPACE_OFFSET


# ---- stats --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RangeStats:
    """Blocks, their plaintext bytes and the median keyspace id (None when empty) of some keyspace ranges."""

    blocks: int
    bytes: int
    median: int | None

    def to_json(self) -> dict[str, Any]:
        """The ``GET /v1/ranges/stats`` body."""
        return {"blocks": self.blocks, "bytes": self.bytes,
                "medianKeyspaceId": None if self.median is None else format_id(self.median)}


def range_stats(conn: sqlite3.Connection, ranges: Sequence[Range]) -> RangeStats:
    """Stats of the blocks in ``ranges`` from one read transaction (the median is the lower median, the
    ((n - 1) // 2)-th id in keyspace order, read off the keyspace index)."""
    merged = merge_ranges(ranges)
    conn.execute("BEGIN")
    try:
        counts: list[int] = []
        total_bytes = 0
        for r in merged:
            n, size = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM blocks WHERE keyspace BETWEEN ? AND ?",
                                   _stored(r)).fetchone()
            counts.append(int(n))
            total_bytes += int(size)
        blocks = sum(counts)
        median = None
        if blocks:
            k = (blocks - 1) // 2
            for r, n in zip(merged, counts, strict=True):
                if k < n:
                    row = conn.execute("SELECT keyspace FROM blocks WHERE keyspace BETWEEN ? AND ? ORDER BY keyspace "
                                       "LIMIT 1 OFFSET ?", (*_stored(r), k)).fetchone()
                    median = int(row[0]) + KEYSPACE_OFFSET
                    break
                k -= n
        return RangeStats(blocks, total_bytes, median)
    finally:
        conn.execute("COMMIT")


# ---- purge --------------------------------------------------------------------------------------------------
def purge_batch(conn: sqlite3.Connection, ranges: Sequence[Range], limit: int = PURGE_BATCH) -> int:
    """Delete up to ``limit`` blocks in ``ranges``, each logged as a delete with origin ``purge`` (so mirrors drop it
    and shadows record it moved away); returns how many went (0: the ranges are empty)."""
    purged = 0
    for r in merge_ranges(ranges):
        rows = conn.execute("SELECT id, tbl, key FROM blocks WHERE keyspace BETWEEN ? AND ? ORDER BY keyspace LIMIT ?",
                            (*_stored(r), limit - purged)).fetchall()
        now = time.time()
        for row_id, tbl, key in rows:
            conn.execute("DELETE FROM blocks WHERE id = ?", (row_id,))
            conn.execute("INSERT INTO changes (time, tbl, key, op, key_version, size, origin) "
                         "VALUES (?, ?, ?, 'delete', NULL, 0, ?)", (now, tbl, key, PURGE_ORIGIN))
        purged += len(rows)
        if purged >= limit:
            break
    return purged


# ---- the pushed map ----------------------------------------------------------------------------------------------
def load_pushed_map(conn: sqlite3.Connection) -> PartitionMap | None:
    """The map last taken with PUT /v1/partitions (None: none was)."""
    doc = get_meta(conn, PUSHED_MAP_META)
    return None if doc is None else PartitionMap.from_dict(doc)


def store_pushed_map(conn: sqlite3.Connection, pmap: PartitionMap) -> None:
    """Keep a pushed map (in the caller's transaction) before it is taken."""
    set_meta(conn, PUSHED_MAP_META, pmap.to_dict())
