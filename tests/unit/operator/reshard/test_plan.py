"""The Reshard's pure decisions (operator/reshard/plan.py) and the KeyRotation's rule (operator/reshardlookup.py):
who goes first, a move's progress and its verdicts, and the two exclusions never waiting for each other."""

from __future__ import annotations

from chronoshard.operator.reshard import plan
from chronoshard.operator.reshard.plan import Phase, StepPhase
from chronoshard.operator.reshardlookup import moving, running
from chronoshard.shardnode.keyspace.partitioning import Partition


def _reshard(name: str, created: str, phase: str | None = None, uid: str | None = None, shardset: str = "orders",
             steps: list | None = None, current: int = 0) -> dict:
    status = {"phase": phase, "currentStep": current, "steps": steps or []} if phase else {}
    return {"metadata": {"name": name, "uid": uid or name, "creationTimestamp": created},
            "spec": {"shardSetRef": {"name": shardset}}, "status": status}


def test_one_reshard_at_a_time_oldest_first_and_a_running_one_always_first():
    a = _reshard("a", "2026-12-07T10:00:00Z")
    b = _reshard("b", "2026-12-07T10:00:01Z")
    assert plan.first_in_line(a, [a, b]) is None
    assert plan.first_in_line(b, [a, b]) is a
    running = _reshard("c", "2026-12-07T10:00:05Z", "Running")
    assert plan.first_in_line(a, [a, running]) is running
    done = _reshard("d", "2026-12-07T09:00:00Z", "Completed")
    assert plan.first_in_line(a, [a, done]) is None


def test_phases_parse_and_unknown_is_none():
    assert plan.parse_phase(None) is Phase.PENDING and plan.parse_phase("RolledBack") is Phase.ROLLED_BACK
    assert plan.parse_phase("Bogus") is None
    assert plan.parse_step_phase(None) is StepPhase.PENDING and plan.parse_step_phase("x") is None


def test_move_progress_verifies_once_caught_up_and_reports_failure():
    copying = plan.move_progress({"phase": "copying", "copiedBlocks": 10, "totalBlocks": 20, "lagSeconds": 0.0})
    assert not copying.ready_to_verify and copying.fields == {"copiedBlocks": 10, "totalBlocks": 20, "lagSeconds": 0.0}
    lagging = plan.move_progress({"phase": "catching_up", "lagSeconds": 3.0, "sourceLsn": 5})
    assert not lagging.ready_to_verify and lagging.fields["sourceLsn"] == 5
    assert plan.move_progress({"phase": "catching_up", "lagSeconds": 0.2}).ready_to_verify
    failed = plan.move_progress({"phase": "failed", "error": "source gone"})
    assert failed.failed == "source gone" and not failed.ready_to_verify
    assert plan.step_phase_of({"phase": "catching_up"}) is StepPhase.CATCHING_UP
    assert plan.step_phase_of({"phase": "copying"}) is StepPhase.COPYING


def test_digests_compare_content_and_counts():
    assert plan.compare_digests({"lsn": 7, "blocks": 3, "digest": "x"}, {"blocks": 3, "digest": "x"}).matched
    bad = plan.compare_digests({"lsn": 7, "blocks": 3, "digest": "x"}, {"blocks": 2, "digest": "y"})
    assert not bad.matched and "source LSN 7" in bad.message


def test_cutover_and_ownership_from_node_reports():
    assert plan.cutover_caught_up({"sourceLsn": 10}, 10) and not plan.cutover_caught_up({"sourceLsn": 9}, 10)
    assert not plan.cutover_caught_up({}, 0)
    doc = {"epoch": 5, "partitions": [{"id": 2, "shard": 3}]}
    assert plan.owns(doc, 2, 3, 5) and not plan.owns(doc, 2, 3, 6) and not plan.owns(doc, 2, 1, 5)
    assert not plan.owns(None, 2, 3, 1)


def test_ranges_names_and_rows():
    p = Partition(4, 16, 31, 0)
    assert plan.ranges_of(p) == [["0000000000000010", "000000000000001f"]]
    assert plan.keyspace_param(p) == "0000000000000010-000000000000001f"
    assert plan.move_name("grow", 2) == "grow.2"
    status = {"steps": [{"index": 1, "phase": "Copying"}]}
    rows = plan.with_step_row(status, {"index": 0, "phase": "Completed"})
    assert [r["index"] for r in rows] == [0, 1]
    assert plan.step_row({"steps": rows}, 1) == {"index": 1, "phase": "Copying"}
    assert plan.step_row({"steps": rows}, 2) is None
    assert plan.grace_left(10, 300) == 290 and plan.grace_left(400, 300) == 0


def test_a_rotation_in_progress_holds_a_move_and_a_moving_reshard_holds_a_rewrap():
    idle = {"metadata": {"name": "k"}, "status": {"phase": "Waiting"}}
    busy = {"metadata": {"name": "k2"}, "status": {"phase": "Distributing"}}
    assert plan.rotation_in_progress([idle]) is None and plan.rotation_in_progress([idle, busy]) == "k2"
    copying = _reshard("m", "t", "Running", steps=[{"index": 0, "type": "split", "phase": "Completed"},
                                                   {"index": 1, "type": "move", "phase": "Copying"}], current=1)
    waiting = _reshard("w", "t", "Running", steps=[{"index": 0, "type": "move", "phase": "Pending"}])
    splitting = _reshard("s", "t", "Running", steps=[{"index": 0, "type": "split", "phase": "CuttingOver"}])
    assert moving([splitting], "orders") is None  # a map change moves no data
    assert moving([copying], "orders") == "m"
    assert moving([waiting], "orders") is None  # a move waiting for the rotation does not hold it: no deadlock
    assert moving([copying], "other") is None


def test_a_running_reshard_holds_a_rescale_unless_it_is_being_deleted():
    r = _reshard("m", "t", "Running")
    r["spec"]["steps"] = [{"split": {"partition": 0}}]
    assert running([r], "orders") == "m" and running([r], "other") is None
    r["status"]["currentStep"] = 1  # every step done, only purges left: no more map changes
    assert running([r], "orders") is None
    r["status"]["currentStep"] = 0
    assert running([_reshard("p", "t", "Pending")], "orders") is None
    r["metadata"]["deletionTimestamp"] = "2026-12-07T10:00:00Z"
    assert running([r], "orders") is None


def test_transitions_report_each_change_once() -> None:
    old = {"phase": "Running", "steps": [
        {"index": 0, "type": "split", "phase": "Pending"},
        {"index": 1, "type": "move", "phase": "CuttingOver"}]}
    new = {"phase": "Running", "steps": [
        {"index": 0, "type": "split", "phase": "Completed"},
        {"index": 1, "type": "move", "phase": "Cleanup", "pausedMs": 210.5}]}
    t = plan.transitions(old, new)
    assert t.steps_ended == (("split", "Completed"),)
    assert t.cutover_pauses_ms == (210.5,)
    assert t.finished is None and t.move_progress is None
    again = plan.transitions(new, new)  # the same status written twice counts nothing twice
    assert again.steps_ended == () and again.cutover_pauses_ms == () and again.finished is None


def test_transitions_see_the_end_and_the_running_move() -> None:
    moving = {"phase": "Running", "steps": [{"index": 0, "type": "move", "phase": "Copying", "copiedBlocks": 10,
                                              "totalBlocks": 40, "lagSeconds": None}]}
    assert plan.transitions({}, moving).move_progress == (10, 40, None)
    failed = {"phase": "Failed", "steps": [{"index": 0, "type": "move", "phase": "Failed"}]}
    t = plan.transitions(moving, failed)
    assert t.finished == "Failed" and t.steps_ended == (("move", "Failed"),) and t.move_progress is None
    assert plan.transitions(failed, failed).finished is None
