"""The streaming detector on synthetic series (seasonality + noise, with and without an injected anomaly), its
what-if (``peek``) and its persistence; and the windowed-Gaussian baseline's."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from chronoshard.shardnode.anomaly.streaming import (
    FEATURES,
    RANGE_BLOCKS,
    StreamingDetector,
    WindowedGaussian,
    _Range,
    fisher,
)

N, AT, PERIOD, PROBATION = 2400, 2000, 96, 300
ALARM = 0.4  # a score at or above this is an alarm in these tests (NAB's standard-profile sweep picks about 0.37)
NOISE_ALARMS = 2  # scores are combined conformal tail probabilities: on plain noise a rare alarm is expected


def series(seed: int) -> np.ndarray:
    """A daily-like cycle (period 96) with Gaussian noise."""
    rng = np.random.default_rng(seed)
    i = np.arange(N)
    return 10.0 + 3.0 * np.sin(2 * math.pi * i / PERIOD) + rng.normal(0.0, 0.5, N)


def spike(x: np.ndarray) -> np.ndarray:
    y = x.copy()
    y[AT] += 8.0  # 16 noise sigmas, within the seasonal range
    return y


def level_shift(x: np.ndarray) -> np.ndarray:
    y = x.copy()
    y[AT:] += 4.0
    return y


def variance_change(x: np.ndarray) -> np.ndarray:
    y = x.copy()
    y[AT:] += np.random.default_rng(99).normal(0.0, 3.0, N - AT)
    return y


def scores(x: np.ndarray, **params: float) -> np.ndarray:
    d = StreamingDetector(probation=PROBATION, **params)  # type: ignore[arg-type]
    return np.array([d.update(60.0 * i, float(v)) for i, v in enumerate(x)])


@pytest.mark.parametrize("inject", [spike, level_shift, variance_change])
@pytest.mark.parametrize("seed", [1, 2])
def test_detects_an_injected_anomaly_and_not_the_noise_before_it(inject: object, seed: int) -> None:
    s = scores(inject(series(seed)))  # type: ignore[operator]
    assert s[:PROBATION].max() == 0.0  # quiet during its warm-up
    before, after = s[PROBATION:AT], s[AT : AT + 20]
    assert after.max() >= ALARM
    assert after.max() > before.max()  # the injected anomaly is the most anomalous point of the series
    assert np.count_nonzero(before >= ALARM) <= NOISE_ALARMS


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_plain_noise_raises_next_to_no_alarm(seed: int) -> None:
    s = scores(series(seed))
    assert np.count_nonzero(s >= ALARM) <= NOISE_ALARMS
    assert np.all((s >= 0.0) & (s <= 1.0))


def test_a_smaller_repeat_within_the_hold_is_silenced() -> None:
    x = series(13)
    x[AT] += 8.0
    x[AT + 10] += 6.0  # alone, an alarm too
    s = scores(x)
    assert s[AT] >= ALARM
    assert s[AT + 10] == 0.0  # part of the first alarm's incident
    y = series(13)
    y[AT + 10] += 6.0
    assert scores(y)[AT + 10] >= ALARM


def test_a_larger_repeat_within_the_hold_alarms_again() -> None:
    x = series(13)
    x[AT] += 8.0
    x[AT + 10] += 16.0
    s = scores(x)
    assert s[AT] >= ALARM
    assert s[AT + 10] > s[AT]


def test_peek_leaves_the_state_unchanged() -> None:
    x = spike(series(7))
    d = StreamingDetector(probation=PROBATION)
    for i, v in enumerate(x[:AT]):
        d.update(60.0 * i, float(v))
    before = json.dumps(d.to_state())
    what_if = d.peek(60.0 * AT, float(x[AT]))
    assert json.dumps(d.to_state()) == before
    assert d.peek(60.0 * AT, float(x[AT])) == what_if
    assert d.update(60.0 * AT, float(x[AT])) == what_if
    assert what_if >= ALARM


@pytest.mark.parametrize("cls", [StreamingDetector, WindowedGaussian])
def test_state_round_trip_gives_identical_scores(cls: type[StreamingDetector] | type[WindowedGaussian]) -> None:
    x = level_shift(series(8))
    a = (
        WindowedGaussian(probation=PROBATION, window=500, step=50)
        if cls is WindowedGaussian
        else cls(probation=PROBATION)
    )
    for i, v in enumerate(x[:1500]):
        a.update(60.0 * i, float(v))
    b = cls.from_state(json.loads(json.dumps(a.to_state())))
    rest = list(enumerate(x[1500:], start=1500))
    sa = [a.update(60.0 * i, float(v)) for i, v in rest]
    sb = [b.update(60.0 * i, float(v)) for i, v in rest]
    assert sa == sb
    assert max(sa) > 0.0


def _corrupt_states(good: dict) -> list[object]:
    def with_(**kw: object) -> dict:
        return {**good, **kw}

    return [
        {},
        with_(kind="other"),
        with_(version=99),
        with_(params={"history": "many"}),
        with_(params={**good["params"], "history": 10}),
        with_(seen=-1),
        with_(values="not a list"),
        with_(values=[1.0, "x"]),
        with_(values=[math.nan]),
        with_(values=[0.0] * (good["params"]["history"] + 1)),
        with_(params={**good["params"], "features": ["novelty", "magic"]}),
        with_(calibration={"novelty": []}),
        with_(calibration={**good["calibration"], "shape": [1.0, None]}),
        with_(recent=None),
        with_(alarms=[0.0] * (good["params"]["quiet"] + 1)),
        {k: v for k, v in good.items() if k != "means"},
        {**good, "since_alarm": -2},
        {**good, "since_alarm": True},
        {**good, "alarm_surprise": math.nan},
        {k: v for k, v in good.items() if k != "since_alarm"},
        {**good, "range": {**good["range"], "blocks": [[2.0, 1.0]]}},
        {**good, "range": {**good["range"], "count": 10**6}},
        {**good, "range": {**good["range"], "blocks": [[0.0, 1.0]] * 65}},
        [1, 2, 3],
    ]


def test_a_corrupt_state_raises_value_error() -> None:
    d = StreamingDetector(probation=10)
    for i, v in enumerate(series(9)[:200]):
        d.update(float(i), float(v))
    good = d.to_state()
    StreamingDetector.from_state(good)
    for bad in _corrupt_states(good):
        with pytest.raises(ValueError):
            StreamingDetector.from_state(bad)  # type: ignore[arg-type]


def test_a_corrupt_gaussian_state_raises_value_error() -> None:
    good = WindowedGaussian(window=10, step=5).to_state()
    for bad in ({}, {**good, "data": ["x"]}, {**good, "params": {"window": 0}}, {**good, "pending": [1.0] * 9}):
        with pytest.raises(ValueError):
            WindowedGaussian.from_state(bad)


def test_windowed_gaussian_is_nabs_tail_probability() -> None:
    d = WindowedGaussian(window=4, step=2)
    assert d.update(0.0, 1.0) == 0.0  # nothing learnt yet
    for t, v in enumerate([3.0, 1.0, 3.0], start=1):
        d.update(float(t), v)
    # mean 2, std 1 over the full window: a value 2 std away scores 1 - erfc(2 / sqrt 2) / 2
    assert d.peek(9.0, 4.0) == pytest.approx(1 - 0.5 * math.erfc(2 / math.sqrt(2)))
    assert d.peek(9.0, 0.0) == d.peek(9.0, 4.0)
    assert d.peek(9.0, 2.0) == pytest.approx(0.5)


def test_state_round_trip_with_every_statistic() -> None:
    x = variance_change(series(10))
    a = StreamingDetector(probation=PROBATION, features=FEATURES)
    for i, v in enumerate(x[:AT]):
        a.update(60.0 * i, float(v))
    b = StreamingDetector.from_state(json.loads(json.dumps(a.to_state())))
    rest = list(enumerate(x[AT:], start=AT))
    assert [a.update(60.0 * i, float(v)) for i, v in rest] == [b.update(60.0 * i, float(v)) for i, v in rest]
    assert a.to_state() == b.to_state()


def test_fisher_combines_tail_probabilities() -> None:
    assert fisher([2.5]) == pytest.approx(2.5)  # one probability is itself
    p1, p2 = 0.01, 0.2  # two: P(U1 U2 <= q) = q (1 - ln q)
    q = p1 * p2
    assert fisher([-math.log10(p1), -math.log10(p2)]) == pytest.approx(-math.log10(q * (1 - math.log(q))))
    assert fisher([0.0, 0.0, 0.0]) == pytest.approx(0.0)  # nothing unusual
    assert fisher([3.0, 3.0]) > fisher([3.0, 0.0]) > 0.0


def test_the_long_range_remembers_beyond_the_history_and_forgets_after_its_span() -> None:
    r = _Range(span=RANGE_BLOCKS * 10)  # blocks of 10 points
    r.add(100.0)
    for _ in range(RANGE_BLOCKS * 10 - 1):
        r.add(0.0)
    assert r.exceed(50.0) == 0.0 and r.exceed(130.0) == 30.0 and r.exceed(-5.0) == 5.0
    for _ in range(10):
        r.add(0.0)  # the block holding 100 falls out of the span
    assert r.exceed(50.0) == 50.0
    assert len(r.blocks) == RANGE_BLOCKS  # bounded memory
    assert _Range(span=100).exceed(1.0) == 0.0  # nothing seen: nothing to exceed
