"""Ask every shard pod's predictor (``GET :7402/v1/status``) and cache (``GET :7401/metrics``) how prefetching goes."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .. import podtls
from ..podcontract import CACHE, PREDICTOR
from .status import KeyCounters, ShardSample

TIMEOUT = aiohttp.ClientTimeout(total=5)
# The key cache's counters (contract of issue 6); caches older than the key cache export none of them.
KEY_FAMILIES = ("chronoshard_cache_key_hits", "chronoshard_cache_key_misses", "chronoshard_cache_key_prefetched",
                "chronoshard_cache_key_prefetch_used")


def _counter_totals(metrics_text: str) -> dict[str, float]:
    """Counter family name (without ``_total``) → the sum of its ``_total`` samples over all labels."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        totals = [s.value for s in family.samples if s.name.endswith("_total")]
        if totals:
            found[family.name] = sum(totals)
    return found


def cache_counters(metrics_text: str) -> tuple[float, float]:
    """(hits, misses) from the cache's Prometheus exposition."""
    found = _counter_totals(metrics_text)
    if "chronoshard_cache_hits" not in found or "chronoshard_cache_misses" not in found:
        raise ValueError("cache metrics lack chronoshard_cache_hits/misses")
    return found["chronoshard_cache_hits"], found["chronoshard_cache_misses"]


def key_counters(metrics_text: str) -> KeyCounters | None:
    """The key cache's counters from the cache's exposition; None when the cache exports none of them."""
    found = _counter_totals(metrics_text)
    if not any(name in found for name in KEY_FAMILIES):
        return None
    hits, misses, prefetched, used = (found.get(name, 0.0) for name in KEY_FAMILIES)
    return KeyCounters(hits=hits, misses=misses, prefetched=prefetched, prefetch_used=used)


async def _predictor(session: aiohttp.ClientSession, at: podtls.Endpoint
                     ) -> tuple[Mapping[str, Any] | None, str | None]:
    try:
        async with session.get(at.url, server_hostname=at.server_hostname) as resp:
            if resp.status != 200:
                return None, f"HTTP {resp.status}"
            body = await resp.json()
            if not isinstance(body, dict):
                return None, "answer is not a JSON object"
            return body, None
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return None, type(exc).__name__


async def _cache(session: aiohttp.ClientSession, at: podtls.Endpoint
                 ) -> tuple[float | None, float | None, KeyCounters | None, str | None]:
    try:
        async with session.get(at.url, server_hostname=at.server_hostname) as resp:
            if resp.status != 200:
                return None, None, None, f"HTTP {resp.status}"
            text = await resp.text()
            hits, misses = cache_counters(text)
            return hits, misses, key_counters(text), None
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return None, None, None, str(exc) if isinstance(exc, ValueError) else type(exc).__name__


async def _one(session: aiohttp.ClientSession, shard: int, pod: Mapping[str, Any]) -> ShardSample:
    predictor, cache = (podtls.endpoint(pod, shard, PREDICTOR, "/v1/status"),
                        podtls.endpoint(pod, shard, CACHE, "/metrics"))
    if predictor is None or cache is None:
        return ShardSample(shard, predictor_error="pod has no IP yet", cache_error="pod has no IP yet")
    (report, p_err), (hits, misses, keys, c_err) = await asyncio.gather(_predictor(session, predictor),
                                                                         _cache(session, cache))
    return ShardSample(shard, report, p_err, hits, misses, c_err, keys)


async def collect(pods: Mapping[int, Mapping[str, Any]], expected: int) -> list[ShardSample]:
    """One sample per shard 0..expected-1; a shard without a pod, or whose processes fail, is reported as such."""
    async with await podtls.session(pods, TIMEOUT) as session:
        tasks = []
        for shard in range(expected):
            pod = pods.get(shard)
            if pod is None:
                tasks.append(asyncio.sleep(0, ShardSample(shard, predictor_error="no pod", cache_error="no pod")))
            else:
                tasks.append(_one(session, shard, pod))
        return list(await asyncio.gather(*tasks))
