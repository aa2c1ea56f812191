"""The per-shard rows a KeyRotation's status shows, with and without a shadow in the pod; how soon a pass follows
another, and what its probe long-polls for."""

import pytest
from chronoshard.operator.keyrotation.controller import (
    MIN_PASS_SECONDS,
    POLL_SECONDS,
    Rotation,
    Step,
    _hand_off,
    _record_shards,
    _report_wait,
)
from chronoshard.operator.keyrotation.plan import Phase, ProcessReport
from chronoshard.operator.keyrotation.probe import ReportWait


def rep(shard, role, blocks=None, reachable=True):
    return ProcessReport(shard, role, reachable, 5, 2, frozenset({1, 2}), blocks or {}, "refused" if not reachable
                         else None)


def test_rows_count_node_blocks_and_shadow_history_on_old_versions():
    st = Step({"initialOldBlocks": {"0": 10}})
    _record_shards(st, [rep(0, "node", {1: 4, 2: 6}), rep(0, "cache"), rep(0, "shadow", {1: 9, 2: 1}),
                        rep(1, "node", {2: 3}), rep(1, "cache")], 2, 2)
    assert st.status["shards"] == [
        {"shard": 0, "oldVersionBlocks": 4, "remaining": 4, "rewrapped": 6, "loadedGeneration": 5,
         "oldHistoryVersions": 9},
        {"shard": 1, "oldVersionBlocks": 0, "remaining": 0, "rewrapped": 0, "loadedGeneration": 5},
    ]


def test_an_unreachable_shadow_is_named():
    st = Step({})
    _record_shards(st, [rep(0, "node", {2: 1}), rep(0, "shadow", reachable=False)], 1, 2)
    assert st.status["shards"][0]["message"] == "shadow unreachable: refused"


def test_an_idle_rotation_looks_again_soon_only_under_the_test_clock(monkeypatch, tmp_path):
    from chronoshard.operator.keyrotation.controller import CLOCK_OFFSET_ENV, IDLE_SECONDS, _rest

    monkeypatch.delenv(CLOCK_OFFSET_ENV, raising=False)
    assert _rest(Step({}), 1).delay == IDLE_SECONDS == 30.0
    offset = tmp_path / "offset"
    offset.write_text("0")
    monkeypatch.setenv(CLOCK_OFFSET_ENV, str(offset))
    # A test's jump of the clock wakes nothing, so the idle loop must come back within seconds to see it.
    assert _rest(Step({}), 1).delay == 2.0


def _rotation(phase: str, **status):
    st = Step({"phase": phase, **status})
    return Rotation({}, None, st, 1, {}, None, 3, 2, 1)  # type: ignore[arg-type]


def test_waiting_phases_long_poll_for_what_they_wait_for():
    for phase in (Phase.AWAITING_LOAD, Phase.AWAITING_PROMOTION, Phase.RETIRING):
        assert _report_wait(phase, _rotation(phase.value, targetGeneration=7)) == ReportWait(generation=7)
        assert _report_wait(phase, _rotation(phase.value)) is None  # nothing known to wait for
    assert _report_wait(Phase.REWRAPPING, _rotation("Rewrapping")) == ReportWait(rewrap=True)
    for phase in (Phase.TRANSITION, Phase.VERIFYING, Phase.PROMOTING):
        assert _report_wait(phase, _rotation(phase.value, targetGeneration=7)) is None
    assert ReportWait(generation=7, rewrap=True, seconds=4).query() == {
        "waitSeconds": "4", "waitGeneration": "7", "waitRewrap": "true"}


def test_hand_off_is_immediate_after_a_phase_change_or_a_long_poll_that_waited():
    moved = Step({"phase": "AwaitingLoad"})
    moved.phase(Phase.PROMOTING, "loaded")
    assert _hand_off(moved, Phase.AWAITING_LOAD, 0.3).delay == 0.0
    stayed = Step({"phase": "AwaitingLoad"})
    assert _hand_off(stayed, Phase.AWAITING_LOAD, 4.0).delay == MIN_PASS_SECONDS  # the long-poll was the wait
    answered_at_once = Step({"phase": "AwaitingLoad"})
    assert _hand_off(answered_at_once, Phase.AWAITING_LOAD, 0.01).delay == pytest.approx(POLL_SECONDS - 0.01)
    transition = Step({"phase": "Transition"})
    transition.delay = 30.0  # a phase's own delay (the rest of the transition period) is kept
    assert _hand_off(transition, Phase.TRANSITION, 0.01).delay == 30.0


async def test_phases_that_need_no_new_report_follow_in_the_same_pass():
    from datetime import timedelta

    from chronoshard.operator.keyrotation.controller import _PROBED_PHASES, _run_phases
    from chronoshard.operator.spec.keyrotation import KeyRotationSpec

    promoted = [ProcessReport(0, role, True, 5, 2, frozenset({1, 2}), {2: 40} if role == "node" else {}, None)
                for role in ("node", "cache")]
    st = Step({"phase": "AwaitingPromotion", "toVersion": 2, "fromVersion": 1, "targetGeneration": 5})
    r = Rotation({"metadata": {"namespace": "ns"}}, KeyRotationSpec("s", transition_period=timedelta(0)), st, 1,
                 {}, None, 1, 2, 1, reports=promoted, target=5)  # type: ignore[arg-type]
    out = await _run_phases(r, Phase.AWAITING_PROMOTION, _PROBED_PHASES[Phase.AWAITING_PROMOTION])
    # promoted everywhere, no old block, no transition period: on to Retiring, which waits for a probe of its own
    assert out.status["phase"] == "Retiring"
    assert [reason for _, reason, _ in out.events] == ["Rewrapping", "Transition", "Verifying", "Retiring"]
    # a phase that must wait for the processes first is not run ahead
    st2 = Step({"phase": "AwaitingLoad", "toVersion": 2, "fromVersion": 1, "targetGeneration": 9})
    r2 = Rotation({"metadata": {"namespace": "ns"}}, KeyRotationSpec("s"), st2, 1, {}, None, 1, 2, 1,
                  reports=promoted, target=9)  # type: ignore[arg-type]
    out2 = await _run_phases(r2, Phase.AWAITING_LOAD, _PROBED_PHASES[Phase.AWAITING_LOAD])
    assert out2.status["phase"] == "AwaitingLoad" and out2.events == []
