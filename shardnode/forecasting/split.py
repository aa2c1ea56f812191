"""The split forecast: P(a partition crosses its size or sustained-load threshold within the window), and when.

Each model (models.py) simulates paths of the partition's stored bytes and request rate; the probability is the
share of paths that cross a threshold within the window whose halves would not be below ``minPartitionSize``,
then mapped by a Calibrator fitted on the partition's own backtest (``backtest_pairs``). See docs/weaving.md.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from chronoshard.shardnode.forecasting.calibration import Calibrator
from chronoshard.shardnode.forecasting.crossing import (
    NEVER,
    first_observed,
    load_crossing,
    size_crossing,
    steps_to_sustain,
    trailing_run,
)
from chronoshard.shardnode.forecasting.models import Paths, run_model
from chronoshard.shardnode.forecasting.series import Grid, choose_step, to_grid
from chronoshard.shardnode.forecasting.types import Interval, PartitionSample, SplitForecast, SplitThresholds

MODELS = ("auto", "linear", "exponential-smoothing", "arima")
BASELINES = ("naive", "seasonal-naive", "drift")  # for the benchmark; not offered to users
AUTO_MODEL = "arima"  # chosen by tests/bench/bench_weave_forecast.py (docs/weaving.md#the-split-forecast)
MIN_SAMPLES = 8  # fewer and neither a trend nor a spread can be estimated
SEED = 20  # fixed: the same samples give the same forecast


@dataclass(frozen=True)
class _Outlook:
    """A model's paths for both series, on the grid, before thresholds are applied."""

    grid: Grid
    bytes: Paths
    load: Paths
    h: int
    model: str


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _interval(paths: Paths, j: int) -> Interval:
    low, high = np.percentile(paths.paths[:, j], [10, 90])
    return Interval(float(max(low, 0.0)), float(max(paths.mean[j], 0.0)), float(max(high, 0.0)))


def _empty(samples: int, model: str, explanation: str) -> SplitForecast:
    zero = Interval(0.0, 0.0, 0.0)
    return SplitForecast(0.0, None, None, zero, zero, 0.0, 0.0, model, samples, explanation)


def _outlook(
    samples: Sequence[PartitionSample], now: float, window_seconds: float, model: str, season_seconds: float
) -> _Outlook | None:
    times = np.array(sorted(s.time for s in samples), dtype=float)
    step = choose_step(times, window_seconds)
    grid = to_grid(samples, step)
    if len(grid.times) < MIN_SAMPLES:
        return None
    h = max(1, math.ceil((now + window_seconds - grid.times[-1]) / step - 1e-9))
    season = int(round(season_seconds / step)) if season_seconds > 0 else 0
    rng = np.random.default_rng(SEED)
    size_paths, used = run_model(model, grid.bytes, h, rng, True, season)
    load_paths, used_load = run_model(model, grid.load, h, rng, False, season)
    clip = lambda p: Paths(p.mean, np.maximum(p.paths, 0.0))  # noqa: E731 - neither bytes nor load go below 0
    return _Outlook(grid, clip(size_paths), clip(load_paths), h, used if used == used_load else f"{used}/{used_load}")


def _crossings(o: _Outlook, thresholds: SplitThresholds, last_step: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Per path: the crossing step (NEVER if none), whether it is by size, and how many crossings the minimum
    partition size ruled out."""
    need = steps_to_sustain(o.grid.step, thresholds.sustain_seconds)
    carried = trailing_run(o.grid.load >= thresholds.load_rps)
    by_size = size_crossing(o.bytes.paths, thresholds.size_bytes)
    by_load = load_crossing(o.load.paths, thresholds.load_rps, need, carried)
    first = np.minimum(by_size, by_load)
    first = np.where(first <= last_step, first, NEVER)
    ruled_out = 0
    if thresholds.min_partition_bytes:
        # a split cuts at the median block: each half holds about half the bytes the partition has then
        idx = np.minimum(first, o.h - 1)
        at_split = o.bytes.paths[np.arange(len(first)), idx]
        small = (first != NEVER) & (at_split / 2 < thresholds.min_partition_bytes)
        ruled_out = int(small.sum())
        first = np.where(small, NEVER, first)
    return first, (by_size <= by_load), ruled_out


def _already(o: _Outlook, thresholds: SplitThresholds) -> str | None:
    need = steps_to_sustain(o.grid.step, thresholds.sustain_seconds)
    if o.grid.bytes[-1] >= thresholds.size_bytes:
        return "size"
    if trailing_run(o.grid.load >= thresholds.load_rps) >= need:
        return "load"
    return None


def _too_small(o: _Outlook, thresholds: SplitThresholds) -> bool:
    m = thresholds.min_partition_bytes
    return bool(m) and o.grid.bytes[-1] / 2 < m


def forecast_split(
    samples: Sequence[PartitionSample],
    now: float,
    window_seconds: float,
    thresholds: SplitThresholds,
    model: str = "auto",
    calibrator: Calibrator | None = None,
    *,
    season_seconds: float = 0.0,
) -> SplitForecast:
    """The probability that the partition crosses a split threshold within ``window_seconds`` of ``now``, when,
    and the size and load it is forecast to have at the window's end. ``season_seconds`` is for the seasonal
    baseline only."""
    name = AUTO_MODEL if model == "auto" else model
    used = [s for s in samples if s.time <= now]
    o = _outlook(used, now, window_seconds, name, season_seconds) if len(used) >= MIN_SAMPLES else None
    if o is None:
        return _empty(len(used), name, f"not enough history: {len(used)} samples, at least {MIN_SAMPLES} needed")
    return _decide(o, now, window_seconds, thresholds, calibrator, len(used))


def _decide(
    o: _Outlook, now: float, window: float, thresholds: SplitThresholds, calibrator: Calibrator | None, n: int
) -> SplitForecast:
    j = o.h - 1
    size_end, load_end = _interval(o.bytes, j), _interval(o.load, j)
    growth = (size_end.point - o.grid.bytes[-1]) / (o.h * o.grid.step) * 3600.0
    base = dict(size_at_window_end=size_end, load_at_window_end=load_end, growth_bytes_per_hour=float(growth),
                load_rps_now=float(o.grid.load[-1]), model=o.model, samples=n)
    already = _already(o, thresholds)
    if already is not None:
        return _now_or_never(o, thresholds, already, base)
    last_step = int(math.floor((now + window - o.grid.times[-1]) / o.grid.step + 1e-9)) - 1
    first, size_first, ruled_out = _crossings(o, thresholds, max(last_step, 0))
    crossed = first != NEVER
    raw = float(crossed.mean())
    p = calibrator.apply(raw) if calibrator is not None else raw
    if not crossed.any():
        why = (f"no split: {ruled_out} of {len(first)} simulated crossings would leave halves below "
               f"minPartitionSize {_size(thresholds.min_partition_bytes or 0)}") if ruled_out else (
               f"no split within the window: size {_size(size_end.low)}-{_size(size_end.high)} at its end "
               f"(threshold {_size(thresholds.size_bytes)}), load {load_end.low:.1f}-{load_end.high:.1f} req/s "
               f"(threshold {thresholds.load_rps:g} for {thresholds.sustain_seconds:g} s)")
        return SplitForecast(p if raw > 0 else 0.0, None, None, explanation=why, **base)  # type: ignore[arg-type]
    when = o.grid.times[-1] + (float(np.median(first[crossed])) + 1) * o.grid.step
    reason = "size" if (size_first & crossed).sum() * 2 >= crossed.sum() else "load"
    what = (f"size reaches {_size(thresholds.size_bytes)} (80% interval at window end {_size(size_end.low)}-"
            f"{_size(size_end.high)})") if reason == "size" else (
            f"load stays above {thresholds.load_rps:g} req/s for {thresholds.sustain_seconds:g} s (80% interval at "
            f"window end {load_end.low:.1f}-{load_end.high:.1f} req/s)")
    why = f"p={p:.2f} that {what}, most likely around {_when(when)} ({o.model})"
    return SplitForecast(p, float(when), reason, explanation=why, **base)  # type: ignore[arg-type]


def _now_or_never(o: _Outlook, thresholds: SplitThresholds, already: str, base: dict[str, object]) -> SplitForecast:
    """Already above a threshold: a split now (probability 1), unless its halves would be below the minimum."""
    now_bytes = float(o.grid.bytes[-1])
    if _too_small(o, thresholds):
        why = (f"no split: above the {already} threshold, but halves of {_size(now_bytes / 2)} would be below "
               f"minPartitionSize {_size(thresholds.min_partition_bytes or 0)}")
        return SplitForecast(0.0, None, None, explanation=why, **base)  # type: ignore[arg-type]
    t = float(o.grid.times[-1])
    why = (f"already above the size threshold: {_size(now_bytes)} >= {_size(thresholds.size_bytes)}"
           if already == "size" else
           f"already above the load threshold: {o.grid.load[-1]:.1f} req/s >= {thresholds.load_rps:g} for "
           f"{thresholds.sustain_seconds:g} s")
    return SplitForecast(1.0, t, already, explanation=why, **base)  # type: ignore[arg-type]


def backtest_pairs(
    samples: Sequence[PartitionSample],
    window_seconds: float,
    thresholds: SplitThresholds,
    model: str,
    step_seconds: float,
) -> list[tuple[float, bool]]:
    """Rolls the forecast over the partition's own history: (predicted probability, did it cross within the
    window) at every ``step_seconds``, skipping times when it was already above a threshold."""
    ordered = sorted(samples, key=lambda s: s.time)
    if len(ordered) < MIN_SAMPLES + 1:
        return []
    times = [s.time for s in ordered]
    # the truth on one grid over the whole history (what the forecast would have been judged against)
    truth = to_grid(ordered, choose_step(np.array(times), window_seconds), max_steps=10**9)
    pairs: list[tuple[float, bool]] = []
    t = times[MIN_SAMPLES - 1]
    while t <= times[-1] - window_seconds:
        fc = forecast_split(ordered[: bisect_right(times, t)], t, window_seconds, thresholds, model)
        if fc.samples >= MIN_SAMPLES and not (fc.probability == 1.0 and fc.predicted_time is not None
                                              and fc.predicted_time <= t):
            upto = truth.times <= t + window_seconds + 1e-6
            seen = Grid(truth.times[upto], truth.bytes[upto], truth.load[upto], truth.step)
            pairs.append((fc.probability, first_observed(seen, t, thresholds) is not None))
        t += step_seconds
    return pairs
