"""The Calibrator: it improves the Brier score of skewed probabilities, keeps order, and survives JSON."""

from __future__ import annotations

import json

import numpy as np
from chronoshard.shardnode.forecasting.calibration import Calibrator, pool_adjacent_violators


def skewed(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Over-confident forecasts: the truth is p**2 where the model says p."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, n)
    return p, rng.uniform(0, 1, n) < p**2


def brier(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((p - y.astype(float)) ** 2))


def test_isotonic_improves_brier_on_held_out_data() -> None:
    p, y = skewed(2000, 1)
    cal = Calibrator()
    cal.fit(p.tolist(), y.tolist())
    assert cal.method == "isotonic"
    q, z = skewed(2000, 2)
    after = np.array([cal.apply(x) for x in q])
    assert brier(after, z) < brier(q, z) - 0.01
    # three in four of the forecasts it calls 0.75 come true, within sampling error
    band = (after > 0.65) & (after < 0.85)
    assert abs(z[band].mean() - after[band].mean()) < 0.08


def test_platt_with_few_pairs_improves_brier() -> None:
    p, y = skewed(40, 3)
    cal = Calibrator()
    cal.fit(p.tolist(), y.tolist())
    assert cal.method == "platt"
    q, z = skewed(4000, 4)
    after = np.array([cal.apply(x) for x in q])
    assert brier(after, z) < brier(q, z)


def test_calibration_keeps_the_order() -> None:
    p, y = skewed(500, 5)
    cal = Calibrator()
    cal.fit(p.tolist(), y.tolist())
    out = [cal.apply(x) for x in np.linspace(0, 1, 101)]
    assert all(b >= a for a, b in zip(out, out[1:], strict=False))
    assert 0.0 <= out[0] and out[-1] <= 1.0


def test_identity_until_fitted_and_one_outcome_only() -> None:
    assert Calibrator().apply(0.3) == 0.3
    cal = Calibrator()
    cal.fit([0.9, 0.8, 0.95], [False, False, False])
    assert cal.apply(0.9) < 0.3  # never came true: high forecasts are pulled down


def test_json_round_trip() -> None:
    for n in (40, 500):
        p, y = skewed(n, 6)
        cal = Calibrator()
        cal.fit(p.tolist(), y.tolist())
        back = Calibrator.from_json(json.loads(json.dumps(cal.to_json())))
        assert back.method == cal.method
        for x in (0.0, 0.1, 0.5, 0.77, 1.0):
            assert back.apply(x) == cal.apply(x)


def test_pool_adjacent_violators() -> None:
    out = pool_adjacent_violators(np.array([1.0, 3, 2, 4, 0]), np.ones(5))
    assert out.tolist() == [1.0, 2.25, 2.25, 2.25, 2.25]  # (3, 2) pool to 2.5, (4, 0) to 2, then all four


def test_platt_on_separable_pairs_stays_finite() -> None:
    # every forecast above 0.3 came true, every one below did not: the slope would run off to infinity unchecked
    p = [0.01, 0.05, 0.1, 0.2, 0.4, 0.6, 0.9, 0.99] * 5
    cal = Calibrator()
    cal.fit(p, [x > 0.3 for x in p])
    assert cal.method == "platt"
    out = [cal.apply(x) for x in (0.0, 0.05, 0.5, 0.99, 1.0)]
    assert all(0.0 <= v <= 1.0 for v in out)
    assert out[1] < 0.2 and out[3] > 0.8
