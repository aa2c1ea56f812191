import json

import pytest
from chronoshard.shardnode.anomaly.detector import (
    MIN_WINDOWS,
    SUSTAIN_WINDOWS,
    WindowDetector,
    fit_detector,
    load_detector,
)
from chronoshard.shardnode.anomaly.rules import RuleDetector

from tests.support.anomaly_streams import features_of, ordinary_windows

TRAIN = 600


def _attack(normal_rate: float = 2.0) -> dict[str, float]:
    ow = normal_rate
    return {"put_rate": ow, "overwrite_rate": ow, "delete_rate": 8.0, "delete_share": 8.0 / (8.0 + ow),
            "top_identity_share": 0.95, "hist_distance": 0.02}  # fmt: skip


@pytest.fixture(scope="module")
def trained() -> WindowDetector:
    return WindowDetector.fit(ordinary_windows(TRAIN, seed=1))


@pytest.mark.parametrize("model", ["isolation-forest", "zscore", "autoencoder"])
def test_normal_traffic_stays_under_the_threshold_and_a_mass_delete_goes_over(model: str) -> None:
    det = WindowDetector.fit(ordinary_windows(TRAIN, seed=1), model)
    fresh = det.score_many(ordinary_windows(1000, seed=2, start=TRAIN * 60.0))
    assert sum(s.score >= 0.8 for s in fresh) <= 2  # 0.8 is about p = 1e-4: ~0.1 expected in 1000 windows
    assert sorted(s.score for s in fresh)[500] < 0.5
    attack = det.score(features_of(_attack()))
    assert attack.score >= 0.8
    assert attack.detector == model
    assert attack.drivers[0].feature in ("delete_share", "delete_rate")
    assert sum(d.weight for d in attack.drivers) == pytest.approx(1.0)
    assert all(0 <= s.score <= 1 for s in fresh)


def test_the_threshold_means_the_same_on_a_quiet_and_a_busy_table() -> None:
    quiet = WindowDetector.fit(ordinary_windows(TRAIN, seed=3, rate=0.5))
    busy = WindowDetector.fit(ordinary_windows(TRAIN, seed=3, rate=50.0))
    q = [s.score for s in quiet.score_many(ordinary_windows(1000, seed=4, rate=0.5))]
    b = [s.score for s in busy.score_many(ordinary_windows(1000, seed=4, rate=50.0))]
    assert max(q) < 0.8 and max(b) < 0.8
    assert abs(sorted(q)[900] - sorted(b)[900]) < 0.2
    # The same absolute burst is ordinary on the busy table and alarming on the quiet one.
    burst = features_of({"put_rate": 60.0, "overwrite_rate": 60.0, "top_identity_share": 0.6})
    assert quiet.score(burst).score >= 0.8 > busy.score(burst).score


def test_decreases_are_not_anomalies(trained: WindowDetector) -> None:
    silent = features_of({})
    assert trained.score(silent).score < 0.8


def test_a_slow_drip_is_seen_over_recent_windows_not_in_one(trained: WindowDetector) -> None:
    # One distorted overwrite a minute: ordinary in any one window (training saw some), not ten windows running.
    drip = [features_of({"overwrite_rate": 2.0, "put_rate": 2.6, "distorted_rate": 1 / 60, "top_identity_share": 0.6},
                        start=i * 60.0, end=(i + 1) * 60.0) for i in range(SUSTAIN_WINDOWS)]  # fmt: skip
    alone = trained.score(drip[-1])
    with_recent = trained.score(drip[-1], drip[:-1])
    assert alone.score < 0.8 <= with_recent.score
    assert with_recent.drivers[0].feature == "distorted_rate_sustained"
    assert trained.score_many(drip)[-1] == with_recent  # consecutive windows carry their own recent history


def test_fit_is_deterministic_and_the_state_round_trips_through_json(trained: WindowDetector) -> None:
    w = features_of(_attack())
    again = WindowDetector.fit(ordinary_windows(TRAIN, seed=1))
    assert again.score(w) == trained.score(w)
    state = json.loads(json.dumps(trained.to_state()))
    restored = WindowDetector.from_state(state)
    assert restored.trained_windows == TRAIN
    for f in [w, *ordinary_windows(20, seed=9)]:
        assert restored.score(f) == trained.score(f)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda s: s["windows"][3].__setitem__(1, 99.0),
        lambda s: s.__setitem__("checksum", "0" * 64),
        lambda s: s.pop("windows"),
        lambda s: s.__setitem__("model", "svm"),
    ],
)
def test_a_corrupt_state_is_refused_and_the_rules_take_over(trained: WindowDetector, corrupt: object) -> None:
    state = json.loads(json.dumps(trained.to_state()))
    corrupt(state)  # type: ignore[operator]
    with pytest.raises(ValueError):
        WindowDetector.from_state(state)
    det, why = load_detector(state, ordinary_windows(10))
    assert isinstance(det, RuleDetector) and det.name == "rules"
    assert why is not None and "rule-based" in why


@pytest.mark.parametrize("garbage", [None, [], "x", {}, {"checksum": None}])
def test_garbage_states_are_value_errors(garbage: object) -> None:
    with pytest.raises(ValueError):
        WindowDetector.from_state(garbage)  # type: ignore[arg-type]
    assert load_detector(garbage)[1] is not None


def test_few_windows_mean_rules_and_unknown_models_are_refused() -> None:
    few = ordinary_windows(MIN_WINDOWS - 1)
    with pytest.raises(ValueError):
        WindowDetector.fit(few)
    assert isinstance(fit_detector(few), RuleDetector)
    assert isinstance(fit_detector(ordinary_windows(MIN_WINDOWS)), WindowDetector)
    with pytest.raises(ValueError, match="unknown anomaly model"):
        fit_detector(ordinary_windows(MIN_WINDOWS), "svm")
    good, why = load_detector(WindowDetector.fit(ordinary_windows(MIN_WINDOWS)).to_state())
    assert isinstance(good, WindowDetector) and why is None


def test_isolation_forest_alone_is_available_and_reported_in_the_state() -> None:
    det = WindowDetector.fit(ordinary_windows(200, seed=5), per_feature=False)
    assert WindowDetector.from_state(det.to_state()).to_state()["per_feature"] is False
    assert 0.0 <= det.score(features_of(_attack())).score <= 1.0
