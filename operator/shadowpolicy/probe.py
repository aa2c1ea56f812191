"""Ask every shard pod's shadow how its capture and history are (``GET :7403/v1/status``)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp

from .. import podtls
from ..podcontract import SHADOW
from .status import ShardSample

TIMEOUT = aiohttp.ClientTimeout(total=5)


def has_shadow(pod: Mapping[str, Any]) -> bool:
    """True when the pod runs a ``shadow`` container (pods not yet rolled onto the policy have none)."""
    return any(c.get("name") == SHADOW for c in (pod.get("spec") or {}).get("containers") or [])


async def _one(session: aiohttp.ClientSession, shard: int, pod: Mapping[str, Any]) -> ShardSample:
    if not has_shadow(pod):
        return ShardSample(shard, error="pod has no shadow container yet (rolling)")
    at = podtls.endpoint(pod, shard, SHADOW, "/v1/status")
    if at is None:
        return ShardSample(shard, error="pod has no IP yet")
    try:
        async with session.get(at.url, server_hostname=at.server_hostname) as resp:
            if resp.status != 200:
                return ShardSample(shard, error=f"HTTP {resp.status}")
            body = await resp.json()
            if not isinstance(body, dict):
                return ShardSample(shard, error="answer is not a JSON object")
            return ShardSample(shard, body)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return ShardSample(shard, error=type(exc).__name__)


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
