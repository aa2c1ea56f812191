"""Ask every shard pod's shadow how its capture and history are (``GET :7403/v1/status``) and what its anomaly
detector found (``GET :7403/v1/anomalies``)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp

from .. import podtls
from ..podcontract import SHADOW
from .anomalies import ShardAnomalies
from .status import ShardSample

TIMEOUT = aiohttp.ClientTimeout(total=5)
ANOMALIES_PATH = "/v1/anomalies"


def has_shadow(pod: Mapping[str, Any]) -> bool:
    """True when the pod runs a ``shadow`` container (pods not yet rolled onto the policy have none)."""
    return any(c.get("name") == SHADOW for c in (pod.get("spec") or {}).get("containers") or [])


async def _get(session: aiohttp.ClientSession, shard: int, pod: Mapping[str, Any],
               path: str) -> tuple[dict[str, Any] | None, str | None]:
    """``GET path`` of the shard's shadow: (the JSON object, None) or (None, what went wrong)."""
    if not has_shadow(pod):
        return None, "pod has no shadow container yet (rolling)"
    at = podtls.endpoint(pod, shard, SHADOW, path)
    if at is None:
        return None, "pod has no IP yet"
    try:
        async with session.get(at.url, server_hostname=at.server_hostname) as resp:
            if resp.status != 200:
                # 404 from /v1/anomalies: a shadow of an image from before anomaly detection (skipped like one down).
                return None, f"HTTP {resp.status}"
            body = await resp.json()
            if not isinstance(body, dict):
                return None, "answer is not a JSON object"
            return body, None
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return None, type(exc).__name__


async def _one(session: aiohttp.ClientSession, shard: int, pod: Mapping[str, Any]) -> ShardSample:
    body, error = await _get(session, shard, pod, "/v1/status")
    return ShardSample(shard, body, error)


async def collect(pods: Mapping[int, Mapping[str, Any]], expected: int) -> list[ShardSample]:
    """One sample per shard 0..expected-1; a shard without a pod, or whose shadow fails, is reported as such."""
    async with await podtls.session(pods, TIMEOUT) as session:
        tasks = []
        for shard in range(expected):
            pod = pods.get(shard)
            if pod is None:
                tasks.append(asyncio.sleep(0, ShardSample(shard, error="no pod")))
            else:
                tasks.append(_one(session, shard, pod))
        return list(await asyncio.gather(*tasks))


async def _anomalies(session: aiohttp.ClientSession, shard: int, pod: Mapping[str, Any]) -> ShardAnomalies:
    body, error = await _get(session, shard, pod, ANOMALIES_PATH)
    return ShardAnomalies(shard, body, error)


async def collect_anomalies(pods: Mapping[int, Mapping[str, Any]], expected: int) -> list[ShardAnomalies]:
    """``GET /v1/anomalies`` of every shard 0..expected-1 that has a pod; a shadow that does not answer it (down,
    or 404 from an older image) is reported with its error and never fails the pass."""
    async with await podtls.session(pods, TIMEOUT) as session:
        shards = [s for s in range(expected) if s in pods]
        found = await asyncio.gather(*(_anomalies(session, s, pods[s]) for s in shards))
        missing = [ShardAnomalies(s, error="no pod") for s in range(expected) if s not in pods]
        return sorted([*found, *missing], key=lambda a: a.shard)
