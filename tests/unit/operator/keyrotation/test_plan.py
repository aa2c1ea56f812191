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


def with_shadows(reports, shards=(0, 1, 2), **kw):
    return list(reports) + [rep(s, "shadow", **kw) for s in shards]


def test_a_pod_without_a_shadow_is_not_waited_for_one():
    # No shadow report: the pod runs none (the probe asks only pods whose spec has the container).
    assert plan.loaded(full(), 3, 2, 5).ready
    assert plan.old_blocks(full(blocks={2: 4}), 3, keep=2)[0].ready


def test_shadows_are_waited_for_at_load_promotion_and_drop():
    reports = with_shadows(full(), shards=(0, 1))
    reports[-1] = rep(1, "shadow", gen=4, versions=(1,))
    r = plan.loaded(reports, 3, 2, 5)
    assert not r.ready and r.waiting == ("shard 1 shadow: has keyring generation 4, needs 5 with version 2",)
    assert plan.loaded(with_shadows(full()), 3, 2, 5).ready
    stale = with_shadows(full(), shards=(0,), primary=1)
    assert plan.promoted(stale, 3, 2, 5).waiting == ("shard 0 shadow: primary is still version 1",)
    holding = with_shadows(full(versions=(2,)), shards=(2,), versions=(1, 2))
    assert plan.dropped(holding, 3, [1], 5).waiting == ("shard 2 shadow: still holds version(s) [1]",)


def test_an_unreachable_shadow_blocks_every_step():
    reports = full(versions=(2,), blocks={2: 5}) + [rep(0, "shadow", reachable=False)]
    for readiness in (plan.loaded(reports, 3, 2, 5), plan.dropped(reports, 3, [1], 5),
                      plan.old_blocks(reports, 3, keep=2)[0]):
        assert not readiness.ready and "shard 0 shadow: unreachable" in readiness.message


def test_a_version_the_history_still_needs_is_not_retired():
    # Every node is done, but shard 1's shadow still holds 7 history versions under version 1.
    reports = full(blocks={2: 10}) + [rep(0, "shadow", blocks={2: 3}), rep(1, "shadow", blocks={1: 7, 2: 3})]
    ready, counts = plan.old_blocks(reports, 3, keep=2)
    assert not ready.ready
    assert ready.waiting == ("shard 1 shadow: 7 history version(s) still on an old key version",)
    assert counts == {0: 0, 1: 0, 2: 0}  # the node counts, as before
    assert plan.old_data(reports, 2, "shadow") == {0: 0, 1: 7}
    done = full(blocks={2: 10}) + [rep(0, "shadow", blocks={2: 3}), rep(1, "shadow", blocks={2: 10})]
    assert plan.old_blocks(done, 3, keep=2)[0].ready


def test_old_history_and_old_blocks_are_both_named():
    reports = full(blocks={1: 2, 2: 1}, shards=1) + [rep(0, "shadow", blocks={1: 9})]
    ready, _ = plan.old_blocks(reports, 1, keep=2)
    assert ready.waiting == ("shard 0 node: 2 block(s) still on an old key version",
                             "shard 0 shadow: 9 history version(s) still on an old key version")


def test_weavers_are_waited_for_like_shadows_where_the_pod_runs_one():
    # Shard 1 runs a weaver (a WeavePlan) whose keyring is stale: it holds up the load, promotion and drop.
    reports = full() + [rep(1, "weaver", gen=4, versions=(1,), primary=1)]
    assert plan.loaded(reports, 3, 2, 5).waiting == (
        "shard 1 weaver: has keyring generation 4, needs 5 with version 2",)
    assert plan.promoted(reports, 3, 2, 5).waiting == ("shard 1 weaver: primary is still version 1",)
    holding = full(versions=(2,)) + [rep(1, "weaver", versions=(1, 2))]
    assert plan.dropped(holding, 3, [1], 5).waiting == ("shard 1 weaver: still holds version(s) [1]",)
    assert plan.loaded(full() + [rep(1, "weaver")], 3, 2, 5).ready
    unreachable = full() + [rep(0, "weaver", reachable=False)]
    assert "shard 0 weaver: unreachable" in plan.loaded(unreachable, 3, 2, 5).message


def test_a_version_a_woven_snapshot_still_needs_is_not_retired():
    reports = full(blocks={2: 10}) + [rep(0, "shadow", blocks={2: 3}), rep(0, "weaver", blocks={1: 4, 2: 1})]
    ready, counts = plan.old_blocks(reports, 3, keep=2)
    assert ready.waiting == ("shard 0 weaver: 4 woven row(s) still on an old key version",)
    assert counts == {0: 0, 1: 0, 2: 0}
    assert plan.old_data(reports, 2, "weaver") == {0: 4}
    done = full(blocks={2: 10}) + [rep(0, "weaver", blocks={2: 5})]
    assert plan.old_blocks(done, 3, keep=2)[0].ready
