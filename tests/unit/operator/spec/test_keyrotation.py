"""KeyRotation spec parsing: sample, defaults, threat, and every invalid case."""

from datetime import UTC, datetime, timedelta

import pytest
from chronoshard.operator.spec import SpecError, parse_keyrotation

from tests.support.crdcases import invalid_cases, sample


def test_sample():
    spec = parse_keyrotation(sample("KeyRotation")["spec"])
    assert spec.shardset == "orders"
    assert spec.schedule == "0 3 * * 0"
    assert spec.trigger == "2026-11-22-initial"
    assert spec.threat is None
    assert spec.transition_period == timedelta(hours=24)
    assert (spec.history_limit, spec.suspend) == (10, False)


def test_threat_with_zero_transition():
    spec = parse_keyrotation({
        "shardSetRef": {"name": "orders"},
        "threat": {"reason": "compromise", "compromisedVersion": 2, "detectedAt": "2026-11-21T10:00:00Z",
                   "description": "key seen in a log"},
        "transitionPeriod": "0s",
    })
    assert spec.threat is not None
    assert spec.threat.reason == "compromise"
    assert spec.threat.compromised_version == 2
    assert spec.threat.detected_at == datetime(2026, 11, 21, 10, tzinfo=UTC)
    assert spec.transition_period == timedelta(0)
    assert (spec.schedule, spec.trigger) == (None, None)


@pytest.mark.parametrize("schedule", ["@daily", "*/15 * * * *", "0 3 * * MON-FRI", "0 0 1 1,7 ?"])
def test_schedules_of_cron_shape_are_accepted(schedule):
    assert parse_keyrotation({"shardSetRef": {"name": "a"}, "schedule": schedule}).schedule == schedule


@pytest.mark.parametrize("case", invalid_cases("KeyRotation"), ids=lambda c: c.id)
def test_invalid_case_is_refused_naming_the_field(case):
    with pytest.raises(SpecError) as err:
        parse_keyrotation(case.obj.get("spec"))
    assert case.field in str(err.value)


def test_there_are_at_least_three_invalid_cases():
    assert len(invalid_cases("KeyRotation")) >= 3
