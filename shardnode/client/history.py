"""The shadows' history, read like blocks are: each key's request goes to the shadow of the shard that owns it
(the same partition map, the same ``X-Chronoshard-Routed`` check and 421 retry as reads), at the pod's IP on the
shadow's port 7403; a table-wide diff asks every shard's shadow and merges their answers in key order.

Example::

    async with HistoryClient(NodeMap(caches), shadow_endpoint_of(caches)) as h:
        versions = [v async for v in h.history("orders", "order-1")]
        then = await h.at("orders", "order-1", time="2026-11-30T09:00:00Z")
"""

from __future__ import annotations

import asyncio
import heapq
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

from chronoshard.shardnode.client.aio import DEFAULT_TIMEOUT, ROUTED_HEADER, raise_for
from chronoshard.shardnode.client.discovery import MapProvider, StaticMap
from chronoshard.shardnode.client.errors import Unavailable, Unreachable
from chronoshard.shardnode.client.transport import Endpoint, Transport
from chronoshard.shardnode.keyspace.partitioning import PartitionMap

SHADOW_PORT = 7403
PAGE = 100


def shadow_endpoint(ep: Endpoint, port: int = SHADOW_PORT) -> Endpoint:
    """The shadow beside a shard's cache or node: the same host (pod IP) and TLS name, the shadow's port."""
    host = ep.hostport.rsplit(":", 1)[0] if not ep.hostport.endswith("]") else ep.hostport
    return Endpoint(f"{host}:{port}", ep.scheme, ep.server_name)


def _path(table: str, what: str, key: str | None = None) -> str:
    base = f"/v1/tables/{quote(table, safe='')}/{what}"
    return f"{base}/{quote(key, safe='')}" if key is not None else base


def _doc(payload: bytes, url: str) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except ValueError:
        raise Unavailable(url, "the shadow answered something other than JSON") from None
    if not isinstance(doc, dict):
        raise Unavailable(url, "the shadow answered something other than a JSON object")
    return doc


def point_params(time: str | None, lsn: int | None) -> dict[str, str]:
    """``time=`` (RFC 3339 or unix seconds) or ``lsn=``: exactly one."""
    if (time is None) == (lsn is None):
        raise ValueError("give a time or an LSN (exactly one)")
    return {"time": time} if time is not None else {"lsn": str(lsn)}


class HistoryClient:
    """History, point-in-time values and diffs from the shards' shadows, routed by the partition map."""

    def __init__(self, maps: MapProvider | PartitionMap, endpoints: Callable[[int], Endpoint], *,
                 transport: Transport | None = None, timeout: float = DEFAULT_TIMEOUT,
                 rediscover: Callable[[], Awaitable[None]] | None = None) -> None:
        """``endpoints``: shard → its shadow's endpoint; ``rediscover``: called once when a shard cannot be reached
        (``ShardSetPods.refresh``: a replaced pod has a new IP)."""
        self._maps: MapProvider = StaticMap(maps) if isinstance(maps, PartitionMap) else maps
        self._endpoint = endpoints
        self.transport = transport or Transport()
        self.timeout = timeout
        self._rediscover = rediscover
        self._map: PartitionMap | None = None

    async def __aenter__(self) -> HistoryClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the transport's session if it opened one."""
        await self.transport.close()

    async def partition_map(self, refresh: bool = False) -> PartitionMap:
        """The map in use (fetched on first use, or again with ``refresh``)."""
        if self._map is None or refresh:
            self._map = await self._maps.fetch()
        return self._map

    async def _send(self, shard: int, path: str, params: dict[str, str], headers: dict[str, str],
                    method: str = "GET", body: bytes | None = None) -> tuple[str, int, bytes]:
        for attempt in (0, 1):
            ep = self._endpoint(shard)
            try:
                status, payload = await self.transport.request(method, ep, path, headers=headers, params=params,
                                                               body=body, timeout=self.timeout)
                return f"{ep}{path}", status, payload
            except Unreachable:
                # Nothing was sent; a replaced pod may have a new IP.
                if attempt == 1 or self._rediscover is None:
                    raise
                await self._rediscover()
        raise AssertionError("unreachable")  # pragma: no cover

    async def call(self, shard: int, path: str, *, params: dict[str, str] | None = None,
                   headers: dict[str, str] | None = None, method: str = "GET", body: bytes | None = None
                   ) -> tuple[str, int, bytes]:
        """One request to a shard's shadow: (url, status, payload); sent again at a re-discovered address only
        when nothing was sent."""
        return await self._send(shard, path, params or {}, headers or {}, method, body)

    async def _keyed(self, table: str, key: str, what: str, params: dict[str, str]) -> dict[str, Any]:
        """GET a key's resource at its owning shard's shadow; one retry at the right shard after a 421."""
        pmap = await self.partition_map()
        path = _path(table, what, key)
        for attempt in (0, 1):
            url, status, payload = await self._send(pmap.shard_of(table, key), path, params,
                                                    {ROUTED_HEADER: str(pmap.epoch)})
            if status == 421 and attempt == 0:
                pmap = await self.partition_map(refresh=True)
                continue
            raise_for(status, payload, url, table, key, self.transport.credentials)
            return _doc(payload, url)
        raise AssertionError("unreachable")  # pragma: no cover

    async def history(self, table: str, key: str, *, after: int = 0, limit: int | None = None
                      ) -> AsyncIterator[dict[str, Any]]:
        """Every stored version of a key, oldest first (``{lsn, time, op, size, keyVersion, value}``), page by page."""
        count = 0
        while True:
            params = {"after": str(after), "limit": str(PAGE)}
            doc = await self._keyed(table, key, "history", params)
            for v in doc.get("versions") or []:
                if limit is not None and count >= limit:
                    return
                yield v
                count += 1
            nxt = doc.get("next")
            if nxt is None or not doc.get("versions"):
                return
            after = int(nxt)

    async def at(self, table: str, key: str, *, time: str | None = None, lsn: int | None = None) -> dict[str, Any]:
        """The key as it was at a time or LSN (``{key, lsn, time, op, size, value, exact}``); NotFound if absent."""
        return await self._keyed(table, key, "at", point_params(time, lsn))

    async def diff(self, table: str, *, start: str, end: str, limit: int | None = None
                   ) -> AsyncIterator[dict[str, Any]]:
        """What changed in ``table`` between two times, over every shard, in key order; each entry gains ``shard``."""
        pmap = await self.partition_map()
        owners = sorted({p.shard for p in pmap.partitions})
        merged = _merge([self._diff_shard(s, table, start, end) for s in owners])
        count = 0
        async for entry in merged:
            if limit is not None and count >= limit:
                return
            yield entry
            count += 1

    async def _diff_shard(self, shard: int, table: str, start: str, end: str) -> AsyncIterator[dict[str, Any]]:
        path = _path(table, "diff")
        after: str | None = None
        while True:
            params = {"from": start, "to": end, "limit": str(PAGE)}
            if after is not None:
                params["after"] = after
            url, status, payload = await self._send(shard, path, params, {})
            raise_for(status, payload, url, table, None, self.transport.credentials)
            doc = _doc(payload, url)
            entries = doc.get("entries") or []
            for e in entries:
                yield {**e, "shard": shard}
            after = doc.get("next")
            if not after or not entries:
                return


async def _merge(sources: Sequence[AsyncIterator[dict[str, Any]]]) -> AsyncIterator[dict[str, Any]]:
    """k-way merge of per-shard streams already in key order."""
    heap: list[tuple[str, int, dict[str, Any]]] = []
    firsts = await asyncio.gather(*(anext(src, None) for src in sources))
    for i, first in enumerate(firsts):
        if first is not None:
            heap.append((str(first["key"]), i, first))
    heapq.heapify(heap)
    while heap:
        _, i, entry = heapq.heappop(heap)
        yield entry
        nxt = await anext(sources[i], None)
        if nxt is not None:
            heapq.heappush(heap, (str(nxt["key"]), i, nxt))
