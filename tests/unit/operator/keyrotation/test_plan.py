"""KeyRotation decisions: triggers, schedules with a controlled clock, per-process readiness."""

import datetime as dt

from chronoshard.operator.keyrotation import plan
from chronoshard.operator.keyrotation.plan import ProcessReport

T0 = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)


def rep(shard, role, gen=5, primary=2, versions=(1, 2), blocks=None, reachable=True):
    return ProcessReport(shard, role, reachable, gen, primary, frozenset(versions), blocks or {}, None)


def full(gen=5, primary=2, versions=(1, 2), blocks=None, shards=3):
    out = []
    for s in range(shards):
        out.append(rep(s, "node", gen, primary, versions, blocks))
        out.append(rep(s, "cache", gen, primary, versions))
    return out


def test_loaded_needs_every_node_and_cache_at_the_generation():
    assert plan.loaded(full(), 3, 2, 5).ready
    reports = full()
    reports[3] = rep(1, "cache", gen=4, versions=(1,))
    r = plan.loaded(reports, 3, 2, 5)
    assert not r.ready and r.waiting == ("shard 1 cache: has keyring generation 4, needs 5 with version 2",)


def test_missing_or_unreachable_process_blocks_and_is_named():
    reports = [r for r in full() if not (r.shard == 2 and r.role == "node")]
    reports.append(rep(2, "node", reachable=False))
    r = plan.loaded(reports, 3, 2, 5)
    assert not r.ready and "shard 2 node: unreachable" in r.message
    r2 = plan.loaded(full(shards=2), 3, 2, 5)
    assert "shard 2 node: no pod" in r2.message


def test_promoted_and_dropped():
    assert not plan.promoted(full(primary=1), 3, 2, 5).ready
    assert plan.promoted(full(primary=2), 3, 2, 5).ready
    assert not plan.dropped(full(versions=(1, 2)), 3, [1], 6).ready
    assert plan.dropped(full(gen=6, versions=(2,)), 3, [1], 6).ready


def test_old_blocks_counts_every_non_primary_version_per_shard():
    reports = full(blocks={1: 3, 2: 10, 7: 1})
    ready, counts = plan.old_blocks(reports, 3, keep=2)
    assert not ready.ready and counts == {0: 4, 1: 4, 2: 4}
    ready, counts = plan.old_blocks(full(blocks={2: 10}), 3, keep=2)
    assert ready.ready and counts == {0: 0, 1: 0, 2: 0}


def test_unreachable_shard_never_counts_as_zero_old_blocks():
    reports = full(blocks={2: 10})
    reports[0] = rep(0, "node", reachable=False)
    ready, _ = plan.old_blocks(reports, 3, keep=2)
    assert not ready.ready and "shard 0 node: unreachable" in ready.message


def test_threat_first_then_manual_then_schedule():
    spec = {"schedule": "0 * * * *", "trigger": "a", "threat": {"reason": "compromise", "compromisedVersion": 1}}
    due = plan.due_rotation(spec, {}, T0, T0)
    assert due.reason == "compromise"
    status = {"lastThreat": due.marker}
    assert plan.due_rotation(spec, status, T0, T0) == plan.Due("manual", "a")
    status["lastTrigger"] = "a"
    assert plan.due_rotation(spec, status, T0, T0) is None
    assert plan.due_rotation(spec, status, T0, T0 + dt.timedelta(minutes=59)) is None
    due = plan.due_rotation(spec, status, T0, T0 + dt.timedelta(minutes=60))
    assert due == plan.Due("scheduled", "2026-11-22T11:00:00Z")
    status["lastScheduleTime"] = due.marker
    assert plan.due_rotation(spec, status, T0, T0 + dt.timedelta(minutes=61)) is None
    assert plan.upcoming_schedule(spec, status, T0) == "2026-11-22T12:00:00Z"


def test_a_new_trigger_value_rotates_again_and_suspend_stops_manual_and_schedule():
    status = {"lastTrigger": "one"}
    assert plan.due_rotation({"trigger": "two"}, status, T0, T0).reason == "manual"
    assert plan.due_rotation({"trigger": "two", "suspend": True}, status, T0, T0) is None
    assert plan.due_rotation({"schedule": "* * * * *", "suspend": True}, {}, T0, T0 + dt.timedelta(hours=1)) is None
    assert plan.upcoming_schedule({"schedule": "* * * * *", "suspend": True}, {}, T0) is None


def test_a_new_threat_report_rotates_again():
    a = {"threat": {"reason": "compromise", "detectedAt": "2026-11-22T09:00:00Z"}}
    b = {"threat": {"reason": "compromise", "detectedAt": "2026-11-22T09:30:00Z"}}
    status = {"lastThreat": plan.threat_id(a["threat"])}
    assert plan.due_rotation(a, status, T0, T0) is None
    assert plan.due_rotation(b, status, T0, T0).reason == "compromise"


def test_invalid_schedule_never_fires():
    assert plan.due_rotation({"schedule": "not a cron"}, {}, T0, T0 + dt.timedelta(days=400)) is None
    assert not plan.valid_schedule("61 * * * *")


def test_history_is_bounded_newest_last():
    hist = []
    for i in range(5):
        entry = plan.history_entry({"startTime": "2026-11-22T10:00:00Z", "fromVersion": i, "toVersion": i + 1,
                                    "reason": "manual"}, "Completed", T0 + dt.timedelta(seconds=30), 100)
        hist = plan.append_history(hist, entry, 3)
    assert [h["fromVersion"] for h in hist] == [2, 3, 4]
    assert hist[-1]["durationSeconds"] == 30 and hist[-1]["blocksRewrapped"] == 100


def test_phases_keep_their_status_strings():
    assert [p.value for p in plan.Phase] == [
        "Pending", "Waiting", "Distributing", "AwaitingLoad", "Promoting", "AwaitingPromotion", "Rewrapping",
        "Transition", "Verifying", "Retiring", "Completed", "Failed"]
    assert plan.parse_phase(None) is plan.parse_phase("") is plan.Phase.PENDING
    assert plan.parse_phase("Rewrapping") is plan.Phase.REWRAPPING
    assert plan.parse_phase("Exploding") is None
    assert plan.IDLE_PHASES == {"Pending", "Waiting", "Completed", "Failed"}
