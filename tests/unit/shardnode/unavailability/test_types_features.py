import math
import random

import numpy as np
import pytest
from chronoshard.shardnode.unavailability.features import (
    FEATURE_NAMES,
    columns,
    feature_matrix,
    labels,
    outages,
    restart_events,
    time_to_full,
)
from chronoshard.shardnode.unavailability.types import HealthPoint, point_from_health

from .histories import STEP, down, healthy

DOC = {"time": 1733580000.0, "uptimeSeconds": 812.5, "restarts": 2,
       "capacity": {"usedBytes": 1048576, "totalBytes": 10737418240, "fraction": 0.0001},
       "requests": {"total": 5012, "errors": 3, "errorRate": 0.0006, "windowSeconds": 60},
       "writeLatencyMs": {"p50": 1.2, "p99": 4.8},
       "replication": {"role": "mirror", "appliedLsn": 1200, "lagLsn": 3, "lagSeconds": 0.04,
                       "sourceReachable": True}}


def test_point_from_health_flattens_the_documented_sample() -> None:
    p = point_from_health(DOC, 5.0, True)
    assert (p.time, p.up, p.latency_p50_ms, p.latency_p99_ms) == (5.0, True, 1.2, 4.8)
    assert p.error_rate == 0.0006 and p.restarts == 2 and p.lag_seconds == 0.04
    assert p.capacity_free_ratio == pytest.approx(1 - 1048576 / 10737418240)


def test_point_from_health_leaves_missing_and_malformed_fields_none() -> None:
    p = point_from_health({"writeLatencyMs": {"p50": None, "p99": True}, "capacity": {"fraction": 0.25},
                           "replication": {"role": "primary", "lagSeconds": None}}, 1.0, False)
    assert p.latency_p50_ms is None and p.latency_p99_ms is None and p.restarts is None and p.lag_seconds is None
    assert p.capacity_free_ratio == 0.75 and p.up is False


def _series(ups: list[bool]) -> list[HealthPoint]:
    rng = random.Random(1)
    return [healthy(rng, i * STEP) if u else down(i * STEP) for i, u in enumerate(ups)]


def test_outages_need_down_after_consecutive_failed_probes() -> None:
    ups = [True] * 5 + [False] * 2 + [True] * 5 + [False] * 4 + [True] * 3 + [False] * 3
    assert outages(_series(ups)) == [(12 * STEP, 15 * STEP), (19 * STEP, 21 * STEP)]
    assert outages(_series(ups), down_after=2) == [(5 * STEP, 6 * STEP), (12 * STEP, 15 * STEP),
                                                   (19 * STEP, 21 * STEP)]
    assert outages(_series([True] * 10)) == []


def test_labels_look_ahead_exclude_outages_and_leave_the_unknown_end_open() -> None:
    ups = [True] * 20 + [False] * 4 + [True] * 20
    usable, y = labels(columns(_series(ups)), [50.0])
    # t=190 is 10 s before the outage at 200, t=150 exactly 50 s before (inside (t, t+50]), t=140 is 60 s before.
    assert y[0, 19] == 1 and y[0, 15] == 1 and y[0, 14] == 0
    assert not usable[20:24].any() and usable[:20].all() and usable[24:].all()
    assert y[0, 24] == 0  # after the outage: nothing ahead within 50 s
    assert math.isnan(y[0, -1]) and math.isnan(y[0, -5]) and y[0, -6] == 0  # the last 50 s: future unknown


def test_slopes_follow_a_filling_disk_and_projected_time_to_full() -> None:
    rate = 0.001  # of the volume per 10 s: full in 10,000 s from empty
    pts = [HealthPoint(time=i * STEP, up=True, capacity_free_ratio=0.9 - rate * i, restarts=0) for i in range(200)]
    x = feature_matrix(columns(pts), np.array([199]))[0]
    named = dict(zip(FEATURE_NAMES, x, strict=True))
    for w in (60, 300, 900):
        assert named[f"used_trend_{w}"] == pytest.approx(rate / STEP, rel=1e-6)
    assert named["used_last"] == pytest.approx(0.1 + rate * 199)
    free = 0.9 - rate * 199
    assert named["disk_fill_urgency"] == pytest.approx(min(1.0, 900 / (free / (rate / STEP))), rel=1e-6)
    assert time_to_full(np.array([0.5]), np.array([0.0]))[0] == 86_400.0


def test_a_flat_signal_has_no_trend_and_no_variability() -> None:
    pts = [HealthPoint(time=i * STEP, up=True, latency_p99_ms=40.0) for i in range(100)]
    named = dict(zip(FEATURE_NAMES, feature_matrix(columns(pts), np.array([99]))[0], strict=True))
    assert named["p99_trend_300"] == 0 and named["p99_std_900"] == pytest.approx(0, abs=1e-9)
    assert named["p99_mean_60"] == pytest.approx(math.log1p(40.0))


def test_restarts_count_rises_and_a_counter_reset_counts_as_one() -> None:
    ev = restart_events(np.array([3.0, 3.0, 5.0, math.nan, 6.0, 0.0, 0.0]))
    assert ev.tolist() == [0.0, 0.0, 2.0, 0.0, 1.0, 1.0, 0.0]
    pts = [HealthPoint(time=i * STEP, up=True, restarts=r) for i, r in enumerate([3, 3, 5, 5, 6, 0, 0])]
    named = dict(zip(FEATURE_NAMES, feature_matrix(columns(pts), np.array([6]))[0], strict=True))
    assert named["restarts_900"] == 4 and named["restarts_60"] == 4
    assert named["restart_recency"] == pytest.approx(math.exp(-10 / 600))
    named0 = dict(zip(FEATURE_NAMES, feature_matrix(columns(pts), np.array([1]))[0], strict=True))
    assert named0["restarts_900"] == 0 and named0["restart_recency"] == 0


def test_features_at_one_point_equal_the_whole_history_row() -> None:
    rng = random.Random(3)
    pts = [healthy(rng, i * STEP, restarts=i // 50) if i % 37 else down(i * STEP) for i in range(300)]
    cols = columns(pts)
    full = feature_matrix(cols)
    assert full.shape == (300, len(FEATURE_NAMES)) and np.isfinite(full).all()
    for i in (0, 36, 150, 299):
        assert np.allclose(feature_matrix(cols, np.array([i]))[0], full[i])
