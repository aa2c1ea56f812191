import pytest
from chronoshard.shardnode.anomaly.rules import FACTOR, MIN_ENCRYPTED, MIN_MASS, MIN_NEW_IDENTITY, RuleDetector

from tests.support.anomaly_streams import features_of, ordinary_windows


def test_quiet_and_ordinary_windows_stay_under_the_threshold() -> None:
    rules = RuleDetector.fit(ordinary_windows(100))
    assert rules.score(features_of({})).score == 0.0
    assert max(rules.score(w).score for w in ordinary_windows(300, seed=7)) < 0.8


def test_a_mass_delete_fires_at_the_absolute_minimum_without_history() -> None:
    rules = RuleDetector()
    below = rules.score(features_of({"delete_rate": (MIN_MASS - 1) / 60}))
    at = rules.score(features_of({"delete_rate": MIN_MASS / 60}))
    far = rules.score(features_of({"delete_rate": 16 * MIN_MASS / 60}))
    assert below.score < 0.8 <= at.score < far.score <= 1.0
    assert far.score == pytest.approx(1.0)
    assert at.detector == "rules" and at.drivers[0].feature == "delete_rate"


def test_the_usual_rate_raises_the_limit_on_a_busy_table() -> None:
    busy = RuleDetector.fit(ordinary_windows(100, rate=20.0))  # ~1,200 overwrites a minute
    limit = busy.limits()["overwrite_rate"]
    assert limit == pytest.approx(FACTOR * busy.usual["overwrite_rate"])
    assert limit > MIN_MASS
    assert busy.score(features_of({"overwrite_rate": 0.9 * limit / 60})).score < 0.8
    assert busy.score(features_of({"overwrite_rate": 1.1 * limit / 60})).score >= 0.8


def test_encryption_and_new_identity_rules() -> None:
    rules = RuleDetector()
    assert rules.score(features_of({"encrypted_rate": MIN_ENCRYPTED / 60})).score >= 0.8
    assert rules.score(features_of({"encrypted_rate": 1 / 60})).score < 0.8
    assert rules.score(features_of({"new_identity_rate": MIN_NEW_IDENTITY / 60})).score >= 0.8
    assert rules.score(features_of({"new_identity_rate": 2 / 60})).score < 0.8


def test_drivers_are_the_rules_that_moved_and_sum_to_one() -> None:
    s = RuleDetector().score(features_of({"delete_rate": 400 / 60, "encrypted_rate": 2 / 60}))
    assert [d.feature for d in s.drivers] == ["delete_rate", "encrypted_rate"]
    assert sum(d.weight for d in s.drivers) == pytest.approx(1.0)
    assert s.drivers[0].weight > s.drivers[1].weight
