"""Health of one copy of one shard (pure): healthy, degraded or unavailable, with short reasons.

A copy is *unavailable* after ``failureThreshold`` consecutive failed probes (no answer, or its pod gone or not ready);
*degraded* when its latency, error rate or capacity is over its threshold, its replication lags more than maxLag
or its replication state is ``error``; otherwise *healthy*. A single failed probe below the threshold counts as
degraded (the copy may be fine; one more pass will tell).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

HEALTHY, DEGRADED, UNAVAILABLE, UNKNOWN = "healthy", "degraded", "unavailable", "unknown"


@dataclass(frozen=True)
class Thresholds:
    """The spec's health thresholds (health.* and replication.maxLag)."""

    latency_ms: float = 250.0
    error_rate: float = 0.05
    capacity: float = 0.9
    max_lag_seconds: float = 30.0
    failure_threshold: int = 3


@dataclass(frozen=True)
class Sample:
    """One probe of one node: its pod, ``GET /v1/replication`` and ``GET /v1/health`` (None when not answered)."""

    member: str
    shard: int
    pod_exists: bool = True
    pod_ready: bool = True
    replication: Mapping[str, Any] | None = None
    health: Mapping[str, Any] | None = None
    latency_ms: float | None = None
    error: str | None = None

    @property
    def reachable(self) -> bool:
        """The node answered its replication report."""
        return self.replication is not None


@dataclass(frozen=True)
class CopyHealth:
    """The verdict on one copy, and the consecutive failed probes that led to it."""

    health: str
    reasons: tuple[str, ...] = field(default_factory=tuple)
    failures: int = 0


def _num(doc: Mapping[str, Any] | None, *path: str) -> float | None:
    cur: Any = doc
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return float(cur) if isinstance(cur, int | float) and not isinstance(cur, bool) else None


def lag_seconds(s: Sample) -> float | None:
    """The copy's replication lag in seconds (a mirror's source lag), None for a primary or when unknown."""
    rep = s.replication or {}
    if rep.get("role") != "mirror":
        return None
    lag = _num(rep, "source", "lagSeconds")
    return lag if lag is not None else _num(s.health, "replication", "lagSeconds")


def promotable(s: Sample, t: Thresholds) -> bool:
    """The copy could be promoted: its pod is ready, its node answers as a mirror and its own figures (latency,
    errors, capacity) are within the thresholds. Lag and a replication error are not held against it: they are
    what a mirror of a dead primary reports."""
    if not (s.pod_exists and s.pod_ready and s.reachable) or (s.replication or {}).get("role") != "mirror":
        return False
    return not degradations(s, t, own_only=True)


def degradations(s: Sample, t: Thresholds, own_only: bool = False) -> list[str]:
    """Why an answering copy is degraded (empty: it is not); ``own_only`` leaves out what its source causes."""
    out: list[str] = []
    if s.latency_ms is not None and s.latency_ms > t.latency_ms:
        out.append(f"latency {s.latency_ms:.0f}ms > {t.latency_ms:g}ms")
    rate = _num(s.health, "requests", "errorRate")
    if rate is not None and rate > t.error_rate:
        out.append(f"error rate {rate:.3f} > {t.error_rate:g}")
    cap = _num(s.health, "capacity", "fraction")
    if cap is not None and cap > t.capacity:
        out.append(f"capacity {cap:.2f} > {t.capacity:g}")
    if own_only:
        return out
    lag = lag_seconds(s)
    if lag is not None and lag > t.max_lag_seconds:
        out.append(f"lag {lag:.1f}s > {t.max_lag_seconds:g}s")
    rep = s.replication or {}
    if rep.get("state") == "error":
        out.append(f"replication error: {str(rep.get('error') or 'unknown')[:120]}")
    return out


def classify(s: Sample, previous_failures: int, t: Thresholds, was_unavailable: bool = False) -> CopyHealth:
    """The copy's health from this probe and the failures before it.

    A missing or unready pod counts as a failed probe, like no answer: a pod restarted by a rolling update is
    back within ``failureThreshold`` probes and must not cause a failover. ``was_unavailable``: the last status
    said unavailable (after an operator restart the in-memory count is gone; a copy that still fails stays
    unavailable instead of counting up again)."""
    if s.pod_exists and s.pod_ready and s.reachable:
        reasons = degradations(s, t)
        return CopyHealth(DEGRADED if reasons else HEALTHY, tuple(reasons), 0)
    failures = previous_failures + 1
    why = ("pod missing" if not s.pod_exists else "pod not ready" if not s.pod_ready
           else f"probe failed: {s.error or 'no answer'}")
    if failures >= t.failure_threshold or was_unavailable:
        return CopyHealth(UNAVAILABLE, (why, f"{failures} consecutive failed probes"), failures)
    return CopyHealth(DEGRADED, (why,), failures)
