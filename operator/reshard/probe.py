"""The Reshard controller's calls to a ShardSet's nodes (port 7400) and caches (7401): partition map pushes
(``PUT``/``GET /v1/partitions``), range statistics and digests, the target's move (``/v1/moves/{name}``), the
source's fence (``/v1/fences/{name}``) and purge (``POST /v1/ranges:purge``) (docs/resharding.md). Pods are found
with operator/shardpods.py and reached as every probe of the operator reaches them (operator/podtls.py). Failures
are answers with a short reason, never exceptions, and never carry a body beyond the contract's error code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from .. import podtls
from ..podcontract import CACHE, NODE, pod_dns_name

TIMEOUT = aiohttp.ClientTimeout(total=10.0)
# A digest at a source LSN waits on the target until it has applied that far.
DIGEST_TIMEOUT = aiohttp.ClientTimeout(total=60.0)
# The target's pre-hold outlasts the source's digest (bounded by DIGEST_TIMEOUT); a crashed operator's hold lapses.
HOLD_SECONDS = 60
Pods = Mapping[int, Mapping[str, Any]]


@dataclass(frozen=True)
class Answer:
    """One answer: HTTP status and JSON body, or why there is none (``error``)."""

    status: int = 0
    body: Mapping[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """2xx."""
        return 200 <= self.status < 300

    @property
    def code(self) -> str | None:
        """The contract's short error code of a refusal (``lsn_passed``, ...)."""
        code = (self.body or {}).get("error")
        return code if isinstance(code, str) and len(code) < 64 else None


def _describe(status: int, body: Mapping[str, Any] | None) -> str:
    code = (body or {}).get("error")
    message = (body or {}).get("message")
    text = f"HTTP {status}" + (f" {code}" if isinstance(code, str) and len(code) < 64 else "")
    # The node's message says why (e.g. which range it still owns); it never holds key material.
    return text + (f": {message[:300]}" if isinstance(message, str) else "")


async def call(pods: Pods, shard: int, method: str, path: str, *, role: str = NODE,
               params: Mapping[str, str] | None = None, doc: Any = None,
               timeout: aiohttp.ClientTimeout = TIMEOUT, session: aiohttp.ClientSession | None = None) -> Answer:
    """One request to ``role`` of shard ``shard``'s pod (on ``session`` when given: a cutover's polls reuse one
    connection instead of a TLS handshake each)."""
    pod = pods.get(shard)
    at = podtls.endpoint(pod, shard, role, path) if pod else None
    if at is None:
        return Answer(error=f"shard {shard}: " + ("pod has no IP" if pod else "no pod"))
    try:
        if session is not None:
            return await _request(session, shard, role, method, at, params, doc, timeout)
        async with await podtls.session({shard: pod} if pod else {}, timeout) as own:
            return await _request(own, shard, role, method, at, params, doc, timeout)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Answer(error=f"shard {shard} {role}: {type(exc).__name__}")


async def _request(session: aiohttp.ClientSession, shard: int, role: str, method: str, at: podtls.Endpoint,
                   params: Mapping[str, str] | None, doc: Any, timeout: aiohttp.ClientTimeout) -> Answer:
    async with session.request(method, at.url, server_hostname=at.server_hostname, params=params, json=doc,
                               timeout=timeout) as resp:
        try:
            body = await resp.json(content_type=None)
        except ValueError:
            body = None
        body = body if isinstance(body, Mapping) else None
        if resp.status >= 300:
            return Answer(resp.status, body, f"shard {shard} {role}: {_describe(resp.status, body)}")
        return Answer(resp.status, body)


def session(pods: Pods) -> Awaitable[aiohttp.ClientSession]:
    """A session for many calls to one ShardSet's pods (awaited, then used as ``async with``)."""
    return podtls.session(pods, TIMEOUT)


def source_address(pods: Pods, namespace: str, shardset: str, shard: int) -> dict[str, Any] | None:
    """The ``source`` of a move document: the source node's URL as the target dials it, and the name its
    certificate holds when it serves TLS."""
    pod = pods.get(shard)
    at = podtls.endpoint(pod, shard, NODE, "") if pod else None
    if at is None:
        return None
    src: dict[str, Any] = {"url": at.url, "shard": shard}
    if at.server_hostname:
        src["serverName"] = pod_dns_name(namespace, shardset, shard)
    return src


def move_path(name: str) -> str:
    """The target's path of move ``name``."""
    return f"/v1/moves/{quote(name, safe='')}"


def fence_path(name: str) -> str:
    """The source's path of fence ``name``."""
    return f"/v1/fences/{quote(name, safe='')}"


async def put_map(pods: Pods, shard: int, doc: Mapping[str, Any], role: str = NODE, fence: str | None = None,
                  session: aiohttp.ClientSession | None = None) -> Answer:
    """``PUT /v1/partitions`` on one process (a node persists it before answering); with ``fence``, the source
    takes it only while that fence still stands (409 ``fence_gone`` otherwise: writes may have passed F)."""
    params = {"fence": fence} if fence else None
    return await call(pods, shard, "PUT", "/v1/partitions", role=role, doc=dict(doc), params=params, session=session)


async def put_map_everywhere(pods: Pods, doc: Mapping[str, Any], skip_nodes: frozenset[int] = frozenset()
                             ) -> list[Answer]:
    """The map to every node (but ``skip_nodes``, already pushed) and every cache, at once."""
    jobs = [put_map(pods, s, doc, NODE) for s in sorted(pods) if s not in skip_nodes]
    jobs += [put_map(pods, s, doc, CACHE) for s in sorted(pods)]
    return list(await asyncio.gather(*jobs))


async def get_map(pods: Pods, shard: int) -> Answer:
    """``GET /v1/partitions`` of one node: the map in force there."""
    return await call(pods, shard, "GET", "/v1/partitions")
