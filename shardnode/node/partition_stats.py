"""Per-partition load and size of a node (docs/weaving.md, "Node: GET /v1/partitions/stats"): read and write
counters bumped in the request path once the key's partition is known, and the blocks/bytes per partition from the
store in one read transaction. The WeavePlan's weaver samples it.

Counted: every block or frame request for a key that reached this node and was answered below 400 — client reads
and writes, and the cache's frame fetches (its misses, including requests a cache forwarded to the owning shard's
cache); batch reads count each key. Cache hits never reach the node and are not counted.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aiohttp import web
from chronoshard.shardnode.auth.policy import Access
from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap, format_id, keyspace_id
from chronoshard.shardnode.serving.http_common import ApiError
from chronoshard.shardnode.serving.scaffold import Partitioning, Route

KEYSPACE_OFFSET = 1 << 63  # as shardnode/node/store.py: keyspace ids are stored shifted into the signed range
WRITE_METHODS = frozenset({"PUT", "DELETE"})
BATCH_SUFFIXES = (":batchGet",)


class PartitionCounters:
    """Reads and writes per partition id since ``started_at`` (in memory: a restart resets them)."""

    def __init__(self, partitioning: Partitioning | None) -> None:
        self.partitioning = partitioning
        self.started_at = time.time()
        self.reads: dict[int, int] = {}
        self.writes: dict[int, int] = {}

    def note(self, table: str, keys: Iterable[str], write: bool) -> None:
        """Count one request per key against the partition that holds it under the map in force."""
        pmap = self.partitioning.source.map if self.partitioning is not None else None
        counts = self.writes if write else self.reads
        for key in keys:
            # Without a map the node owns the whole keyspace: partition 0, as the initial one-shard map names it.
            pid = 0 if pmap is None else pmap.owner_of(keyspace_id(table, key)).id
            counts[pid] = counts.get(pid, 0) + 1


def counting_middleware(counters: PartitionCounters) -> Any:
    """Count answered (< 400) block and frame requests per partition; batch reads count their keys."""
    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        table = request.match_info.get("table")
        if table is None or response.status >= 400:
            return response
        key = request.match_info.get("key")
        if key is not None:
            counters.note(table, (key,), request.method in WRITE_METHODS)
        elif request.method == "POST" and request.path.endswith(BATCH_SUFFIXES):
            # The handler has read the body already; aiohttp keeps it, so this parses it without another read.
            doc = await request.json()
            keys = doc.get("keys") if isinstance(doc, dict) else None
            if isinstance(keys, list):
                counters.note(table, (k for k in keys if isinstance(k, str)), False)
        return response
    return middleware


def owned_partitions(pmap: PartitionMap | None, shard: int | None) -> list[Partition]:
    """The partitions this node serves: its shard's under the map in force, or the whole keyspace without one."""
    if pmap is None or shard is None:
        return [Partition(0, 0, (1 << 64) - 1, 0)]
    return pmap.partitions_of(shard)


def partition_sizes(conn: sqlite3.Connection, parts: Sequence[Partition]) -> list[tuple[int, int]]:
    """(blocks, plaintext bytes) per partition, from one read transaction over the keyspace index."""
    conn.execute("BEGIN")
    try:
        out = []
        for p in parts:
            n, size = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM blocks WHERE keyspace BETWEEN ? AND ?",
                                   (p.start - KEYSPACE_OFFSET, p.end - KEYSPACE_OFFSET)).fetchone()
            out.append((int(n), int(size)))
        return out
    finally:
        conn.execute("COMMIT")


def stats_body(pmap: PartitionMap | None, parts: Sequence[Partition], sizes: Sequence[tuple[int, int]],
               counters: PartitionCounters) -> dict[str, Any]:
    """The ``GET /v1/partitions/stats`` body."""
    rows = [{"id": p.id, "ranges": [[format_id(p.start), format_id(p.end)]], "blocks": blocks, "bytes": size,
             "reads": counters.reads.get(p.id, 0), "writes": counters.writes.get(p.id, 0)}
            for p, (blocks, size) in zip(parts, sizes, strict=True)]
    return {"epoch": None if pmap is None else pmap.epoch, "startedAt": counters.started_at, "partitions": rows}


def routes(counters: PartitionCounters,
           read: Callable[[Callable[[sqlite3.Connection], Any]], Any]) -> list[Route]:
    """``GET /v1/partitions/stats`` (ADMIN); ``read`` runs a function on a store reader thread."""
    async def stats(request: web.Request) -> web.Response:
        part = counters.partitioning
        try:
            pmap = part.source.map if part is not None else None
        except RuntimeError as exc:  # a mounted map that does not load: no guessing of what is owned
            raise ApiError(503, "unavailable", str(exc)) from None
        if part is not None and pmap is None:
            raise ApiError(503, "unavailable", "no partition map is loaded")
        parts = owned_partitions(pmap, part.shard_index if part is not None else None)
        sizes = await read(lambda c: partition_sizes(c, parts))
        return web.json_response(stats_body(pmap, parts, sizes, counters))

    return [Route("GET", "/v1/partitions/stats", stats, Access.ADMIN)]
