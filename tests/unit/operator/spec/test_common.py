"""Durations, quantities and the strict field reader behind every spec parser."""

from datetime import timedelta

import pytest
from chronoshard.operator.spec.common import Fields, SpecError, parse_cpu_millis, parse_duration, parse_quantity


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0s", timedelta(0)),
        ("30s", timedelta(seconds=30)),
        ("250ms", timedelta(milliseconds=250)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5h", timedelta(minutes=90)),
        ("2m1s500ms", timedelta(minutes=2, seconds=1, milliseconds=500)),
    ],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5", "1d", "-1h", "1 h", "h", "1.h", "1h\n", "99999999999h", 30])
def test_parse_duration_refuses(text):
    with pytest.raises(SpecError) as err:
        parse_duration(text, "spec.horizon")
    assert err.value.field_path == "spec.horizon"
    assert "spec.horizon" in str(err.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1Gi", 2**30),
        ("256Mi", 256 * 2**20),
        ("1Ki", 1024),
        ("1k", 1000),
        ("1.5G", 1_500_000_000),
        ("500M", 500_000_000),
        ("1e3", 1000),
        ("100m", 1),  # 0.1 byte rounds up like Kubernetes does
        (4096, 4096),
        ("0", 0),
    ],
)
def test_parse_quantity(value, expected):
    assert parse_quantity(value) == expected


@pytest.mark.parametrize(("value", "millis"), [("250m", 250), ("2", 2000), ("0.5", 500), (1, 1000)])
def test_parse_cpu_millis(value, millis):
    assert parse_cpu_millis(value) == millis


@pytest.mark.parametrize("value", ["lots", "1GB", "-1Gi", "1 Gi", "", -5, True, 1.5, None])
def test_parse_quantity_refuses(value):
    with pytest.raises(SpecError, match="spec.storage.size"):
        parse_quantity(value, "spec.storage.size")


def test_spec_error_is_a_value_error_naming_the_field():
    err = SpecError("spec.shards", "must be greater than or equal to 1")
    assert isinstance(err, ValueError)
    assert str(err) == "spec.shards: must be greater than or equal to 1"
    assert (err.field_path, err.message) == ("spec.shards", "must be greater than or equal to 1")


def test_fields_refuses_unknown_keys_and_wrong_types():
    f = Fields({"a": 1, "b": 2}, "spec")
    assert f.integer("a") == 1
    with pytest.raises(SpecError, match=r"spec\.b: unknown field"):
        f.done()
    with pytest.raises(SpecError, match=r"spec\.a: must be an integer"):
        Fields({"a": True}, "spec").integer("a")
    with pytest.raises(SpecError, match=r"spec\.x: must be a number"):
        Fields({"x": "0.5"}, "spec").number("x")
    with pytest.raises(SpecError, match=r"spec: must be an object"):
        Fields(["not", "a", "map"], "spec")


def test_fields_treats_null_as_absent_like_the_api_server():
    # The API server prunes nulls of non-nullable fields before defaulting, so null gets the default.
    f = Fields({"a": None, "s": None}, "spec")
    assert f.integer("a", default=7) == 7
    assert f.string("s", default="x") == "x"
    f.done()


def test_fields_datetime():
    f = Fields({"t": "2026-11-21T10:00:00.5+02:00", "z": "2026-11-21t10:00:00z", "bad": "2026-11-21"}, "spec")
    assert f.date_time("t").utcoffset() == timedelta(hours=2)
    assert f.date_time("z").tzinfo is not None
    with pytest.raises(SpecError, match=r"spec\.bad"):
        f.date_time("bad")


def test_required_getters_refuse_an_absent_or_null_field():
    f = Fields({"n": 3, "s": "x", "gone": None}, "spec")
    assert f.required_integer("n", minimum=1) == 3
    assert f.required_string("s") == "x"
    with pytest.raises(SpecError, match=r"spec\.gone: Required value"):
        f.required_string("gone")
    with pytest.raises(SpecError, match=r"spec\.missing: Required value"):
        f.required_integer("missing")
    with pytest.raises(SpecError, match=r"spec\.ref: Required value"):
        f.ref("ref")
