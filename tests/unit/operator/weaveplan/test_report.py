"""The WeavePlan's status, conditions and events (pure)."""

from chronoshard.operator.conditions import get_condition
from chronoshard.operator.spec.weaveplan import parse_weaveplan
from chronoshard.operator.weaveplan.report import (
    Observation,
    build_status,
    keep_silent_shards,
    split_rows,
    transitions,
)
from chronoshard.operator.weaveplan.splits import Skip, SplitDecision
from chronoshard.operator.weaveplan.status import WeaverReport, aggregate
from chronoshard.operator.weaveselect import WeaveSelection

BODY = {"metadata": {"name": "growth", "namespace": "shop", "generation": 2}, "status": {}}
NOW = "2026-12-07T12:00:00Z"


def spec(**over):
    return parse_weaveplan({"shardSetRef": {"name": "orders"}, **over})


def obs(s=None, **over):
    s = s or spec()
    base = {"shardset": "orders", "spec": s, "shardset_found": True, "selection": WeaveSelection("growth", s),
            "config_applied": True, "shadow_policy": "hist", "expected": 1}
    return Observation(**{**base, **over})


def report(p=0.9, weaves=True):
    body = {"partitions": [{"id": 0, "bytes": 10, "forecast": {"probability": p, "predictedTime": NOW}}],
            "weaves": [{"id": "w-0-1", "partition": 0, "splitKey": "4000000000000000", "confidence": p,
                        "predictedTime": NOW, "windowSeconds": 3600, "snapshots": 1}] if weaves else [],
            "lastForecastTime": NOW, "shadow": True}
    return aggregate([WeaverReport(0, body)])


def cond(status, type_):
    c = get_condition(status["conditions"], type_)
    return (c["status"], c["reason"]) if c else None


def test_weaving_plan_reports_rows_and_conditions():
    status = build_status(BODY, obs(), report(), [{"partition": 0}], SplitDecision(), [], NOW)
    assert status["phase"] == "Weaving" and status["weaveCount"] == 1 and status["observedGeneration"] == 2
    assert status["whatIf"] == [{"partition": 0}] and status["lastForecastTime"] == NOW
    assert cond(status, "Ready") == ("True", "WeaversReporting")
    assert cond(status, "Forecasting") == ("True", "Forecasting")
    assert cond(status, "Weaving") == ("True", "Weaving")
    assert cond(status, "Splitting") == ("False", "ModeNotSplit")


def test_recent_weaver_errors_are_shown_a_config_error_is_not_ready():
    body = {"partitions": [], "weaves": [], "shadow": True, "errors": ["21:00 sample: node refused"]}
    status = build_status(BODY, obs(), aggregate([WeaverReport(0, body)]), [], SplitDecision(), [], NOW)
    ready = get_condition(status["conditions"], "Ready")
    assert ready["status"] == "True" and "node refused" in ready["message"]
    broken = aggregate([WeaverReport(0, {**body, "configError": "bad JSON"})])
    assert cond(build_status(BODY, obs(), broken, [], SplitDecision(), [], NOW), "Ready") == ("False", "WeaverErrors")


def test_without_a_shadow_policy_the_plan_forecasts_only():
    status = build_status(BODY, obs(shadow_policy=None), report(weaves=False), [], SplitDecision(), [], NOW)
    assert status["phase"] == "Forecasting"
    assert cond(status, "Weaving") == ("False", "ShadowPolicyRequired")


def test_mode_forecast_and_nothing_predicted():
    s = spec(mode="forecast")
    assert cond(build_status(BODY, obs(s), report(weaves=False), [], SplitDecision(), [], NOW),
                "Weaving") == ("False", "ModeForecast")
    idle = build_status(BODY, obs(), report(p=0.1, weaves=False), [], SplitDecision(), [], NOW)
    assert idle["phase"] == "Idle" and cond(idle, "Weaving") == ("False", "NoSplitPredicted")


def test_pending_and_failed_cases():
    assert build_status(BODY, Observation(spec_error="spec.mode: bad"), report(), [], SplitDecision(), [],
                        NOW)["phase"] == "Failed"
    for over, reason in (({"shardset_found": False}, "ShardSetMissing"),
                         ({"selection": WeaveSelection("older", spec())}, "AnotherPlanInForce"),
                         ({"config_applied": False}, "ConfigPending")):
        status = build_status(BODY, obs(**over), report(), [], SplitDecision(), [], NOW)
        assert status["phase"] == "Pending" and cond(status, "Ready") == ("False", reason)
        assert "partitions" not in status
    silent = aggregate([WeaverReport(0, error="no pod")])
    status = build_status(BODY, obs(), silent, [], SplitDecision(), [], NOW)
    assert status["phase"] == "Pending" and cond(status, "Ready") == ("False", "WeaversNotReporting")
    assert cond(status, "Forecasting") == ("False", "NoForecastYet")


def test_splitting_conditions():
    s = spec(mode="split")
    running = [{"partition": 0, "reshard": "growth-0-4", "phase": "Running"}]
    status = build_status(BODY, obs(s), report(), [], SplitDecision(), running, NOW)
    assert status["phase"] == "Splitting" and cond(status, "Splitting") == ("True", "SplitRunning")
    waiting = build_status(BODY, obs(s), report(), [], SplitDecision(waiting_for="manual"), [], NOW)
    assert cond(waiting, "Splitting") == ("False", "ReshardRunning")
    skipped = build_status(BODY, obs(s), report(), [], SplitDecision(skips=[Skip(0, "NotDue", "later")]), [], NOW)
    assert cond(skipped, "Splitting") == ("False", "NotDue")


def test_split_rows_record_the_created_reshard_and_follow_its_phase():
    create = {"name": "growth-0-4", "partition": 0, "splitKey": "4000000000000000", "spec": {}}
    rows = split_rows([], SplitDecision(create=create), True, NOW, [])
    assert rows == [{"partition": 0, "reshard": "growth-0-4", "splitKey": "4000000000000000", "time": NOW,
                     "phase": "Pending"}]
    assert split_rows(rows, SplitDecision(create=create), False, NOW, [
        {"metadata": {"name": "growth-0-4"}, "status": {"phase": "Completed"}}])[0]["phase"] == "Completed"
    assert split_rows([], SplitDecision(create=create), False, NOW, []) == []  # creation failed: nothing


def test_silent_shards_keep_their_rows():
    old = {"partitions": [{"id": 5, "shard": 1, "forecast": {"probability": 0.5}}],
           "weaves": [{"id": "w-5", "partition": 5, "shard": 1}], "lastForecastTime": "2026-01-01T00:00:00Z"}
    agg = keep_silent_shards(report(), old, {1})
    assert [p["id"] for p in agg.partitions] == [0, 5] and {w["id"] for w in agg.weaves} == {"w-0-1", "w-5"}
    gone = keep_silent_shards(report(), old, set())  # shard 1 no longer asked (scaled down): nothing kept
    assert [p["id"] for p in gone.partitions] == [0] and [w["id"] for w in gone.weaves] == ["w-0-1"]


def test_events_for_forecast_woven_dropped_scheduled_and_started():
    s = spec(mode="split")
    new = build_status(BODY, obs(s), report(), [], SplitDecision(), [], NOW)
    old = {"partitions": [], "weaves": [{"id": "w-old", "partition": 3}]}
    create = {"name": "growth-0-4", "partition": 0, "splitKey": "4000000000000000",
              "spec": {"steps": [{"split": {}}, {"move": {"partition": 2, "toShard": 1}}]}}
    reasons = [e[1] for e in transitions(old, new, s, SplitDecision(create=create), True)]
    assert reasons == ["Forecast", "Woven", "SplitScheduled", "WeaveDropped", "SplitStarted"]
    assert transitions(new, new, s, SplitDecision(), False) == []  # nothing changed: no events
