"""MirrorSet spec parsing: sample, defaults, the mirror-is-not-its-source rule and every invalid case."""

from datetime import timedelta

import pytest
from chronoshard.operator.spec import SpecError, parse_mirrorset
from chronoshard.operator.spec.mirrorset import Health, Mirror, Prediction, Tokens

from tests.support.crdcases import invalid_cases, sample


def test_sample():
    spec = parse_mirrorset(sample("MirrorSet")["spec"])
    assert spec.source == "orders"
    assert spec.mirrors == (Mirror(shardset="orders-mirror", namespace=None, zone="zone-b"),)
    assert (spec.replication_mode, spec.max_lag) == ("sync", timedelta(seconds=30))
    assert (spec.sync_timeout, spec.hold_timeout) == (timedelta(seconds=10), timedelta(seconds=5))
    assert spec.health == Health()
    assert spec.prediction == Prediction(windows=(timedelta(minutes=5), timedelta(minutes=15), timedelta(minutes=30)),
                                         unavailability_threshold=0.7, model="gradient-boosting")
    assert (spec.failover_policy, spec.failback) == ("automatic", "manual")
    assert (spec.lease_duration, spec.switchover_timeout) == (timedelta(seconds=15), timedelta(seconds=30))
    assert spec.consistency_interval == timedelta(minutes=10)
    assert spec.tokens == Tokens(temporary_ttl=timedelta(minutes=5), provisional_ttl=timedelta(minutes=15),
                                 valid_ttl=timedelta(hours=1))


def test_same_name_in_another_namespace_is_not_the_source():
    spec = parse_mirrorset({"sourceRef": {"name": "orders"},
                            "mirrors": [{"shardSetRef": {"name": "orders"}, "namespace": "west"},
                                        {"shardSetRef": {"name": "orders"}, "namespace": "east"}]})
    assert [m.namespace for m in spec.mirrors] == ["west", "east"]


def test_defaults():
    spec = parse_mirrorset({"sourceRef": {"name": "a"}, "mirrors": [{"shardSetRef": {"name": "b"}}]})
    assert spec.prediction == Prediction()
    assert spec.tokens == Tokens()
    assert spec.failover_policy == "predictive"
    assert (spec.replication_mode, spec.max_lag) == ("async", timedelta(seconds=30))
    assert (spec.sync_timeout, spec.hold_timeout) == (timedelta(seconds=10), timedelta(seconds=5))
    assert spec.health.failure_threshold == 3
    assert (spec.failback, spec.lease_duration) == ("manual", timedelta(seconds=15))
    assert (spec.switchover_timeout, spec.consistency_interval) == (timedelta(seconds=30), timedelta(minutes=10))


@pytest.mark.parametrize(("lease", "ok"), [("3s", True), ("2999ms", False), ("1m", True), ("0s", False)])
def test_lease_duration_is_at_least_three_seconds(lease, ok):
    spec = {"sourceRef": {"name": "a"}, "mirrors": [{"shardSetRef": {"name": "b"}}],
            "failover": {"leaseDuration": lease}}
    if ok:
        assert parse_mirrorset(spec).lease_duration >= timedelta(seconds=3)
    else:
        with pytest.raises(SpecError, match="spec.failover.leaseDuration"):
            parse_mirrorset(spec)


def test_mirror_namespace_defaults_to_the_mirrorsets_own():
    spec = parse_mirrorset({"sourceRef": {"name": "a"},
                            "mirrors": [{"shardSetRef": {"name": "b"}},
                                        {"shardSetRef": {"name": "a"}, "namespace": "x"}]})
    assert [spec.mirror_namespace(m, "own") for m in spec.mirrors] == ["own", "x"]


@pytest.mark.parametrize("case", invalid_cases("MirrorSet"), ids=lambda c: c.id)
def test_invalid_case_is_refused_naming_the_field(case):
    with pytest.raises(SpecError) as err:
        parse_mirrorset(case.obj.get("spec"))
    assert case.field in str(err.value)


def test_there_are_at_least_three_invalid_cases():
    assert len(invalid_cases("MirrorSet")) >= 3
