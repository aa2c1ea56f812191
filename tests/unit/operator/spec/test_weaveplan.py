"""WeavePlan spec parsing: sample, defaults and every invalid case."""

from datetime import timedelta

import pytest
from chronoshard.operator.spec import SpecError, parse_weaveplan

from tests.support.crdcases import invalid_cases, sample


def test_sample():
    spec = parse_weaveplan(sample("WeavePlan")["spec"])
    assert spec.shardset == "orders"
    assert (spec.prediction_window, spec.confidence_threshold) == (timedelta(hours=24), 0.75)
    assert (spec.split_size_threshold_bytes, spec.split_load_threshold) == (512 * 2**20, 1000)
    assert spec.min_partition_size_bytes == 64 * 2**20
    assert (spec.interval, spec.mode, spec.model) == (timedelta(hours=1), "weave", "auto")
    assert (spec.sustained_for, spec.placement) == (timedelta(minutes=10), "leastLoaded")
    assert spec.sample_interval == timedelta(seconds=60)
    assert (spec.max_snapshots, spec.max_age) == (10, timedelta(days=7))


def test_defaults():
    spec = parse_weaveplan({"shardSetRef": {"name": "orders"}})
    assert spec.min_partition_size_bytes is None
    assert (spec.mode, spec.interval, spec.prediction_window) == ("weave", timedelta(hours=1), timedelta(hours=24))
    assert (spec.model, spec.placement, spec.sustained_for) == ("auto", "leastLoaded", timedelta(minutes=10))
    assert spec.sample_interval == timedelta(seconds=60)


def test_stay_placement_and_a_sample_interval_equal_to_the_interval():
    spec = parse_weaveplan({"shardSetRef": {"name": "o"}, "interval": "5m", "sampleInterval": "5m",
                            "split": {"placement": "stay", "sustainedFor": "30s"}, "model": "arima"})
    assert (spec.placement, spec.sustained_for, spec.sample_interval) == ("stay", timedelta(seconds=30),
                                                                          timedelta(minutes=5))
    assert spec.model == "arima"


@pytest.mark.parametrize("case", invalid_cases("WeavePlan"), ids=lambda c: c.id)
def test_invalid_case_is_refused_naming_the_field(case):
    with pytest.raises(SpecError) as err:
        parse_weaveplan(case.obj.get("spec"))
    assert case.field in str(err.value)


def test_there_are_at_least_three_invalid_cases():
    assert len(invalid_cases("WeavePlan")) >= 3
