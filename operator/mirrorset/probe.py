"""The MirrorSet controller's calls to member nodes (port 7400): ``GET /v1/replication`` and ``GET /v1/health``
(timed: the latency the health monitor judges), ``PUT /v1/replication`` (role documents), ``GET /v1/digest`` and
``POST /v1/replication/repair``. Pods are found with operator/shardpods.py and reached as every probe of the
operator reaches them (operator/podtls.py: HTTPS verified against the member's CA, or plain HTTP for a pod
started without TLS). Failures are returned as short reasons, never raised, and never carry a body.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from .. import podtls
from ..podcontract import NODE, pod_dns_name
from .health import Sample
from .plan import Address, Member

TIMEOUT = aiohttp.ClientTimeout(total=5.0)
# A health probe gets no more than the probe interval (within these bounds): a frozen node accepts connections
# and never answers, and every second spent waiting on it is a second more of failover.
PROBE_TIMEOUT_MIN, PROBE_TIMEOUT_MAX = 0.5, 5.0


def probe_timeout(probe_interval_seconds: float) -> float:
    """How long one health probe may take: the probe interval, between 0.5 s and 5 s."""
    return min(PROBE_TIMEOUT_MAX, max(PROBE_TIMEOUT_MIN, probe_interval_seconds))
# A digest at an LSN may wait on the mirror up to its waitSeconds: the client waits a little longer.
DIGEST_WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class Answer:
    """One answer of a node: its HTTP status and JSON body, or the reason there is none (``error``)."""

    status: int = 0
    body: Mapping[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """2xx with a body."""
        return 200 <= self.status < 300 and self.body is not None


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """The pod's Ready condition is True."""
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def address(member: Member, shard: int, pod: Mapping[str, Any] | None) -> Address | None:
    """Where member's node ``shard`` answers (its pod IP and port 7400) and the DNS name its certificate holds."""
    at = podtls.endpoint(pod, shard, NODE, "") if pod else None
    if at is None:
        return None
    return Address(at.url, pod_dns_name(member.namespace, member.name, shard))


def _error_text(status: int, body: Mapping[str, Any] | None) -> str:
    # Only the contract's short error code: a body could echo anything.
    code = (body or {}).get("error")
    return f"HTTP {status}" + (f" {code}" if isinstance(code, str) and len(code) < 64 else "")


async def _call(session: aiohttp.ClientSession, method: str, pod: Mapping[str, Any] | None, shard: int, path: str,
                params: Mapping[str, str] | None = None, doc: Any = None,
                timeout: aiohttp.ClientTimeout | None = None) -> Answer:
    at = podtls.endpoint(pod, shard, NODE, path) if pod else None
    if at is None:
        return Answer(error="pod has no IP" if pod else "no pod")
    try:
        async with session.request(method, at.url, server_hostname=at.server_hostname, params=params, json=doc,
                                   timeout=timeout or TIMEOUT) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
            if not isinstance(body, Mapping):
                body = None
            if resp.status >= 300:
                return Answer(resp.status, body, _error_text(resp.status, body))
            return Answer(resp.status, body)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Answer(error=type(exc).__name__)


async def _sample(session: aiohttp.ClientSession, member: Member, shard: int, pod: Mapping[str, Any] | None,
                  timeout: aiohttp.ClientTimeout) -> Sample:
    if pod is None:
        return Sample(member.key, shard, pod_exists=False, pod_ready=False, error="no pod")

    async def health_call() -> tuple[Answer, float]:
        started = time.monotonic()
        answer = await _call(session, "GET", pod, shard, "/v1/health", timeout=timeout)
        return answer, (time.monotonic() - started) * 1000.0

    # Both at once: a node that does not answer costs one timeout per pass, not two.
    (health, latency), rep = await asyncio.gather(
        health_call(), _call(session, "GET", pod, shard, "/v1/replication", timeout=timeout))
    return Sample(member.key, shard, True, pod_ready(pod), rep.body if rep.ok else None,
                  health.body if health.ok else None, latency if health.ok else None, rep.error)


async def sample_member(member: Member, pods: Mapping[int, Mapping[str, Any]], shards: int,
                        timeout_seconds: float = PROBE_TIMEOUT_MAX) -> list[Sample]:
    """One sample per shard of a member (a shard without a pod is sampled as missing), each call bounded by
    ``timeout_seconds``."""
    timeout = aiohttp.ClientTimeout(total=timeout_seconds)
    async with await podtls.session(pods, timeout) as session:
        return list(await asyncio.gather(*(_sample(session, member, i, pods.get(i), timeout)
                                           for i in range(shards))))


async def put_roles(pods: Mapping[int, Mapping[str, Any]], docs: Mapping[int, Mapping[str, Any]]
                    ) -> dict[int, Answer]:
    """``PUT /v1/replication`` with each shard's role document (one member's pods)."""
    async with await podtls.session(pods, TIMEOUT) as session:
        shards = sorted(docs)
        answers = await asyncio.gather(*(_call(session, "PUT", pods.get(i), i, "/v1/replication", doc=dict(docs[i]))
                                         for i in shards))
        return dict(zip(shards, answers, strict=True))


async def digests(pods: Mapping[int, Mapping[str, Any]], at_lsn: Mapping[int, int | None]) -> dict[int, Answer]:
    """``GET /v1/digest`` on each shard given (at its LSN when given: a mirror holds its apply there)."""
    timeout = aiohttp.ClientTimeout(total=DIGEST_WAIT_SECONDS + 5.0)
    async with await podtls.session(pods, timeout) as session:
        shards = sorted(at_lsn)

        def params(i: int) -> dict[str, str] | None:
            lsn = at_lsn[i]
            return None if lsn is None else {"atLsn": str(lsn), "waitSeconds": str(int(DIGEST_WAIT_SECONDS))}

        answers = await asyncio.gather(*(_call(session, "GET", pods.get(i), i, "/v1/digest", params(i),
                                               timeout=timeout) for i in shards))
        return dict(zip(shards, answers, strict=True))


async def repair(pods: Mapping[int, Mapping[str, Any]], buckets: Mapping[int, list[str]]) -> dict[int, Answer]:
    """``POST /v1/replication/repair`` on each mirror shard with the digest buckets that differ."""
    async with await podtls.session(pods, TIMEOUT) as session:
        shards = sorted(buckets)
        answers = await asyncio.gather(*(_call(session, "POST", pods.get(i), i, "/v1/replication/repair",
                                               doc={"buckets": buckets[i]}) for i in shards))
        return dict(zip(shards, answers, strict=True))
