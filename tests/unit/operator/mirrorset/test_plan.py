"""Role documents, failover target choice, operation decisions, lost writes, digests, requests."""

from __future__ import annotations

import datetime as dt

from chronoshard.operator.mirrorset import plan
from chronoshard.operator.mirrorset.plan import Address, Candidate, Member, Settings

A = Member("ns-a", "orders-a", "zone-a")
B = Member("ns-b", "orders-b", "zone-b")
C = Member("ns-a", "orders-c", "zone-a")
S = Settings(mode="sync", max_lag=5, sync_timeout=10, hold_timeout=5, lease_duration=15, health_sample=2)


def test_steady_state_documents_primary_lists_mirror_slots_and_mirrors_follow_it():
    addresses = {(A.key, 0): Address("https://10.0.0.5:7400", "orders-a-0.orders-a-headless.ns-a.svc")}
    docs = plan.role_documents(4, A, [A, B], 1, addresses, S, sync_ok=[0])
    assert docs[(A.key, 0)] == {
        "term": 4, "role": "primary", "mode": "sync", "mirrors": ["mirror.ns-b.orders-b"], "maxLagSeconds": 5,
        "syncTimeoutSeconds": 10, "holdTimeoutSeconds": 5,
        "lease": {"namespace": "ns-a", "name": "orders-a-0-primary", "durationSeconds": 15},
        "lsnFloor": 0, "healthSampleSeconds": 2}
    assert docs[(B.key, 0)] == {
        "term": 4, "role": "mirror", "mode": "sync",
        "source": {"url": "https://10.0.0.5:7400", "serverName": "orders-a-0.orders-a-headless.ns-a.svc",
                   "shardSet": "ns-a/orders-a"},
        "consumer": "mirror.ns-b.orders-b", "divergeLsn": None, "healthSampleSeconds": 2}


def test_sync_without_a_healthy_mirror_runs_that_primary_async_and_a_source_without_address_gets_no_mirrors():
    addresses = {(A.key, 1): Address("http://10.0.0.6:7400")}
    docs = plan.role_documents(2, A, [A, B], 2, addresses, S, sync_ok=[1], diverge={1: 40})
    assert docs[(A.key, 0)]["mode"] == "async" and docs[(A.key, 1)]["mode"] == "sync"
    assert (B.key, 0) not in docs and docs[(B.key, 1)]["divergeLsn"] == 40


def test_target_is_the_highest_applied_healthy_copy_then_another_zone():
    assert plan.choose_target([Candidate(B, True, 90), Candidate(C, True, 100)], "zone-a") == C
    assert plan.choose_target([Candidate(C, True, 100), Candidate(B, True, 100)], "zone-a") == B
    assert plan.choose_target([Candidate(C, False, 200), Candidate(B, True, 100)], "zone-a") == B
    assert plan.choose_target([Candidate(C, False, 200)], "zone-a") is None
    assert plan.choose_target([Candidate(C, True, 5), Candidate(B, True, 5)], None) == C  # first listed


def test_behind_names_the_shards_below_their_token():
    assert plan.behind({"0": 10, "1": 20}, {0: 10, 1: 19}) == [1]
    assert plan.behind({"0": 10}, {0: None}) == [0]
    assert plan.behind({}, {0: 1}) == []


def test_timed_out_after_switchover_timeout():
    op = plan.new_operation("switchover", 3, A, B, "r", "2026-12-07T12:00:00Z")
    t0 = dt.datetime(2026, 12, 7, 12, 0, 0, tzinfo=dt.UTC)
    assert not plan.timed_out(op, t0 + dt.timedelta(seconds=30), 30)
    assert plan.timed_out(op, t0 + dt.timedelta(seconds=31), 30)
    assert op["step"] == "Fencing" and op["from"] == "ns-a/orders-a" and op["to"] == "ns-b/orders-b"


def test_lsn_floor_is_the_token_else_the_last_reported_lsn():
    op = {"tokens": {"0": 50}}
    assert plan.lsn_floor(0, op, {0: 10}) == 50
    assert plan.lsn_floor(1, op, {1: 77}) == 77


def test_lost_writes_cover_the_old_primarys_changes_past_promotion_and_are_confirmed_by_discarded_lsns():
    assert plan.lost_write(0, A.key, 100, 100, 2, "t") is None
    entry = plan.lost_write(0, A.key, 100, 104, 2, "t")
    assert entry == {"shard": 0, "shardSet": A.key, "fromLSN": 101, "toLSN": 104, "count": 4, "confirmed": False,
                     "term": 2, "time": "t"}
    confirmed = plan.confirm_lost_writes([entry], {(A.key, 0): [101, 103, 104]})
    assert (confirmed[0]["confirmed"], confirmed[0]["count"]) == (True, 3)
    assert plan.confirm_lost_writes([entry], {})[0]["confirmed"] is False


def test_differing_buckets_from_two_digest_answers():
    a = {"atLsn": 9, "root": "r1", "buckets": {"00": "x", "0a": "y"}}
    b = {"digest": {"root": "r2", "buckets": {"00": "x", "0a": "z", "ff": "w"}}, "lsn": 9}
    assert plan.differing_buckets(a, b) == ["0a", "ff"]
    assert plan.differing_buckets(a, {**a}) == []
    assert plan.differing_buckets(a, {"error": "lsn_passed"}) is None
    assert (plan.digest_lsn(a), plan.digest_lsn(b), plan.digest_lsn({})) == (9, 9, None)


def test_annotations_are_handled_once_per_value():
    members = [A, B]
    ann = {"chronoshard.io/switchover-to": "ns-b/orders-b"}
    assert plan.requested_target(ann, {}, members, A) == ("switchover", "ns-b/orders-b", B, None)
    assert plan.requested_target(ann, {"lastSwitchoverRequest": "ns-b/orders-b"}, members, A) is None
    kind, _, target, error = plan.requested_target({"chronoshard.io/switchover-to": "nope"}, {}, members, A)
    assert (kind, target) == ("switchover", None) and "not a member" in error
    # a bare name is looked up in the source's namespace
    assert plan.requested_target({"chronoshard.io/switchover-to": "orders-c"}, {}, [A, C], A)[2] == C
    assert plan.requested_target({"chronoshard.io/failback": "1"}, {"lastFailbackRequest": "0"}, members, A) == (
        "failback", "1", A, None)
    # "@<anything>" after the target makes a new request for the same member
    again = {"chronoshard.io/switchover-to": "ns-b/orders-b@2026-12-07T15:00:00Z"}
    assert plan.requested_target(again, {"lastSwitchoverRequest": "ns-b/orders-b"}, members, A) == (
        "switchover", "ns-b/orders-b@2026-12-07T15:00:00Z", B, None)
    assert "'nope' is not a member" in plan.requested_target(
        {"chronoshard.io/switchover-to": "nope@1"}, {}, members, A)[3]


def test_automatic_failback_after_three_good_passes_only_when_configured():
    assert not plan.failback_ready(2, "automatic", B, A)
    assert plan.failback_ready(3, "automatic", B, A)
    assert not plan.failback_ready(9, "manual", B, A)
    assert not plan.failback_ready(9, "automatic", A, A)


def test_needs_put_only_when_the_report_differs():
    mirror = plan.mirror_document(3, B, A, Address("http://10.0.0.5:7400"), S, None)
    report = {"term": 3, "role": "mirror", "mode": "sync", "source": {"url": "http://10.0.0.5:7400"}}
    assert not plan.needs_put(mirror, report)
    assert plan.needs_put(mirror, {**report, "source": {"url": "http://10.0.0.9:7400"}})  # the pod moved
    assert plan.needs_put(mirror, {**report, "term": 2})
    assert plan.needs_put(mirror, None)
    primary = plan.primary_document(3, A, 0, [B], S, sync=True)
    # A primary lists only the slots that exist: a mirror not registered yet is no difference.
    assert not plan.needs_put(primary, {"term": 3, "role": "primary", "mode": "sync", "mirrors": []})
    assert plan.needs_put(primary, {"term": 3, "role": "primary", "mode": "async",
                                    "mirrors": [{"consumer": "mirror.ns-b.orders-b"}]})
    assert plan.needs_put(primary, {"term": 3, "role": "fenced"})
