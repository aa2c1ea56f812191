"""The asyncio client: routes each key by the partition map straight to its owning shard.

Example::

    from chronoshard.shardnode.client import AsyncClient, NodeMap

    urls = ["http://127.0.0.2:7401", "http://127.0.0.3:7401", "http://127.0.0.4:7401"]
    async with AsyncClient(NodeMap(urls), urls) as c:
        await c.put("users", "alice", b"...")
        value = await c.get("users", "alice")

Every keyed request carries ``X-Chronoshard-Routed: <epoch>``: a shard that does not own the key (or
runs another map epoch) answers 421 instead of forwarding, the client refreshes its map and retries
once at the right shard. ``AsyncClient.via_service(url)`` instead sends everything to one address
(the ShardSet's client Service) and lets the caches forward.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
from chronoshard.shardnode.client.discovery import MapProvider, StaticMap
from chronoshard.shardnode.client.errors import (
    MapUnavailable,
    Misdirected,
    NotFound,
    RequestRejected,
    ScanUnsupported,
    Unavailable,
)
from chronoshard.shardnode.keyspace.partitioning import PartitionMap

ROUTED_HEADER = "X-Chronoshard-Routed"  # same value as chronoshard.shardnode.serving.routing.ROUTED_HEADER
DEFAULT_TIMEOUT = 10.0
SCAN_PAGE = 500
BATCH_KEYS = 500  # below the node's 1000-key batch limit


@dataclass(frozen=True)
class BlockInfo:
    """One entry of a scan: the key, its size, the shard it came from, and what else the node said."""

    key: str
    size: int | None
    shard: int | None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


def block_path(table: str, key: str) -> str:
    """The URL path of a block; table and key are percent-encoded whole (a key may hold "/")."""
    return f"/v1/tables/{quote(table, safe='')}/blocks/{quote(key, safe='')}"


def _error_body(payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def raise_for(status: int, payload: bytes, url: str, table: str, key: str | None) -> None:
    """Turn a non-2xx answer into the matching client exception."""
    if status < 300:
        return
    doc = _error_body(payload)
    message = str(doc.get("message") or payload[:200].decode("utf-8", "replace"))
    if status == 404 and key is not None:
        raise NotFound(table, key)
    if status == 421:
        raise Misdirected(message, doc.get("owner"), doc.get("epoch"))
    if status >= 500:
        raise Unavailable(url, f"HTTP {status}: {message}", status)
    raise RequestRejected(status, str(doc.get("error", "error")), message)


class AsyncClient:
    """Put/get/delete/batch-get/scan blocks of a ShardSet, routed by its partition map."""

    def __init__(
        self,
        maps: MapProvider | PartitionMap,
        endpoints: Sequence[str] | Callable[[int], str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        concurrency: int = 64,
        session: aiohttp.ClientSession | None = None,
        lagging_shard_wait: float = 1.5,
    ) -> None:
        """``endpoints``: base URL per shard (a list indexed by shard, or a function shard -> URL).

        ``lagging_shard_wait``: before retrying at a shard that refused us under an *older* epoch than
        ours (it has not reloaded the mounted map yet; nodes check once a second), wait this long.
        """
        self._provider: MapProvider = StaticMap(maps) if isinstance(maps, PartitionMap) else maps
        if callable(endpoints):
            self._endpoint = endpoints
        else:
            urls = [u.rstrip("/") for u in endpoints]
            self._endpoint = lambda shard: _index(urls, shard)
        self._service: str | None = None
        self.lagging_shard_wait = lagging_shard_wait
        self.timeout = timeout
        self._concurrency = concurrency
        self._session = session
        self._own_session = session is None
        self._map: PartitionMap | None = None
        self._map_lock = asyncio.Lock()
        self.map_refreshes = 0  # how many times the map was fetched (observable in tests and metrics)

    @classmethod
    def via_service(cls, url: str, *, maps: MapProvider | None = None, timeout: float = DEFAULT_TIMEOUT,
                    concurrency: int = 64) -> AsyncClient:
        """A client that sends every request to one URL (the client Service); caches forward."""
        client = cls(maps or _NoMap(), lambda _shard: url.rstrip("/"), timeout=timeout,
                     concurrency=concurrency)
        client._service = url.rstrip("/")
        return client

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client opened it."""
        if self._session is not None and self._own_session:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # One pooled connector; limit bounds sockets per client so a big batch cannot exhaust them.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self._concurrency))
        return self._session

    # --- the map -------------------------------------------------------------------------------

    async def partition_map(self) -> PartitionMap:
        """The map in use, fetched on first use."""
        if self._map is None:
            # min_epoch=0: many first requests at once fetch the map once, not once each.
            return await self.refresh_map(min_epoch=0)
        return self._map

    async def refresh_map(self, min_epoch: int | None = None) -> PartitionMap:
        """Fetch the map again (once for many concurrent callers that all saw the same refusal)."""
        async with self._map_lock:
            if min_epoch is not None and self._map is not None and self._map.epoch >= min_epoch:
                return self._map
            new = await self._provider.fetch()
            self.map_refreshes += 1
            if self._map is None or new.epoch >= self._map.epoch:
                self._map = new
            return self._map

    def shard_url(self, shard: int) -> str:
        """Base URL used for ``shard``."""
        return self._endpoint(shard)

    # --- one keyed request with the 421 retry --------------------------------------------------

    async def _send(self, method: str, url: str, headers: dict[str, str],
                    body: bytes | None) -> tuple[int, bytes]:
        try:
            async with self._http().request(
                method, url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as resp:
                return resp.status, await resp.read()
        except TimeoutError:
            raise Unavailable(url, f"no answer within {self.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise Unavailable(url, f"{type(exc).__name__}: {exc}") from None

    async def _keyed(self, method: str, table: str, key: str, body: bytes | None = None,
                     ok_404: bool = False) -> tuple[int, bytes]:
        path = block_path(table, key)
        headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
        if self._service is not None:
            url = self._service + path
            status, payload = await self._send(method, url, headers, body)
            if not (ok_404 and status == 404):
                raise_for(status, payload, url, table, key)
            return status, payload
        pmap = await self.partition_map()
        shard, epoch = pmap.shard_of(table, key), pmap.epoch
        for attempt in (0, 1):
            url = self.shard_url(shard) + path
            status, payload = await self._send(method, url, headers | {ROUTED_HEADER: str(epoch)}, body)
            if status == 421 and attempt == 0:
                doc = _error_body(payload)
                theirs = doc.get("epoch") if isinstance(doc.get("epoch"), int) else None
                pmap = await self.refresh_map(min_epoch=theirs)
                shard, epoch = pmap.shard_of(table, key), pmap.epoch
                if theirs is not None and epoch < theirs and isinstance(doc.get("owner"), int):
                    # Our map sources still lag behind the shard that refused us: act on its newer
                    # word for this one retry (and say so with its epoch).
                    shard, epoch = doc["owner"], theirs
                elif theirs is not None and theirs < epoch:
                    # The shard lags behind our map; give it time to reload before the one retry.
                    await asyncio.sleep(self.lagging_shard_wait)
                continue
            if not (ok_404 and status == 404):
                raise_for(status, payload, url, table, key)
            return status, payload
        raise AssertionError("unreachable")  # pragma: no cover

    # --- public API ------------------------------------------------------------------------------

    async def put(self, table: str, key: str, value: bytes) -> dict[str, Any]:
        """Store ``value`` under ``(table, key)``; returns the node's JSON acknowledgement."""
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"value must be bytes, not {type(value).__name__}")
        _, payload = await self._keyed("PUT", table, key, bytes(value))
        return _error_body(payload)

    async def get(self, table: str, key: str) -> bytes:
        """The block's bytes; NotFound if it does not exist."""
        _, payload = await self._keyed("GET", table, key)
        return payload

    async def delete(self, table: str, key: str, *, missing_ok: bool = False) -> bool:
        """Delete a block; True if it existed. NotFound unless ``missing_ok``."""
        status, _ = await self._keyed("DELETE", table, key, ok_404=missing_ok)
        return status != 404

    async def batch_get(self, table: str, keys: Iterable[str]) -> dict[str, bytes | None]:
        """Fetch many keys (one ``blocks:batchGet`` per owning shard); missing keys map to None."""
        unique = list(dict.fromkeys(keys))
        if self._service is not None:
            # Through the client Service only keyed routes are forwarded, so fetch key by key.
            return await self._gather_gets(table, unique)
        pmap = await self.partition_map()
        by_shard: dict[int, list[str]] = {}
        for k in unique:
            by_shard.setdefault(pmap.shard_of(table, k), []).append(k)
        chunks = [(s, ks[i:i + BATCH_KEYS]) for s, ks in by_shard.items()
                  for i in range(0, len(ks), BATCH_KEYS)]
        out: dict[str, bytes | None] = {}
        refused: list[str] = []
        for part, wrong in await asyncio.gather(*(self._batch_shard(s, table, ks) for s, ks in chunks)):
            out.update(part)
            refused.extend(wrong)
        if refused:
            # Keys a shard no longer owns: the single-key path refreshes the map and retries.
            out.update(await self._gather_gets(table, refused))
        return {k: out[k] for k in unique}

    async def _gather_gets(self, table: str, keys: list[str]) -> dict[str, bytes | None]:
        sem = asyncio.Semaphore(self._concurrency)

        async def one(k: str) -> tuple[str, bytes | None]:
            async with sem:
                try:
                    return k, await self.get(table, k)
                except NotFound:
                    return k, None

        return dict(await asyncio.gather(*(one(k) for k in keys)))

    async def _batch_shard(self, shard: int, table: str,
                           keys: list[str]) -> tuple[dict[str, bytes | None], list[str]]:
        url = f"{self.shard_url(shard)}/v1/tables/{quote(table, safe='')}/blocks:batchGet"
        status, payload = await self._send("POST", url, {"Content-Type": "application/json"},
                                           json.dumps({"keys": keys}).encode())
        raise_for(status, payload, url, table, None)
        found: dict[str, bytes | None] = {}
        refused: list[str] = []
        for item in _error_body(payload).get("blocks", []):
            err = item.get("error")
            if err and err.get("error") == "misdirected":
                refused.append(item["key"])
            elif err:
                # A block that failed verification or a shard without its map: the batch cannot be trusted.
                raise Unavailable(url, f"key {item['key']!r}: {err.get('error')}: {err.get('message')}")
            else:
                found[item["key"]] = base64.b64decode(item["value"]) if item.get("found") else None
        return found, refused

    async def scan(self, table: str, *, prefix: str = "", limit: int | None = None,
                   page: int = SCAN_PAGE) -> AsyncIterator[BlockInfo]:
        """Every block of ``table`` in key order, merged across shards (keys and sizes, not values).

        Needs direct routing: behind the client Service each request reaches one shard, and a range
        scan cannot be forwarded, so a service-only client raises ``ScanUnsupported``.
        """
        if self._service is not None:
            raise ScanUnsupported("a scan must reach every shard: give the shards' URLs (endpoints), "
                                  "not only the client Service URL")
        pmap = await self.partition_map()
        owners = sorted({p.shard for p in pmap.partitions})
        sources = [self._scan_shard(s, table, prefix, page) for s in owners]
        count = 0
        # Each shard scans in key order; a k-way merge keeps the whole result in order with one page
        # per shard in memory.
        async for info in _merge(sources):
            if limit is not None and count >= limit:
                return
            yield info
            count += 1

    async def _scan_shard(self, shard: int, table: str, prefix: str, page: int) -> AsyncIterator[BlockInfo]:
        base = self.shard_url(shard)
        # Keys sort as strings, so every key with the prefix comes after the largest key below it;
        # the node has no prefix filter, so start the scan just before the prefix and stop past it.
        after: str | None = _just_below(prefix) if prefix else None
        while True:
            params = {"limit": str(page)}
            if after is not None:
                params["after"] = after
            url = f"{base}/v1/tables/{quote(table, safe='')}/blocks"
            try:
                async with self._http().get(url, params=params,
                                            timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                    status, payload = resp.status, await resp.read()
            except TimeoutError:
                raise Unavailable(url, f"no answer within {self.timeout:g} s") from None
            except aiohttp.ClientError as exc:
                raise Unavailable(url, f"{type(exc).__name__}: {exc}") from None
            raise_for(status, payload, url, table, None)
            doc = _error_body(payload)
            blocks = doc.get("items", [])
            for b in blocks:
                if prefix and not b["key"].startswith(prefix):
                    if b["key"] > prefix:
                        return
                    continue
                yield BlockInfo(b["key"], b.get("size"), shard,
                                {k: v for k, v in b.items() if k not in ("key", "size")})
            after = doc.get("next")
            if not after or not blocks:
                return


def _just_below(prefix: str) -> str | None:
    """A string ordered just before every string starting with ``prefix`` (None: start at the top)."""
    # "abc" > "abb\U0010ffff..." > every key starting "abb"; keys equal to "abb\U0010ffff" are
    # impossible in practice and would only be re-filtered anyway.
    last = ord(prefix[-1])
    if last == 0:
        return prefix[:-1] or None
    below = last - 1 if not 0xD800 <= last - 1 <= 0xDFFF else 0xD7FF  # surrogates cannot be encoded
    return prefix[:-1] + chr(below) + "\U0010ffff"


class _NoMap:
    async def fetch(self) -> PartitionMap:
        raise MapUnavailable("this client talks to one service URL and was given no map source")


def _index(urls: list[str], shard: int) -> str:
    if not 0 <= shard < len(urls):
        raise Unavailable(f"shard {shard}", f"no endpoint configured ({len(urls)} known)")
    return urls[shard]


async def _merge(sources: list[AsyncIterator[BlockInfo]]) -> AsyncIterator[BlockInfo]:
    heap: list[tuple[str, int, BlockInfo]] = []
    for i, src in enumerate(sources):
        first = await anext(src, None)
        if first is not None:
            heap.append((first.key, i, first))
    heapq.heapify(heap)
    while heap:
        _, i, info = heapq.heappop(heap)
        yield info
        nxt = await anext(sources[i], None)
        if nxt is not None:
            heapq.heappush(heap, (nxt.key, i, nxt))
