"""The pure parts of ``chronoshard mirror``: members, what may be asked, the annotation value, when it is done."""

from datetime import UTC, datetime

import pytest
from chronoshard.shardnode.client.cli import format_table, parser
from chronoshard.shardnode.client.cli_mirror import (
    MirrorRefused,
    check_failback,
    failback_token,
    members,
    render,
    request_outcome,
    summary,
    switchover_value,
)


def mirrorset(status=None, annotations=None):
    return {"metadata": {"name": "orders", "namespace": "ns-a", "annotations": annotations or {}},
            "spec": {"sourceRef": {"name": "orders-a"},
                     "mirrors": [{"shardSetRef": {"name": "orders-b"}},
                                 {"shardSetRef": {"name": "orders-c"}, "namespace": "ns-c"}]},
            "status": status if status is not None else {"activeShardSet": "ns-a/orders-a", "term": 1}}


def test_members_are_qualified_source_first():
    assert members(mirrorset()) == ["ns-a/orders-a", "ns-a/orders-b", "ns-c/orders-c"]


def test_switchover_values_name_the_member_and_are_new_each_time():
    at = datetime(2026, 12, 7, 15, 0, 0, 123456, tzinfo=UTC)
    assert switchover_value(mirrorset(), "orders-b", at) == "ns-a/orders-b@2026-12-07T15:00:00.123456Z"
    assert switchover_value(mirrorset(), "ns-c/orders-c", at) == "ns-c/orders-c@2026-12-07T15:00:00.123456Z"
    # The member asked for last time can be asked for again: the value differs, the target is the same.
    asked = mirrorset({"activeShardSet": "ns-a/orders-a",
                       "lastSwitchoverRequest": "ns-c/orders-c@2026-12-07T15:00:00.123456Z"})
    later = datetime(2026, 12, 7, 15, 1, tzinfo=UTC)
    assert switchover_value(asked, "ns-c/orders-c", later) != asked["status"]["lastSwitchoverRequest"]


@pytest.mark.parametrize("target, status, message", [
    ("orders-c", {"activeShardSet": "ns-a/orders-a"}, "not a member"),  # orders-c is in ns-c, not ns-a
    ("ns-a/orders-a", {"activeShardSet": "ns-a/orders-a"}, "already the active ShardSet"),
    ("orders-b", {"activeShardSet": "ns-a/orders-a", "operation": {"kind": "failback", "step": "Fencing"}},
     "failback from .* is in progress"),
])
def test_switchover_refusals(target, status, message):
    with pytest.raises(MirrorRefused, match=message):
        switchover_value(mirrorset(status), target)


def test_failback_needs_another_active_and_no_operation():
    with pytest.raises(MirrorRefused, match="already active on its source"):
        check_failback(mirrorset())
    with pytest.raises(MirrorRefused, match="already active on its source"):
        check_failback(mirrorset({"phase": "Pending"}))  # no active yet: nothing to go back from
    assert check_failback(mirrorset({"activeShardSet": "ns-a/orders-b"})) == "ns-a/orders-a"
    with pytest.raises(MirrorRefused, match="in progress"):
        check_failback(mirrorset({"activeShardSet": "ns-a/orders-b", "operation": {"kind": "switchover"}}))
    assert failback_token(datetime(2026, 12, 7, 10, 0, 0, 5, UTC)) == "2026-12-07T10:00:00.000005Z"


def test_request_outcome_waits_for_the_value_no_operation_and_a_new_last_operation():
    before = {"kind": "failover", "outcome": "Succeeded", "term": 3}
    done = {"kind": "switchover", "outcome": "Aborted", "term": 3}
    asked = mirrorset({"lastSwitchoverRequest": "orders-a", "lastOperation": before})
    assert request_outcome(asked, "switchover", "orders-b", before) is None  # not taken yet
    refused = mirrorset({"lastSwitchoverRequest": "orders-b", "lastOperation": before})
    assert request_outcome(refused, "switchover", "orders-b", before)["outcome"] == "Refused"  # taken, not started
    running = mirrorset({"lastSwitchoverRequest": "orders-b", "operation": {"kind": "switchover"},
                         "lastOperation": done})
    assert request_outcome(running, "switchover", "orders-b", before) is None
    other = mirrorset({"lastSwitchoverRequest": "orders-c", "lastOperation": done})
    assert request_outcome(other, "switchover", "orders-b", before) is None
    finished = mirrorset({"lastSwitchoverRequest": "orders-b", "lastOperation": done})
    assert request_outcome(finished, "switchover", "orders-b", before) == done
    assert request_outcome(finished, "failback", "orders-b", before) is None  # failback is recorded elsewhere
    assert request_outcome(mirrorset({"lastFailbackRequest": "t1", "lastOperation": done}), "failback", "t1",
                           None) == done


def test_render_of_a_new_mirrorset_without_status():
    out = render(summary(mirrorset({})), format_table)
    assert out.startswith("MirrorSet ns-a/orders: Pending\nTerm:            -\nActive:          -")
    assert "No copies reported yet." in out and "Operation:       none in progress" in out


def test_parser_takes_namespace_and_output_after_the_command():
    args = parser("chronoshard").parse_args(["--timeout", "3", "mirror", "switchover", "orders", "--to", "b",
                                             "--wait", "--timeout", "9", "-n", "team", "-o", "json"])
    assert (args.command, args.mirror_command, args.name, args.to) == ("mirror", "switchover", "orders", "b")
    assert (args.wait, args.wait_timeout, args.timeout, args.namespace, args.output) == (True, 9.0, 3.0, "team",
                                                                                        "json")
    with pytest.raises(SystemExit):
        parser("chronoshard").parse_args(["mirror", "switchover", "orders"])  # --to is required
