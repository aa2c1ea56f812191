"""Reshard spec parsing: the sample, defaults, each step kind, and the refusals with the field they name."""

from datetime import timedelta

import pytest
from chronoshard.operator.spec import SpecError, parse_reshard
from chronoshard.operator.spec.reshard import MergeStep, MoveStep, SplitStep, step_to_spec

from tests.support.crdcases import invalid_cases, sample

REF = {"shardSetRef": {"name": "orders"}}


def test_sample():
    spec = parse_reshard(sample("Reshard")["spec"])
    assert spec.shardset == "orders"
    assert spec.steps == (SplitStep(2), MoveStep(5, 3), MergeStep((0, 1)))
    assert (spec.grace_period, spec.cutover_timeout, spec.max_cutover_attempts) == (
        timedelta(minutes=5), timedelta(seconds=2), 3)


def test_defaults_and_split_point():
    spec = parse_reshard({**REF, "steps": [{"split": {"partition": 0, "at": "8000000000000000"}}]})
    assert spec.steps == (SplitStep(0, 2**63),)
    assert (spec.grace_period, spec.cutover_timeout, spec.max_cutover_attempts) == (
        timedelta(minutes=5), timedelta(seconds=2), 3)


@pytest.mark.parametrize("step", [{"split": {"partition": 0, "at": "8000000000000000"}}, {"split": {"partition": 4}},
                                  {"move": {"partition": 1, "toShard": 2}}, {"merge": {"partitions": [3, 1]}}])
def test_step_round_trips_through_its_spec_form(step):
    parsed = parse_reshard({**REF, "steps": [step]}).steps[0]
    assert step_to_spec(parsed) == step


@pytest.mark.parametrize(("patch", "field"), [
    ({"steps": []}, "spec.steps"),
    ({"steps": [{}]}, "spec.steps[0]"),
    ({"steps": [{"split": {"partition": 0}, "move": {"partition": 0, "toShard": 1}}]}, "spec.steps[0]"),
    ({"steps": [{"split": {"partition": 0, "at": "80"}}]}, "spec.steps[0].split.at"),
    ({"steps": [{"split": {"partition": 0, "at": "800000000000000G"}}]}, "spec.steps[0].split.at"),
    ({"steps": [{"move": {"partition": 0}}]}, "spec.steps[0].move.toShard"),
    ({"steps": [{"move": {"partition": 0, "toShard": 256}}]}, "spec.steps[0].move.toShard"),
    ({"steps": [{"merge": {"partitions": [1]}}]}, "spec.steps[0].merge.partitions"),
    ({"steps": [{"merge": {"partitions": [1, 1]}}]}, "spec.steps[0].merge.partitions"),
    ({"steps": [{"merge": {"partitions": [1, -1]}}]}, "spec.steps[0].merge.partitions[1]"),
    ({"steps": [{"split": {"partition": 0}}], "cutoverTimeout": "0s"}, "spec.cutoverTimeout"),
    ({"steps": [{"split": {"partition": 0}}], "gracePeriod": "1d"}, "spec.gracePeriod"),
    ({"steps": [{"split": {"partition": 0}}], "maxCutoverAttempts": 0}, "spec.maxCutoverAttempts"),
    ({"steps": [{"split": {"partition": 0}, "extra": 1}]}, "spec.steps[0].extra"),
])
def test_refused_naming_the_field(patch, field):
    with pytest.raises(SpecError) as err:
        parse_reshard({**REF, **patch})
    assert err.value.field_path == field


def test_steps_are_required():
    with pytest.raises(SpecError) as err:
        parse_reshard(REF)
    assert err.value.field_path == "spec.steps"


@pytest.mark.parametrize("case", invalid_cases("Reshard"), ids=lambda c: c.id)
def test_invalid_cases_are_refused(case):
    with pytest.raises(SpecError) as err:
        parse_reshard(case.obj.get("spec"))
    assert case.field in str(err.value)
