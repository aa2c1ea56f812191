"""The ShadowPolicy's status from an observation (build_status and transitions are pure)."""

from chronoshard.operator.shadowpolicy.controller import Observation, build_status, transitions
from chronoshard.operator.shadowpolicy.status import ShardSample
from chronoshard.operator.shadowselect import ShadowSelection
from chronoshard.operator.spec.shadowpolicy import parse_shadowpolicy

NOW = "2026-12-02T10:00:00Z"
BODY = {"metadata": {"name": "orders-shadow", "namespace": "shop", "generation": 3}, "spec": {}}
SPEC = parse_shadowpolicy({"shardSetRef": {"name": "orders"}})


def conditions(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def in_force(**kw):
    return Observation(shardset="orders", spec=SPEC, shardset_obj={"spec": {"shards": 2}},
                       selection=ShadowSelection("orders-shadow", SPEC), config_applied=True, expected=2, **kw)


def sample(shard, lag_s=0.1, state="running"):
    return ShardSample(shard, {"capture": {"state": state, "lagLsn": 1, "lagSeconds": lag_s},
                               "tiers": {"hot": {"versions": 3, "bytes": 10, "rawBytes": 30}},
                               "oldestRestorableTime": "2026-12-02T09:00:00Z"})


def test_missing_shardset():
    status = build_status(BODY, Observation(shardset="orders", spec=SPEC), [], NOW)
    assert status["phase"] == "Waiting" and status["observedGeneration"] == 3
    assert conditions(status) == {"ShardSetMissing": ("True", "ShardSetNotFound"),
                                  "Ready": ("False", "ShardSetMissing")}
    assert "orders" in status["conditions"][0]["message"]


def test_invalid_spec():
    status = build_status(BODY, Observation(shardset="orders", spec_error="spec.compression.codec: bad"), [], NOW)
    assert status["phase"] == "Invalid"
    assert conditions(status)["Ready"] == ("False", "InvalidSpec")


def test_another_policy_in_force():
    obs = Observation(shardset="orders", spec=SPEC, shardset_obj={"spec": {"shards": 2}},
                      selection=ShadowSelection("older", SPEC))
    status = build_status(BODY, obs, [], NOW)
    assert status["phase"] == "Conflict"
    assert conditions(status)["Ready"] == ("False", "AnotherPolicyInForce")
    assert conditions(status)["ShardSetMissing"] == ("False", "ShardSetFound")


def test_config_pending():
    obs = in_force()
    obs.config_applied = False
    status = build_status(BODY, obs, [], NOW)
    assert (status["phase"], conditions(status)["Ready"]) == ("Waiting", ("False", "ConfigPending"))
    assert "shards" not in status


def test_every_shard_reports():
    status = build_status(BODY, in_force(), [sample(0), sample(1)], NOW)
    assert status["phase"] == "Active"
    assert conditions(status) == {"ShardSetMissing": ("False", "ShardSetFound"),
                                  "CaptureBehind": ("False", "CaptureCurrent"),
                                  "Ready": ("True", "ShardsReporting")}
    assert (status["reporting"], status["captureLagSeconds"], status["compressionRatio"]) == ("2/2", 0.1, 3.0)


def test_rolling_pods_are_pending_then_degraded():
    none = build_status(BODY, in_force(), [ShardSample(0, error="rolling"), ShardSample(1, error="rolling")], NOW)
    assert (none["phase"], conditions(none)["Ready"]) == ("Pending", ("False", "ShardsNotReporting"))
    some = build_status(BODY, in_force(), [sample(0), ShardSample(1, error="HTTP 503")], NOW)
    assert some["phase"] == "Degraded" and "shard 1: HTTP 503" in some["conditions"][-1]["message"]


def test_capture_behind_degrades_but_stays_ready():
    status = build_status(BODY, in_force(), [sample(0, lag_s=120.0), sample(1, state="behind")], NOW)
    assert status["phase"] == "Degraded"
    assert conditions(status)["CaptureBehind"] == ("True", "CaptureBehind")
    assert conditions(status)["Ready"] == ("True", "ShardsReporting")


def test_missing_cold_storage_secret():
    spec = parse_shadowpolicy({"shardSetRef": {"name": "orders"}, "coldStorage": {
        "endpoint": "http://s3:8333", "bucket": "backups", "credentialsSecret": {"name": "creds"}}})
    obs = in_force(cold_secret_missing=True)
    obs.spec = spec
    status = build_status(BODY, obs, [sample(0), sample(1)], NOW)
    assert (status["phase"], conditions(status)["Ready"]) == ("Degraded", ("False", "ColdStorageSecretMissing"))
    assert "Secret creds" in next(c["message"] for c in status["conditions"] if c["type"] == "Ready")


def test_transitions_post_ready_and_capture_events_once():
    before = build_status(BODY, in_force(), [sample(0), sample(1)], NOW)
    late = build_status({**BODY, "status": before}, in_force(), [sample(0, lag_s=500.0), sample(1)], NOW)
    assert [e[:2] for e in transitions(before, late)] == [("Warning", "CaptureBehind")]
    again = build_status({**BODY, "status": late}, in_force(), [sample(0, lag_s=600.0), sample(1)], NOW)
    assert transitions(late, again) == []
    caught_up = build_status({**BODY, "status": again}, in_force(), [sample(0), sample(1)], NOW)
    assert [e[:2] for e in transitions(again, caught_up)] == [("Normal", "CaptureCaughtUp")]
    assert [e[:2] for e in transitions({}, before)] == [("Normal", "ShardsReporting")]
