"""Ask every shard process what it has loaded (``GET /v1/keys``) and start rewraps (``POST /v1/rewrap``).

The processes are each pod's node and cache, and its shadow when the pod runs one (same JSON shapes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from .. import podtls
from ..podcontract import NODE, SHADOW, WEAVER
from .plan import ROLES, ProcessReport

TIMEOUT_SECONDS = 5.0
TIMEOUT = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)


@dataclass(frozen=True)
class ReportWait:
    """Ask each process to hold its report until it has loaded ``generation`` and (``rewrap``) finished its
    rewrap, for at most ``seconds`` (the long-poll of GET /v1/keys; older processes answer at once)."""

    generation: int | None = None
    rewrap: bool = False
    seconds: float = 4.0

    def query(self) -> dict[str, str]:
        """The query parameters of the long-poll."""
        q = {"waitSeconds": str(self.seconds)}
        if self.generation is not None:
            q["waitGeneration"] = str(self.generation)
        if self.rewrap:
            q["waitRewrap"] = "true"
        return q


def _report(shard: int, role: str, body: Mapping[str, Any]) -> ProcessReport:
    versions = frozenset(int(v["id"]) for v in body.get("versions") or [])
    blocks = {int(k): int(n) for k, n in (body.get("blocks") or {}).items()}
    gen = body.get("generation")
    return ProcessReport(shard, role, True, int(gen) if gen is not None else None, body.get("primary"), versions,
                         blocks, body.get("loadError"))


async def _get_keys(session: aiohttp.ClientSession, shard: int, role: str, pod: Mapping[str, Any],
                    wait: ReportWait | None = None) -> ProcessReport:
    at = podtls.endpoint(pod, shard, role, "/v1/keys")
    if at is None:
        return ProcessReport(shard, role, False, error="pod has no IP yet")
    try:
        async with session.get(at.url, server_hostname=at.server_hostname,
                               params=wait.query() if wait else None) as resp:
            if resp.status != 200:
                return ProcessReport(shard, role, False, error=f"HTTP {resp.status}")
            return _report(shard, role, await resp.json())
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return ProcessReport(shard, role, False, error=type(exc).__name__)


def roles_of(pod: Mapping[str, Any]) -> tuple[str, ...]:
    """The key-holding processes of a pod: node and cache, and the shadow and the weaver when the pod spec has
    that container."""
    names = {c.get("name") for c in (pod.get("spec") or {}).get("containers") or []}
    return ROLES + tuple(r for r in (SHADOW, WEAVER) if r in names)


async def collect_reports(pods: Mapping[int, Mapping[str, Any]], wait: ReportWait | None = None,
                          only: tuple[str, ...] | None = None) -> list[ProcessReport]:
    """One report per (shard, role) for the pods given (``only``: just these roles); unreachable processes are
    reported, not raised. With ``wait``, each process answers when its report shows what the phase waits for (or
    the wait ends)."""
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS + wait.seconds) if wait else TIMEOUT
    async with await podtls.session(pods, timeout) as session:
        tasks = [
            _get_keys(session, shard, role, pod, wait)
            for shard, pod in sorted(pods.items())
            for role in roles_of(pod) if only is None or role in only
        ]
        return list(await asyncio.gather(*tasks))


async def start_rewrap(pods: Mapping[int, Mapping[str, Any]], batch_size: int, pause_seconds: float | None,
                       role: str = NODE, keep: int | None = None) -> dict[int, str | None]:
    """Start (or resume) the rewrap on ``role`` (the node, or the shadow's history) of every pod given; returns
    an error per shard that could not be asked. ``pause_seconds`` None leaves the pace to the process."""
    body: dict[str, Any] = {"batchSize": batch_size}
    if keep is not None:  # the weaver drops the woven rows of every other version (docs/weaving.md)
        body["keep"] = keep
    if pause_seconds is not None:
        body["pauseSeconds"] = pause_seconds

    async def one(session: aiohttp.ClientSession, shard: int) -> str | None:
        at = podtls.endpoint(pods[shard], shard, role, "/v1/rewrap")
        if at is None:
            return "pod has no IP yet"
        try:
            async with session.post(at.url, server_hostname=at.server_hostname,
                                    json=body) as resp:
                return None if resp.status in (200, 202) else f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return type(exc).__name__

    async with await podtls.session(pods, TIMEOUT) as session:
        shards = sorted(pods)
        results = await asyncio.gather(*(one(session, s) for s in shards))
        return dict(zip(shards, results, strict=True))
