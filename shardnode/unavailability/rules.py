"""The rule-based risk (docs/tokens.md, "The rule fallback"): what the token service uses while the model is
untrained or its stored form is corrupt. Each rule gives a probability per window; they combine as independent
causes, ``1 - prod(1 - r)``, floored at ``BASE_RISK`` and made non-decreasing in the window length."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .features import restart_events, time_to_full, window_stats
from .types import WINDOWS_DEFAULT, HealthPoint, Risk

BASE_RISK = 0.01
MAX_RISK = 0.99
DISK_FULL_FREE = 0.02  # free share at which a node is as good as full (SQLite needs room for its journal)
LATENCY_TIMEOUT_MS = 5000.0  # a p99 at which clients and probes time out
LATENCY_HIGH_MS = 1000.0
ERROR_CRASH, ERROR_HIGH, ERROR_SOME = 0.5, 0.1, 0.05
LAG_CUTOFF_S, LAG_HIGH_S = 300.0, 60.0
LOOKBACK = 960.0


@dataclass(frozen=True)
class Now:
    """The last values and trends (per second, raw units) the rules read."""

    free: float | None
    fill_rate: float  # of the used share, over 15 min
    p99: float | None
    p99_trend: float  # ms per second over 5 min
    error_1m: float | None
    error_trend: float
    restarts_15m: float
    lag: float | None
    lag_trend: float
    down_now: bool
    downs_5m: int


def _series(pts: Sequence[HealthPoint], get: Callable[[HealthPoint], float | int | None]) -> np.ndarray:
    return np.array([math.nan if get(p) is None else float(get(p)) for p in pts])  # type: ignore[arg-type]


def _level_trend(x: np.ndarray, t: np.ndarray, w: float) -> tuple[float | None, float]:
    valid = ~np.isnan(x)
    if not valid.any():
        return None, 0.0
    mean, trend, _ = window_stats(x, t, np.array([len(t) - 1]), w)
    return float(x[valid][-1]), float(trend[0])


def read_now(history: Sequence[HealthPoint], now: float) -> Now | None:
    """The rules' inputs from the samples taken up to ``now`` (None without any)."""
    # The rules look back 15 min; a minute more gives the first restart in it the counter value before it.
    pts = sorted((p for p in history if now - LOOKBACK < p.time <= now), key=lambda p: p.time)
    if not pts:
        return None
    t = _series(pts, lambda p: p.time)
    free, _ = _level_trend(_series(pts, lambda p: p.capacity_free_ratio), t, 900.0)
    _, fill = _level_trend(1.0 - _series(pts, lambda p: p.capacity_free_ratio), t, 900.0)
    p99, p99_trend = _level_trend(_series(pts, lambda p: p.latency_p99_ms), t, 300.0)
    err = _series(pts, lambda p: p.error_rate)
    _, err_trend = _level_trend(err, t, 300.0)
    err_1m = window_stats(err, t, np.array([len(t) - 1]), 60.0)[0][0] if (~np.isnan(err)).any() else None
    lag, lag_trend = _level_trend(_series(pts, lambda p: p.lag_seconds), t, 300.0)
    events = restart_events(_series(pts, lambda p: p.restarts))
    recent = t > t[-1] - 900.0
    downs = sum(1 for p in pts if not p.up and p.time > t[-1] - 300.0)
    return Now(free=free, fill_rate=fill, p99=p99, p99_trend=p99_trend,
               error_1m=None if err_1m is None else float(err_1m), error_trend=err_trend,
               restarts_15m=float(events[recent].sum()), lag=lag, lag_trend=lag_trend,
               down_now=not pts[-1].up, downs_5m=downs)


def disk_rule(n: Now, w: float) -> float:
    """Full now: 0.9; the 15-min fill rate fills it within the window: 0.85, within twice the window: 0.4."""
    if n.free is None:
        return 0.0
    if n.free <= DISK_FULL_FREE:
        return 0.9
    ttf = float(time_to_full(np.array([1.0 - n.free + DISK_FULL_FREE]), np.array([n.fill_rate]))[0])
    return 0.85 if ttf <= w else 0.4 if ttf <= 2 * w else 0.0


def latency_rule(n: Now, w: float) -> float:
    """p99 projected on its 5-min trend past the timeout within the window: 0.75; p99 above 1 s now: 0.3."""
    if n.p99 is None:
        return 0.0
    if n.p99 + max(n.p99_trend, 0.0) * w >= LATENCY_TIMEOUT_MS:
        return 0.75
    return 0.3 if n.p99 >= LATENCY_HIGH_MS else 0.0


def error_rule(n: Now, w: float) -> float:
    """Error rate over the last minute: >= 0.5: 0.8; >= 0.1 and rising: 0.5; >= 0.05: 0.2."""
    e = n.error_1m
    if e is None:
        return 0.0
    if e >= ERROR_CRASH:
        return 0.8
    if e >= ERROR_HIGH and n.error_trend > 0:
        return 0.5
    return 0.2 if e >= ERROR_SOME else 0.0


def restart_rule(n: Now, w: float) -> float:
    """Restarts in the last 15 min: two or more (a crash loop): 0.8; one: 0.3."""
    return 0.8 if n.restarts_15m >= 2 else 0.3 if n.restarts_15m >= 1 else 0.0


def lag_rule(n: Now, w: float) -> float:
    """Lag projected on its 5-min trend past 300 s within the window: 0.6; lag above 60 s now: 0.3."""
    if n.lag is None:
        return 0.0
    if n.lag + max(n.lag_trend, 0.0) * w >= LAG_CUTOFF_S:
        return 0.6
    return 0.3 if n.lag >= LAG_HIGH_S else 0.0


def probe_rule(n: Now, w: float) -> float:
    """The last probe failed: 0.6; a probe failed in the last 5 min: 0.3."""
    return 0.6 if n.down_now else 0.3 if n.downs_5m else 0.0


RULES: tuple[tuple[str, Callable[[Now, float], float]], ...] = (
    ("projected time to disk full", disk_rule), ("p99 write latency trend", latency_rule),
    ("error rate", error_rule), ("recent restarts", restart_rule), ("replication lag trend", lag_rule),
    ("failed probes", probe_rule))


def rule_risk(history: Sequence[HealthPoint], now: float,
              windows: Sequence[float] = WINDOWS_DEFAULT) -> Risk:
    """The documented rule-based risk of the copy whose ``history`` this is, at ``now``."""
    ws = sorted(float(w) for w in windows)
    n = read_now(history, now)
    if n is None:
        return Risk({w: BASE_RISK for w in ws}, "rules", [])
    probs: dict[float, float] = {}
    running = 0.0
    for w in ws:
        keep = 1.0 - BASE_RISK
        for _, rule in RULES:
            keep *= 1.0 - rule(n, w)
        running = max(running, min(MAX_RISK, 1.0 - keep))  # a longer window can only hold more risk
        probs[w] = round(running, 6)
    longest = ws[-1]
    fired = sorted(((rule(n, longest), name) for name, rule in RULES), reverse=True)
    return Risk(probs, "rules", [name for r, name in fired if r > 0])
