"""Reversion decisions: phases and transitions, the plan request, combining per-shard plans and their digest,
approval, and progress."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from chronoshard.operator.reversion import plan
from chronoshard.operator.reversion.plan import Event, Phase, Verdict
from chronoshard.operator.spec.reversion import KeyRange, ReversionSpec, parse_reversion

DIGESTS = ["a" * 64, "b" * 64, "c" * 64]


def _answer(i: int, **counts: int) -> dict:
    return {"name": "ns.rev", "digest": DIGESTS[i], "planLsn": 100 + i, "point": {"lsn": 50 + i, "time": 1.5},
            "restore": counts.get("restore", 1), "create": counts.get("create", 0),
            "delete": counts.get("delete", 0), "bytes": counts.get("bytes", 10),
            "conflicts": counts.get("conflicts", 0), "sample": []}


def test_happy_path_transitions_and_what_cannot_happen():
    p = Phase.PLANNING
    for event, want in [(Event.PLANNED, Phase.AWAITING_APPROVAL), (Event.APPROVED, Phase.RUNNING),
                        (Event.COMPLETED, Phase.COMPLETED)]:
        p = plan.transition(p, event)
        assert p is want
    for phase in (Phase.PLANNING, Phase.AWAITING_APPROVAL, Phase.RUNNING):
        assert plan.transition(phase, Event.FAILED) is Phase.FAILED
    for phase, event in [(Phase.COMPLETED, Event.APPROVED), (Phase.FAILED, Event.PLANNED),
                         (Phase.PLANNING, Event.APPROVED), (Phase.AWAITING_APPROVAL, Event.COMPLETED),
                         (Phase.COMPLETED, Event.FAILED)]:
        with pytest.raises(ValueError, match="cannot take event"):
            plan.transition(phase, event)


def test_parse_phase():
    assert plan.parse_phase(None) is Phase.PLANNING and plan.parse_phase("") is Phase.PLANNING
    assert plan.parse_phase("Running") is Phase.RUNNING
    assert plan.parse_phase("Exploded") is None


def test_plan_request_is_the_same_for_the_same_spec_and_names_the_plan_after_the_object():
    spec = ReversionSpec(shardset="orders", point_in_time=datetime(2026, 11, 30, 10, 30, tzinfo=UTC).astimezone(),
                         tables=("b", "a"), keys=("k2", "k1"), overwrite_later_writes=True)
    body = plan.plan_request("prod", "undo", spec)
    assert body == {"name": "prod.undo", "time": "2026-11-30T10:30:00Z", "overwriteLater": True,
                    "tables": ["a", "b"], "keys": ["k1", "k2"]}
    ranged = ReversionSpec("orders", datetime(2026, 11, 30, tzinfo=UTC), key_range=KeyRange("a", "m"))
    assert plan.plan_request("prod", "r", ranged) == {"name": "prod.r", "time": "2026-11-30T00:00:00Z",
                                                      "overwriteLater": False, "range": {"start": "a", "end": "m"}}
    assert plan.selection_problem(ranged) is None
    both = ReversionSpec("orders", datetime(2026, 11, 30, tzinfo=UTC), keys=("a",), key_range=KeyRange("a", "m"))
    assert "not both" in str(plan.selection_problem(both))


def test_combine_sums_the_shards_in_shard_order_and_digests_their_digests():
    plans = [plan.shard_plan_from_json(i, _answer(i, restore=i, create=1, bytes=100 * i, conflicts=i % 2))
             for i in (2, 0, 1)]
    summary = plan.combine(plans, 3)
    assert (summary["restore"], summary["create"], summary["delete"]) == (3, 3, 0)
    assert summary["keys"] == 6 and summary["bytes"] == 300 and summary["conflicts"] == 1
    assert [r["shard"] for r in summary["perShard"]] == [0, 1, 2]
    assert summary["perShard"][1] == {"shard": 1, "name": "ns.rev", "digest": DIGESTS[1], "planLsn": 101,
                                      "pointLsn": 51, "restore": 1, "create": 1, "delete": 0, "bytes": 100,
                                      "conflicts": 1}
    want = hashlib.sha256("".join(d + "\n" for d in DIGESTS).encode()).hexdigest()
    assert plan.overall_digest(plans) == want
    # Shard order, not answer order, and any shard's plan changing changes the digest.
    changed = [*plans[:2], plan.shard_plan_from_json(1, {**_answer(1), "digest": "d" * 64})]
    assert plan.overall_digest(changed) != want
    # The status round-trips into the same plans (what a resumed Running pass checks the approval against).
    assert plan.overall_digest(plan.plans_from_status(summary)) == want


@pytest.mark.parametrize("shards", [[0, 1], [0, 1, 1], [0, 1, 3]])
def test_combine_refuses_a_missing_or_doubled_shard(shards):
    with pytest.raises(ValueError, match="one plan per shard"):
        plan.combine([plan.shard_plan_from_json(s, _answer(s % 3)) for s in shards], 3)


@pytest.mark.parametrize("bad", [{"digest": "A" * 64}, {"digest": "ab"}, {"digest": None}, {"restore": -1},
                                 {"bytes": "10"}, {"create": True}])
def test_a_plan_answer_outside_the_contract_is_refused(bad):
    with pytest.raises(ValueError):
        plan.shard_plan_from_json(0, {**_answer(0), **bad})


def test_approval():
    d = "e" * 64
    assert plan.check_approval(d, d, 5, None, None, "r").verdict is Verdict.APPROVED
    stale = plan.check_approval("f" * 64, d, 5, "auto", None, "r")
    assert stale.verdict is Verdict.REFUSED and not stale.runs
    assert "kubectl chronoshard approve r" in stale.message and d not in stale.message  # short forms only
    assert plan.check_approval(None, d, 5, "auto", None, "r").verdict is Verdict.AUTO
    assert plan.check_approval(None, d, 5, "auto", 5, "r").runs
    big = plan.check_approval(None, d, 6, "auto", 5, "r")
    assert big.verdict is Verdict.WAITING and "maxBlocks 5" in big.message
    assert plan.check_approval(None, d, 1, "confirm", None, "r").verdict is Verdict.WAITING
    assert plan.check_approval("", d, 1, None, None, "r").verdict is Verdict.WAITING


def test_progress_runs_completes_and_fails_only_once_every_shard_ended():
    running = plan.combine_progress([
        plan.shard_progress_from_json(0, {"phase": "completed", "done": 3, "skipped": 1, "conflicts": 1,
                                          "remaining": 0}),
        plan.shard_progress_from_json(1, {"phase": "running", "done": 2, "remaining": 4})], 10)
    assert running.event is None
    assert running.status["summary"] == "6/10" and running.status["remaining"] == 4
    assert [r["phase"] for r in running.status["perShard"]] == ["completed", "running"]
    unreachable = plan.combine_progress([plan.ShardProgress(0, "completed", 1),
                                         plan.ShardProgress(1, None, message="shard 1: ClientConnectorError")], 2)
    assert unreachable.event is None
    assert unreachable.status["perShard"][1] == {"shard": 1, "phase": "unknown", "done": 0, "skipped": 0,
                                                 "conflicts": 0, "remaining": 0,
                                                 "message": "shard 1: ClientConnectorError"}
    done = plan.combine_progress([plan.ShardProgress(0, "completed", 3), plan.ShardProgress(1, "completed", 2, 1)], 6)
    assert done.event is Event.COMPLETED and done.status["summary"] == "6/6"
    half = plan.combine_progress([plan.ShardProgress(0, "failed", 1), plan.ShardProgress(1, "running", 1, 0, 0, 2)], 4)
    assert half.event is None
    failed = plan.combine_progress([plan.ShardProgress(0, "failed", 1), plan.ShardProgress(1, "completed", 3)], 4)
    assert failed.event is Event.FAILED and "shard(s) [0]" in failed.message


def test_progress_answer_with_an_unknown_phase_is_refused():
    with pytest.raises(ValueError, match="phase"):
        plan.shard_progress_from_json(0, {"phase": "paused"})


def test_plan_request_of_an_incident_sends_it_to_every_shard():
    spec = parse_reversion({"shardSetRef": {"name": "o"}, "tables": ["orders"], "pointInTime": "2026-11-30T00:00:00Z",
                            "incident": {"shard": 1, "table": "orders", "id": "orders.8812"}})
    body = plan.plan_request("prod", "r", spec)
    assert body["incident"] == {"shard": 1, "table": "orders", "id": "orders.8812"}
    assert "keys" not in body and "range" not in body
    assert plan.selection_problem(spec) is None


def test_plan_request_of_a_partition_sends_it_to_every_shard_and_status_shows_the_bases():
    spec = parse_reversion({"shardSetRef": {"name": "o"}, "pointInTime": "2026-11-30T00:00:00Z", "partition": 4})
    body = plan.plan_request("prod", "r", spec)
    assert body["partition"] == 4 and "keys" not in body and "range" not in body and "incident" not in body
    assert plan.selection_problem(spec) is None
    snap = {"kind": "snapshot", "id": 9, "time": 60.0, "lsn": 40}
    woven = {"kind": "woven", "id": 3, "time": 120.0, "lsn": 77}
    plans = [plan.shard_plan_from_json(0, {**_answer(0), "base": snap}),
             plan.shard_plan_from_json(1, {**_answer(1), "base": woven}),
             plan.shard_plan_from_json(2, {**_answer(2), "base": {**woven, "id": 5}})]
    summary = plan.combine(plans, 3)
    assert summary["base"] == {**woven, "shard": 1}  # the first shard that used a woven snapshot
    assert [r["base"]["kind"] for r in summary["perShard"]] == ["snapshot", "woven", "woven"]
    assert [p.base for p in plan.plans_from_status(summary)] == [snap, woven, {**woven, "id": 5}]
    only_snapshots = plan.combine([plan.shard_plan_from_json(i, {**_answer(i), "base": snap}) for i in range(3)], 3)
    assert only_snapshots["base"] == {**snap, "shard": 0}
    assert "base" not in plan.combine([plan.shard_plan_from_json(i, _answer(i)) for i in range(3)], 3)
    with pytest.raises(ValueError, match="base"):
        plan.shard_plan_from_json(0, {**_answer(0), "base": {"kind": "guess", "lsn": 1}})
