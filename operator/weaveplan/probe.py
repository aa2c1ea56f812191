"""Ask every shard pod's weaver for its partitions, forecasts and weaves (``GET :7404/v1/status``)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp

from .. import podtls
from ..podcontract import WEAVER
from .status import WeaverReport

TIMEOUT = aiohttp.ClientTimeout(total=5)
STATUS_PATH = "/v1/status"


def has_weaver(pod: Mapping[str, Any]) -> bool:
    """True when the pod runs a ``weaver`` container (pods not yet rolled onto the plan have none)."""
    return any(c.get("name") == WEAVER for c in (pod.get("spec") or {}).get("containers") or [])


async def _one(session: aiohttp.ClientSession, shard: int, pod: Mapping[str, Any]) -> WeaverReport:
    if not has_weaver(pod):
        return WeaverReport(shard, error="pod has no weaver container yet (rolling)")
    at = podtls.endpoint(pod, shard, WEAVER, STATUS_PATH)
    if at is None:
        return WeaverReport(shard, error="pod has no IP yet")
    try:
        async with session.get(at.url, server_hostname=at.server_hostname) as resp:
            if resp.status != 200:
                return WeaverReport(shard, error=f"HTTP {resp.status}")
            body = await resp.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return WeaverReport(shard, error=type(exc).__name__)
    if not isinstance(body, dict):
        return WeaverReport(shard, error="answer is not a JSON object")
    return WeaverReport(shard, body)


async def collect(pods: Mapping[int, Mapping[str, Any]], expected: int) -> list[WeaverReport]:
    """One report per shard 0..expected-1; a shard without a pod, or whose weaver fails, says so."""
    async with await podtls.session(pods, TIMEOUT) as session:
        tasks = []
        for shard in range(expected):
            pod = pods.get(shard)
            if pod is None:
                tasks.append(asyncio.sleep(0, WeaverReport(shard, error="no pod")))
            else:
                tasks.append(_one(session, shard, pod))
        return list(await asyncio.gather(*tasks))
