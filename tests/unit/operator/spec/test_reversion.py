"""Reversion spec parsing: sample, defaults, selection fields, and every invalid case."""

from datetime import UTC, datetime

import pytest
from chronoshard.operator.spec import SpecError, parse_reversion
from chronoshard.operator.spec.reversion import IncidentRef, KeyRange

from tests.support.crdcases import invalid_cases, sample

REF = {"shardSetRef": {"name": "orders"}, "pointInTime": "2026-11-30T09:00:00Z"}


def test_sample():
    spec = parse_reversion(sample("Reversion")["spec"])
    assert spec.shardset == "orders"
    assert spec.tables == ("orders",)
    assert spec.key_range == KeyRange("order-1000", "order-1999")
    assert spec.keys is None
    assert spec.point_in_time == datetime(2026, 11, 30, 9, tzinfo=UTC)
    assert (spec.overwrite_later_writes, spec.approve) == (False, None)


def test_minimal_spec_selects_everything_and_defaults():
    spec = parse_reversion(REF)
    assert (spec.tables, spec.keys, spec.key_range) == (None, None, None)
    assert spec.overwrite_later_writes is False


def test_keys_range_approve_and_offset_time():
    spec = parse_reversion({**REF, "pointInTime": "2026-11-30T10:30:00.5+01:30", "keys": ["b", "a"],
                            "range": {"start": "k", "end": "k"}, "approve": "ab" * 32,
                            "overwriteLaterWrites": True})
    assert spec.keys == ("b", "a")  # kept in the order given
    assert spec.key_range == KeyRange("k", "k")  # one key: both ends are included
    assert spec.point_in_time == datetime(2026, 11, 30, 9, 0, 0, 500000, tzinfo=UTC)
    assert spec.approve == "ab" * 32 and spec.overwrite_later_writes


@pytest.mark.parametrize(("patch", "field"), [
    ({"keys": []}, "spec.keys"),
    ({"keys": [""]}, "spec.keys[0]"),
    ({"keys": ["k" * 257]}, "spec.keys[0]"),
    ({"keys": [f"k{i}" for i in range(1001)]}, "spec.keys"),
    ({"tables": ["a", "a"]}, "spec.tables[1]"),
    ({"range": {"start": "b", "end": "a"}}, "spec.range.start"),
    ({"range": {"start": "a", "end": "b", "step": 1}}, "spec.range.step"),
    ({"pointInTime": "yesterday"}, "spec.pointInTime"),
    ({"pointInTime": None}, "spec.pointInTime"),
    ({"overwriteLaterWrites": "yes"}, "spec.overwriteLaterWrites"),
])
def test_bad_fields_are_refused_naming_the_field(patch, field):
    with pytest.raises(SpecError) as err:
        parse_reversion({**REF, **patch})
    assert err.value.field_path == field


@pytest.mark.parametrize("case", invalid_cases("Reversion"), ids=lambda c: c.id)
def test_invalid_case_is_refused_naming_the_field(case):
    with pytest.raises(SpecError) as err:
        parse_reversion(case.obj.get("spec"))
    assert case.field in str(err.value)


def test_there_are_at_least_three_invalid_cases():
    assert len(invalid_cases("Reversion")) >= 3


def test_incident_selects_the_keys_of_one_incident():
    spec = parse_reversion({**REF, "tables": ["orders"],
                            "incident": {"shard": 2, "table": "orders", "id": "orders.8812"}})
    assert spec.incident == IncidentRef(2, "orders", "orders.8812")
    assert (spec.keys, spec.key_range) == (None, None)
    assert parse_reversion(REF).incident is None


@pytest.mark.parametrize(("patch", "field"), [
    ({"keys": ["a"]}, "spec.incident"),
    ({"range": {"start": "a", "end": "b"}}, "spec.incident"),
])
def test_incident_with_keys_or_range_is_refused(patch, field):
    with pytest.raises(SpecError) as err:
        parse_reversion({**REF, **patch, "incident": {"shard": 0, "table": "t", "id": "t.1"}})
    assert err.value.field_path == field


@pytest.mark.parametrize(("incident", "field"), [
    ({"shard": -1, "table": "t", "id": "x"}, "spec.incident.shard"),
    ({"shard": 256, "table": "t", "id": "x"}, "spec.incident.shard"),
    ({"shard": "0", "table": "t", "id": "x"}, "spec.incident.shard"),
    ({"shard": 0, "table": "T", "id": "x"}, "spec.incident.table"),
    ({"shard": 0, "table": "t", "id": ""}, "spec.incident.id"),
    ({"shard": 0, "table": "t", "id": "x" * 321}, "spec.incident.id"),
    ({"shard": 0, "table": "t"}, "spec.incident.id"),
    ({"shard": 0, "table": "t", "id": "x", "lsn": 1}, "spec.incident.lsn"),
])
def test_bad_incident_fields_are_refused(incident, field):
    with pytest.raises(SpecError) as err:
        parse_reversion({**REF, "incident": incident})
    assert err.value.field_path == field


def test_partition_selects_the_keys_of_one_partition_alone():
    spec = parse_reversion({**REF, "partition": 3})
    assert spec.partition == 3 and (spec.keys, spec.key_range, spec.incident) == (None, None, None)
    assert parse_reversion(REF).partition is None


@pytest.mark.parametrize("patch", [{"keys": ["a"]}, {"range": {"start": "a", "end": "b"}},
                                   {"incident": {"shard": 0, "table": "t", "id": "t.1"}}])
def test_partition_with_keys_range_or_incident_is_refused(patch):
    with pytest.raises(SpecError) as err:
        parse_reversion({**REF, **patch, "partition": 1})
    assert err.value.field_path in ("spec.partition", "spec.incident")
    if "incident" not in patch:
        assert err.value.field_path == "spec.partition"


@pytest.mark.parametrize("bad", [-1, "1", True, 1.5, 2**31])
def test_bad_partition_is_refused(bad):
    with pytest.raises(SpecError) as err:
        parse_reversion({**REF, "partition": bad})
    assert err.value.field_path == "spec.partition"
