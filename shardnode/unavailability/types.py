"""The values the unavailability model works on: a flattened health point, a risk, and the model's errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

WINDOWS_DEFAULT: tuple[float, ...] = (300.0, 900.0, 1800.0)


class ModelCorrupt(ValueError):
    """Serialised model bytes that cannot be read back (wrong format, version, checksum or shape)."""


@dataclass(frozen=True)
class HealthPoint:
    """One health sample of one copy (a node), as ``GET /v1/health`` returns it, flattened.

    ``up``: the probe answered and the node was not failing. Fields the sample did not carry are None."""

    time: float
    up: bool
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    error_rate: float | None = None  # 5xx share over the node's last 60 s
    capacity_free_ratio: float | None = None  # free/total bytes of the data volume
    restarts: int | None = None  # process starts counter (a rise = a restart)
    lag_seconds: float | None = None  # replication lag (mirrors); None on a primary


@dataclass(frozen=True)
class Risk:
    """Calibrated P(unavailable within each window), where it came from, and what drove it."""

    probabilities: dict[float, float]  # window seconds -> P(unavailable within it)
    source: str  # "model" | "rules"
    drivers: list[str] = field(default_factory=list)  # most important first, human-readable


def _number(value: Any) -> float | None:
    # bool is an int: a malformed sample saying `true` is not a latency.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def point_from_health(doc: Mapping[str, Any], time: float, up: bool) -> HealthPoint:
    """Flatten one ``GET /v1/health`` body (docs/mirroring.md) into a point; missing or malformed fields are None."""
    latency = doc.get("writeLatencyMs") or {}
    requests = doc.get("requests") or {}
    cap = doc.get("capacity") or {}
    replication = doc.get("replication") or {}
    used, total = _number(cap.get("usedBytes")), _number(cap.get("totalBytes"))
    fraction = _number(cap.get("fraction"))
    free: float | None = None
    if used is not None and total:
        free = max(0.0, 1.0 - used / total)
    elif fraction is not None:
        free = max(0.0, 1.0 - fraction)
    restarts = _number(doc.get("restarts"))
    return HealthPoint(
        time=float(time), up=bool(up),
        latency_p50_ms=_number(latency.get("p50")), latency_p99_ms=_number(latency.get("p99")),
        error_rate=_number(requests.get("errorRate")), capacity_free_ratio=free,
        restarts=None if restarts is None else int(restarts),
        lag_seconds=_number(replication.get("lagSeconds")))
