"""The weavers' woven snapshots (docs/weaving.md): every shard's weaver at the pod's IP on port 7404, asked in
parallel; a woven snapshot is named ``<shard>:<id>`` because each weaver numbers its own.

Example::

    async with WeaveClient(pods.endpoint, shards=3) as w:
        found = await w.woven(partition=2, confidence=0.75)
        page = await w.state(found[0]["shard"], found[0]["id"], table="orders")
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from types import TracebackType
from typing import Any

from chronoshard.shardnode.client.aio import DEFAULT_TIMEOUT, raise_for
from chronoshard.shardnode.client.errors import Unavailable, Unreachable
from chronoshard.shardnode.client.transport import Endpoint, Transport

WEAVER_PORT = 7404


def weaver_endpoint(ep: Endpoint, port: int = WEAVER_PORT) -> Endpoint:
    """The weaver beside a shard's cache or node: the same host (pod IP) and TLS name, the weaver's port."""
    host = ep.hostport.rsplit(":", 1)[0] if not ep.hostport.endswith("]") else ep.hostport
    return Endpoint(f"{host}:{port}", ep.scheme, ep.server_name)


def parse_ref(ref: str) -> tuple[int, int]:
    """``<shard>:<id>`` as ``weave ls`` prints it; ValueError otherwise."""
    shard, sep, pid = ref.partition(":")
    if not sep or not shard.isdigit() or not pid.isdigit():
        raise ValueError(f"a woven snapshot is named <shard>:<id> (as weave ls prints it), not {ref!r}")
    return int(shard), int(pid)


def unix_time(text: str) -> float:
    """A time given as unix seconds or RFC 3339 (``Z`` allowed), as unix seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is neither unix seconds nor an RFC 3339 time") from None


def _doc(payload: bytes, url: str) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except ValueError:
        raise Unavailable(url, "the weaver answered something other than JSON") from None
    if not isinstance(doc, dict):
        raise Unavailable(url, "the weaver answered something other than a JSON object")
    return doc


class WeaveClient:
    """Woven snapshots from the shards' weavers."""

    def __init__(self, endpoints: Callable[[int], Endpoint], shards: int, *, transport: Transport | None = None,
                 timeout: float = DEFAULT_TIMEOUT, rediscover: Callable[[], Awaitable[None]] | None = None) -> None:
        """``endpoints``: shard → its weaver's endpoint; ``rediscover``: called once when a shard cannot be
        reached (``ShardSetPods.refresh``)."""
        self._endpoint = endpoints
        self.shards = shards
        self.transport = transport or Transport()
        self.timeout = timeout
        self._rediscover = rediscover

    async def __aenter__(self) -> WeaveClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the transport's session if it opened one."""
        await self.transport.close()

    async def _get(self, shard: int, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        for attempt in (0, 1):
            ep = self._endpoint(shard)
            try:
                status, payload = await self.transport.request("GET", ep, path, params=params or {},
                                                               timeout=self.timeout)
            except Unreachable:
                if attempt == 1 or self._rediscover is None:
                    raise
                await self._rediscover()  # a replaced pod has a new IP
                continue
            url = f"{ep}{path}"
            raise_for(status, payload, url, "", None, self.transport.credentials)
            return _doc(payload, url)
        raise AssertionError("unreachable")  # pragma: no cover

    async def status(self, shard: int) -> dict[str, Any]:
        """A weaver's ``GET /v1/status``: partitions, forecasts, weaves, pass times."""
        return await self._get(shard, "/v1/status")

    async def woven(self, partition: int | None = None, timepoint: float | None = None,
                    confidence: float | None = None) -> list[dict[str, Any]]:
        """Woven snapshots matching, over every shard (newest point per half at or before ``timepoint``), each
        with ``shard`` and ``ref`` (``<shard>:<id>``)."""
        params: dict[str, str] = {}
        if partition is not None:
            params["partition"] = str(partition)
        if timepoint is not None:
            params["timepoint"] = repr(float(timepoint))
        if confidence is not None:
            params["confidenceThreshold"] = repr(float(confidence))
        docs = await asyncio.gather(*(self._get(s, "/v1/woven", params) for s in range(self.shards)))
        return [{**w, "shard": s, "ref": f"{s}:{w.get('id')}"}
                for s, doc in enumerate(docs) for w in doc.get("woven") or [] if isinstance(w, dict)]

    async def snapshot(self, shard: int, point: int) -> dict[str, Any]:
        """One woven snapshot's metadata."""
        return await self._get(shard, f"/v1/woven/{point}")

    async def state(self, shard: int, point: int, *, table: str | None = None, after: str | None = None,
                    limit: int = 100, values: bool = False) -> dict[str, Any]:
        """One page of the half's keys at that point (``entries``, ``next``); values decrypted with ``values``."""
        params = {"limit": str(limit), "values": "true" if values else "false"}
        if table is not None:
            params["table"] = table
        if after is not None:
            params["after"] = after
        return await self._get(shard, f"/v1/woven/{point}/state", params)
