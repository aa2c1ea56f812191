"""ShadowPolicy spec parsing: sample, defaults, retention ordering and every invalid case."""

from datetime import timedelta

import pytest
from chronoshard.operator.spec import SpecError, parse_shadowpolicy
from chronoshard.operator.spec.shadowpolicy import Anomaly, Retention

from tests.support.crdcases import invalid_cases, sample


def test_sample():
    spec = parse_shadowpolicy(sample("ShadowPolicy")["spec"])
    assert (spec.shardset, spec.tables) == ("orders", ("orders",))
    assert (spec.snapshot_interval, spec.granularity) == (timedelta(minutes=1), "differential")
    assert spec.compression == "zlib"
    assert spec.retention == Retention(hot=timedelta(hours=24), warm=timedelta(days=7), cold=timedelta(days=30))
    assert spec.anomaly == Anomaly(model="isolation-forest", threshold=0.8, severity_threshold=0.5,
                                   training_window=timedelta(hours=24))
    assert (spec.reversion_mode, spec.reversion_max_blocks) == ("confirm", 10000)


def test_defaults_shadow_every_table():
    spec = parse_shadowpolicy({"shardSetRef": {"name": "orders"}})
    assert spec.tables is None
    assert spec.retention == Retention()
    assert spec.anomaly == Anomaly()
    assert (spec.reversion_mode, spec.reversion_max_blocks) == ("confirm", None)


def test_equal_tiers_and_quoted_off_are_valid():
    spec = parse_shadowpolicy({"shardSetRef": {"name": "o"}, "retention": {"hot": "1h", "warm": "60m", "cold": "1h"},
                               "snapshot": {"interval": "1h"}, "reversion": {"mode": "off"}})
    assert spec.retention.hot == spec.retention.warm == spec.retention.cold == timedelta(hours=1)
    assert spec.reversion_mode == "off"


@pytest.mark.parametrize("case", invalid_cases("ShadowPolicy"), ids=lambda c: c.id)
def test_invalid_case_is_refused_naming_the_field(case):
    with pytest.raises(SpecError) as err:
        parse_shadowpolicy(case.obj.get("spec"))
    assert case.field in str(err.value)


def test_there_are_at_least_three_invalid_cases():
    assert len(invalid_cases("ShadowPolicy")) >= 3
