"""Features of a copy's health history over sliding windows (1, 5, 15 min), outages and labels.

Everything is computed for every point at once from cumulative sums (a 7-day history of 10-s samples is 60,480
points per copy: a loop per point would not fit the fit budget), and for one point the same way (``at=[i]``).
Windows are in time, not in samples: a node that was not sampled for a while has fewer points in its window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .types import HealthPoint

FEATURE_WINDOWS: tuple[float, ...] = (60.0, 300.0, 900.0)
RESTART_MEMORY = 600.0  # seconds: the decay of "a restart just happened"
TTF_CAP = 86_400.0  # a time to full past a day says nothing about the next half hour
PROJECTION = 900.0  # latency and lag are projected this far ahead on their 5-min trend

# The signals (log1p of latency and lag: their scale spans 1 ms to seconds, and a doubling matters at any level).
SIGNALS: tuple[tuple[str, str], ...] = (
    ("p99", "p99 write latency"), ("p50", "p50 write latency"), ("err", "error rate"),
    ("used", "disk used share"), ("lag", "replication lag"))
STATS: tuple[tuple[str, str], ...] = (("mean", "level"), ("trend", "trend"), ("std", "variability"))

Array = NDArray[np.float64]


def _window_label(w: float) -> str:
    return f"{int(w // 60)} min"


def _names() -> tuple[list[str], dict[str, str]]:
    names: list[str] = []
    text: dict[str, str] = {}
    for sig, sig_text in SIGNALS:
        names.append(f"{sig}_last")
        text[f"{sig}_last"] = f"{sig_text} now"
        for w in FEATURE_WINDOWS:
            for stat, stat_text in STATS:
                name = f"{sig}_{stat}_{int(w)}"
                names.append(name)
                text[name] = f"{sig_text} {stat_text} over {_window_label(w)}"
    for w in FEATURE_WINDOWS:
        names += [f"down_share_{int(w)}", f"restarts_{int(w)}"]
        text[f"down_share_{int(w)}"] = f"failed probes over {_window_label(w)}"
        text[f"restarts_{int(w)}"] = f"restarts over {_window_label(w)}"
    extra = {"restart_recency": "a recent restart", "disk_fill_urgency": "projected time to disk full",
             "p99_projected": "p99 write latency projected 15 min ahead",
             "lag_projected": "replication lag projected 15 min ahead"}
    names += list(extra)
    text.update(extra)
    return names, text


FEATURE_NAMES, FEATURE_TEXT = _names()


@dataclass(frozen=True)
class Columns:
    """A history as arrays (NaN where a sample had no value), sorted by time."""

    time: Array
    up: NDArray[np.bool_]
    signals: dict[str, Array]
    restarts: Array


def _col(values: Sequence[float | int | None]) -> Array:
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def columns(history: Sequence[HealthPoint]) -> Columns:
    """The history's fields as arrays, in time order."""
    pts = sorted(history, key=lambda p: p.time)
    p99, p50 = _col([p.latency_p99_ms for p in pts]), _col([p.latency_p50_ms for p in pts])
    free = _col([p.capacity_free_ratio for p in pts])
    lag = _col([p.lag_seconds for p in pts])
    signals = {"p99": np.log1p(np.maximum(p99, 0.0)), "p50": np.log1p(np.maximum(p50, 0.0)),
               "err": _col([p.error_rate for p in pts]), "used": 1.0 - free,
               "lag": np.log1p(np.maximum(lag, 0.0))}
    return Columns(time=_col([p.time for p in pts]), up=np.array([p.up for p in pts], dtype=bool),
                   signals=signals, restarts=_col([p.restarts for p in pts]))


# ---- outages and labels --------------------------------------------------------------------------------------
def outage_spans(time: Array, up: NDArray[np.bool_], down_after: int = 3) -> list[tuple[int, int]]:
    """(first, last) indices of each run of at least ``down_after`` consecutive down samples."""
    spans: list[tuple[int, int]] = []
    down = ~up
    if not down.any():
        return spans
    edges = np.diff(np.concatenate(([0], down.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    for s, e in zip(starts, ends, strict=True):
        if e - s + 1 >= down_after:
            spans.append((int(s), int(e)))
    return spans


def outages(history: Sequence[HealthPoint], down_after: int = 3) -> list[tuple[float, float]]:
    """(start, end) times of the outages: ``down_after`` or more consecutive down samples, first to last."""
    cols = columns(history)
    return [(float(cols.time[s]), float(cols.time[e])) for s, e in outage_spans(cols.time, cols.up, down_after)]


def labels(cols: Columns, windows: Sequence[float], down_after: int = 3) -> tuple[NDArray[np.bool_], Array]:
    """(usable, y): ``usable[i]`` is False inside an outage; ``y[k, i]`` is 1 when an outage starts within
    (t_i, t_i + windows[k]], 0 when none does, NaN when the history ends before the window does (unknown)."""
    t = cols.time
    spans = outage_spans(t, cols.up, down_after)
    inside = np.zeros(len(t), dtype=bool)
    for s, e in spans:
        inside[s:e + 1] = True
    starts = np.array([t[s] for s, _ in spans] + [math.inf])
    nxt = starts[np.searchsorted(starts, t, side="right")] - t
    y = np.full((len(windows), len(t)), math.nan)
    last = t[-1] if len(t) else 0.0
    for k, w in enumerate(windows):
        y[k] = np.where(nxt <= w, 1.0, np.where(t + w <= last, 0.0, math.nan))
    return ~inside, y


# ---- features ------------------------------------------------------------------------------------------------
def _sums(x: Array) -> tuple[Array, Array, Array]:
    valid = ~np.isnan(x)
    x0 = np.where(valid, x, 0.0)
    zero = np.zeros(1)
    return (np.concatenate((zero, np.cumsum(valid))), np.concatenate((zero, np.cumsum(x0))),
            np.concatenate((zero, np.cumsum(x0 * x0))))


def _range(c: Array, lo: NDArray[np.intp], hi: NDArray[np.intp]) -> Array:
    out: Array = c[hi] - c[lo]
    return out


def window_stats(x: Array, t: Array, at: NDArray[np.intp], w: float) -> tuple[Array, Array, Array]:
    """Mean, trend (per second: the newer half's mean minus the older half's, over half the window) and standard
    deviation of ``x`` over (t - w, t] at each index in ``at`` (0 where the window holds no value)."""
    n, s, ss = _sums(x)
    hi = at + 1
    lo = np.searchsorted(t, t[at] - w, side="right")
    mid = np.searchsorted(t, t[at] - w / 2, side="right")
    cnt = _range(n, lo, hi)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = _range(s, lo, hi) / cnt
        var = _range(ss, lo, hi) / cnt - mean * mean
        newer = _range(s, mid, hi) / _range(n, mid, hi)
        older = _range(s, lo, mid) / _range(n, lo, mid)
        trend = (newer - older) / (w / 2)
    std = np.sqrt(np.maximum(var, 0.0))
    return _finite(mean), _finite(trend), _finite(std)


def _finite(x: Array) -> Array:
    """NaN and infinities (empty windows) as 0 (np.nan_to_num costs more than the rest of a one-point feature)."""
    out: Array = np.where(np.isfinite(x), x, 0.0)
    return out


def _last_valid(x: Array) -> Array:
    """Each index's most recent non-NaN value (NaN before the first)."""
    idx = np.where(~np.isnan(x), np.arange(len(x)), -1)
    idx = np.maximum.accumulate(idx) if len(idx) else idx
    out: Array = np.where(idx >= 0, x[np.maximum(idx, 0)], math.nan)
    return out


def restart_events(restarts: Array) -> Array:
    """Restarts seen at each sample: the counter's rise since the previous reading; a fall (a counter reset, e.g. a
    new volume) counts as one restart."""
    prev = np.concatenate(([math.nan], _last_valid(restarts)[:-1]))
    delta = restarts - prev
    ev = np.where(np.isnan(delta), 0.0, np.where(delta < 0, 1.0, delta))
    out: Array = ev
    return out


def _counts(t: Array, flags: Array, at: NDArray[np.intp], w: float) -> Array:
    c = np.concatenate(([0.0], np.cumsum(flags)))
    lo = np.searchsorted(t, t[at] - w, side="right")
    return _range(c, lo, at + 1)


def _signal_features(cols: Columns, at: NDArray[np.intp]) -> tuple[list[Array], dict[str, Array]]:
    out: list[Array] = []
    keep: dict[str, Array] = {}
    for sig, _ in SIGNALS:
        x = cols.signals[sig]
        out.append(_finite(_last_valid(x)[at]))
        for w in FEATURE_WINDOWS:
            mean, trend, std = window_stats(x, cols.time, at, w)
            out += [mean, trend, std]
            keep[f"{sig}_mean_{int(w)}"], keep[f"{sig}_trend_{int(w)}"] = mean, trend
        keep[f"{sig}_last"] = out[-1 - 3 * len(FEATURE_WINDOWS)]
    return out, keep


def time_to_full(used: Array, trend: Array) -> Array:
    """Seconds until the disk is full at the given fill rate (per second), ``TTF_CAP`` when not filling."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ttf = np.where(trend > 1e-9, (1.0 - used) / trend, TTF_CAP)
    return np.clip(np.nan_to_num(ttf, nan=TTF_CAP), 0.0, TTF_CAP)


def feature_matrix(cols: Columns, at: NDArray[np.intp] | None = None) -> Array:
    """One row of ``FEATURE_NAMES`` per index in ``at`` (every point by default)."""
    t = cols.time
    idx = np.arange(len(t)) if at is None else np.asarray(at, dtype=np.intp)
    parts, keep = _signal_features(cols, idx)
    down = (~cols.up).astype(np.float64)
    events = restart_events(cols.restarts)
    for w in FEATURE_WINDOWS:
        total = _counts(t, np.ones(len(t)), idx, w)
        parts += [_counts(t, down, idx, w) / np.maximum(total, 1.0), _counts(t, events, idx, w)]
    last_restart = np.where(events > 0, t, -math.inf)
    last_restart = np.maximum.accumulate(last_restart) if len(t) else last_restart
    recency = np.exp(-(t[idx] - last_restart[idx]) / RESTART_MEMORY)
    used = keep["used_last"]
    ttf = time_to_full(used, keep["used_trend_900"])
    parts += [recency, np.minimum(1.0, PROJECTION / np.maximum(ttf, 1.0)),
              keep["p99_last"] + np.maximum(keep["p99_trend_300"], 0.0) * PROJECTION,
              keep["lag_last"] + np.maximum(keep["lag_trend_300"], 0.0) * PROJECTION]
    return np.column_stack(parts) if len(idx) else np.zeros((0, len(FEATURE_NAMES)))
