"""The split forecast on small synthetic series: every model on growth, flat and noisy series; counter resets;
already above; minimum partition size; not enough history."""

from __future__ import annotations

import math

import numpy as np
import pytest
from chronoshard.shardnode.forecasting.series import to_grid, unreset
from chronoshard.shardnode.forecasting.split import MODELS, backtest_pairs, forecast_split
from chronoshard.shardnode.forecasting.types import PartitionSample, SplitThresholds

T0 = 1_800_000_000.0
MIB = 1 << 20
OFFERED = [m for m in MODELS]


def series(n: int, size: list[float] | np.ndarray, rps: float | np.ndarray = 1.0, step: float = 60.0,
           ) -> list[PartitionSample]:
    """n samples ``step`` apart with these sizes and a request rate (split evenly into reads and writes)."""
    rates = np.broadcast_to(np.asarray(rps, dtype=float), (n,))
    cum = np.concatenate(([0.0], np.cumsum(rates[1:] * step)))
    return [PartitionSample(T0 + i * step, int(size[i]), int(size[i]) // 4096, int(cum[i] / 2), int(cum[i] / 2))
            for i in range(n)]


def big(load: float = 1e9) -> SplitThresholds:
    return SplitThresholds(size_bytes=10**15, load_rps=load, sustain_seconds=600)


@pytest.mark.parametrize("model", OFFERED)
def test_linear_growth_crosses_when_the_line_says(model: str) -> None:
    # 1 MiB a minute for 2 h: 120 MiB now; 150 MiB is 30 min away, inside a 1 h window
    s = series(121, [i * MIB for i in range(121)])
    now = s[-1].time
    fc = forecast_split(s, now, 3600, SplitThresholds(150 * MIB, 1e9), model)
    assert fc.probability > 0.9
    assert fc.reason == "size"
    assert fc.predicted_time is not None and abs(fc.predicted_time - (now + 30 * 60)) <= 5 * 60
    assert 175 * MIB <= fc.size_at_window_end.point <= 185 * MIB
    assert fc.size_at_window_end.low <= fc.size_at_window_end.point <= fc.size_at_window_end.high
    assert 55 * MIB <= fc.growth_bytes_per_hour <= 65 * MIB
    assert "size" in fc.explanation and fc.samples == 121


@pytest.mark.parametrize("model", OFFERED)
def test_linear_growth_far_from_the_threshold_does_not_cross(model: str) -> None:
    s = series(121, [i * MIB for i in range(121)])
    fc = forecast_split(s, s[-1].time, 3600, SplitThresholds(400 * MIB, 1e9), model)
    assert fc.probability < 0.05
    assert fc.predicted_time is None and fc.reason is None
    assert "no split" in fc.explanation


@pytest.mark.parametrize("model", OFFERED)
def test_exponential_growth_is_seen_coming(model: str) -> None:
    # doubling every 30 min: 16 MiB -> 256 MiB over 2 h; 1 GiB is two doublings (1 h) away, 600 MiB about 40 min
    size = [16 * MIB * 2 ** (i / 30) for i in range(121)]
    s = series(121, size)
    fc = forecast_split(s, s[-1].time, 3600, SplitThresholds(400 * MIB, 1e9), model)
    # a straight line through the last hour lags a doubling series: more likely than not, not certain
    assert fc.probability > 0.6
    assert fc.predicted_time is not None and fc.predicted_time < s[-1].time + 3600
    assert fc.size_at_window_end.high > 400 * MIB


@pytest.mark.parametrize("model", OFFERED)
def test_flat_series_never_crosses_and_has_a_point_interval(model: str) -> None:
    s = series(60, [50 * MIB] * 60, rps=5.0)
    fc = forecast_split(s, s[-1].time, 3600, SplitThresholds(51 * MIB, 6.0), model)
    assert fc.probability == 0.0 and fc.predicted_time is None
    assert fc.size_at_window_end.low == fc.size_at_window_end.high == 50 * MIB
    assert fc.load_at_window_end.point == pytest.approx(5.0, rel=0.02)
    assert fc.growth_bytes_per_hour == 0.0


@pytest.mark.parametrize("model", OFFERED)
def test_noisy_flat_load_is_not_a_sustained_overload(model: str) -> None:
    rng = np.random.default_rng(7)
    rps = np.clip(rng.normal(100, 15, 180), 0, None)
    s = series(180, [10 * MIB] * 180, rps=rps)
    fc = forecast_split(s, s[-1].time, 3600, big(load=160.0), model)
    # single minutes above 160 happen (4 sigma: rarely), ten in a row do not
    assert fc.probability < 0.1
    assert 80 <= fc.load_at_window_end.point <= 120
    assert fc.load_at_window_end.low < fc.load_at_window_end.point < fc.load_at_window_end.high


@pytest.mark.parametrize("model", OFFERED)
def test_rising_load_crosses_the_sustained_threshold(model: str) -> None:
    rng = np.random.default_rng(3)
    rps = np.linspace(20, 100, 120) + rng.normal(0, 2, 120)  # +40 req/s an hour
    s = series(120, [10 * MIB] * 120, rps=rps)
    fc = forecast_split(s, s[-1].time, 3600, big(load=110.0), model)
    assert fc.probability > 0.7
    assert fc.reason == "load"
    # 110 is reached about 15 min out, and must then hold for 10 min
    assert fc.predicted_time is not None and s[-1].time + 15 * 60 <= fc.predicted_time <= s[-1].time + 50 * 60


def test_counter_resets_are_not_negative_load() -> None:
    # 10 req/s throughout; the node restarts at sample 50 and its counters start again from 0
    s = series(100, [MIB] * 100, rps=10.0)
    restarted = [PartitionSample(x.time, x.bytes, x.blocks, x.writes - s[49].writes, x.reads - s[49].reads)
                 if i >= 50 else x for i, x in enumerate(s)]
    grid = to_grid(restarted, 60.0)
    assert grid.load.min() >= 0
    # the reset sample itself counts what came after the restart (0 here), the rest the true rate
    assert np.median(grid.load) == pytest.approx(10.0, rel=0.01)
    fc = forecast_split(restarted, s[-1].time, 3600, big(load=20.0), "linear")
    assert fc.load_rps_now == pytest.approx(10.0, rel=0.01)
    assert fc.probability < 0.05


def test_unreset_counts_on_after_a_drop() -> None:
    assert unreset(np.array([0.0, 5, 9, 2, 6])).tolist() == [0, 5, 9, 11, 15]


@pytest.mark.parametrize("model", OFFERED)
def test_already_above_the_size_threshold_is_certain_now(model: str) -> None:
    s = series(30, [i * MIB for i in range(30)])
    now = s[-1].time + 10
    fc = forecast_split(s, now, 3600, SplitThresholds(20 * MIB, 1e9), model)
    assert fc.probability == 1.0 and fc.reason == "size"
    assert fc.predicted_time == s[-1].time
    assert "already above" in fc.explanation


def test_already_above_the_load_threshold_only_once_sustained() -> None:
    rps = np.r_[np.full(50, 10.0), np.full(10, 100.0)]
    s = series(60, [MIB] * 60, rps=rps)
    th = big(load=50.0)
    sustained = forecast_split(s, s[-1].time, 3600, th, "linear")
    assert sustained.probability == 1.0 and sustained.reason == "load"
    short = forecast_split(s[:55], s[54].time, 3600, th, "linear")  # five minutes above: not yet sustained
    assert short.predicted_time != s[54].time
    assert short.probability < 1.0 or short.predicted_time is None or short.predicted_time > s[54].time


def test_min_partition_size_rules_out_small_halves() -> None:
    s = series(121, [i * MIB for i in range(121)])
    now = s[-1].time
    th = SplitThresholds(150 * MIB, 1e9, 600, min_partition_bytes=100 * MIB)  # halves of 75 MiB < 100 MiB
    fc = forecast_split(s, now, 3600, th, "linear")
    assert fc.probability == 0.0 and fc.predicted_time is None
    assert "minPartitionSize" in fc.explanation
    ok = forecast_split(s, now, 3600, SplitThresholds(150 * MIB, 1e9, 600, min_partition_bytes=70 * MIB), "linear")
    assert ok.probability > 0.9


def test_min_partition_size_when_already_above() -> None:
    s = series(30, [i * MIB for i in range(30)])
    fc = forecast_split(s, s[-1].time, 3600, SplitThresholds(20 * MIB, 1e9, 600, min_partition_bytes=64 * MIB),
                        "linear")
    assert fc.probability == 0.0 and "minPartitionSize" in fc.explanation


def test_load_split_of_a_small_partition_is_ruled_out() -> None:
    rps = np.linspace(20, 100, 120)
    s = series(120, [10 * MIB] * 120, rps=rps)
    fc = forecast_split(s, s[-1].time, 3600, SplitThresholds(10**15, 110.0, 600, min_partition_bytes=8 * MIB),
                        "linear")
    assert fc.probability == 0.0 and "minPartitionSize" in fc.explanation


def test_not_enough_history() -> None:
    s = series(5, [i * MIB for i in range(5)])
    fc = forecast_split(s, s[-1].time, 3600, SplitThresholds(MIB, 1.0))
    assert fc.probability == 0.0 and fc.predicted_time is None
    assert "not enough history" in fc.explanation and fc.samples == 5


def test_samples_after_now_are_not_used() -> None:
    s = series(121, [i * MIB for i in range(121)])
    fc = forecast_split(s, s[60].time, 600, SplitThresholds(100 * MIB, 1e9), "linear")
    assert fc.samples == 61 and fc.probability < 0.05


def test_auto_is_an_offered_model_and_the_forecast_is_repeatable() -> None:
    s = series(121, [i * MIB + (i % 7) * 0.3 * MIB for i in range(121)])
    a = forecast_split(s, s[-1].time, 3600, SplitThresholds(150 * MIB, 1e9))
    b = forecast_split(s, s[-1].time, 3600, SplitThresholds(150 * MIB, 1e9))
    assert a == b
    assert a.model.split(" ")[0] in MODELS


def test_a_long_series_is_cheap_enough() -> None:
    # 2,000 samples: the grid keeps the recent ones; the result must still see the trend
    s = series(2000, [i * MIB for i in range(2000)], step=10.0)
    fc = forecast_split(s, s[-1].time, 3600, SplitThresholds(2100 * MIB, 1e9), "linear")
    assert fc.probability > 0.9 and fc.samples == 2000
    assert math.isfinite(fc.growth_bytes_per_hour)


def test_backtest_pairs_label_what_happened() -> None:
    # growth starts at minute 60: forecasts before 30 should say no, the ones near 60 - 30 min window should say yes
    size = [0.0] * 60 + [i * 2 * MIB for i in range(60)]
    s = series(120, size)
    pairs = backtest_pairs(s, 1800, SplitThresholds(60 * MIB, 1e9), "linear", 300)
    assert pairs
    outcomes = [h for _, h in pairs]
    assert outcomes[0] is False and True in outcomes
    # where it happened late in the history the model, having seen the growth, agrees
    assert pairs[-1][1] is True and pairs[-1][0] > 0.5
