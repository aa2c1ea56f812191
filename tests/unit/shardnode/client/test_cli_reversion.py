"""``restore``/``approve`` pure parts: the Reversion built from the flags, --time, and what is shown of a plan."""

from __future__ import annotations

import argparse

import pytest
from chronoshard.shardnode.client.cli import format_table, parser
from chronoshard.shardnode.client.cli_reversion import ReversionRefused, render, reversion_object, rfc3339, summary

OBJ = {
    "metadata": {"name": "undo", "namespace": "team"},
    "spec": {"shardSetRef": {"name": "orders"}, "tables": ["orders"], "keys": ["a", "b"],
             "pointInTime": "2026-11-30T09:00:00Z", "overwriteLaterWrites": False},
    "status": {"phase": "AwaitingApproval", "digest": "d" * 64, "shortDigest": "d" * 12,
               "plan": {"keys": 2, "restore": 1, "create": 0, "delete": 1, "bytes": 4, "conflicts": 0,
                        "perShard": [{"shard": 0, "restore": 1, "create": 0, "delete": 0, "bytes": 4,
                                      "conflicts": 0, "digest": "a" * 64},
                                     {"shard": 1, "restore": 0, "create": 0, "delete": 1, "bytes": 0,
                                      "conflicts": 0, "digest": "b" * 64}]},
               "conditions": [{"type": "Planned", "status": "True", "reason": "Planned", "message": "2 key(s)"}]},
}


def _args(*argv: str) -> argparse.Namespace:
    return parser("chronoshard").parse_args(list(argv))


def test_reversion_from_flags():
    args = _args("restore", "undo", "-s", "orders", "--table", "orders", "--table", "orders", "--key", "b",
                 "--key", "a", "--time", "1764493200", "--overwrite-later")
    assert reversion_object(args) == {
        "apiVersion": "chronoshard.io/v1alpha1", "kind": "Reversion", "metadata": {"name": "undo"},
        "spec": {"shardSetRef": {"name": "orders"}, "tables": ["orders"], "keys": ["b", "a"],
                 "pointInTime": "2025-11-30T09:00:00Z", "overwriteLaterWrites": True}}
    ranged = reversion_object(_args("-s", "orders", "restore", "r", "--table", "t", "--start", "a", "--end", "m",
                                    "--time", "2026-11-30T09:00:00+01:00"))
    assert ranged["spec"]["range"] == {"start": "a", "end": "m"} and "keys" not in ranged["spec"]
    assert ranged["spec"]["pointInTime"] == "2026-11-30T09:00:00+01:00"
    with pytest.raises(ReversionRefused, match="not both"):
        reversion_object(_args("restore", "r", "--table", "t", "--key", "a", "--start", "a", "--end", "b",
                               "--time", "1"))
    with pytest.raises(ReversionRefused, match="both --start and --end"):
        reversion_object(_args("restore", "r", "--table", "t", "--start", "a", "--time", "1"))


def test_time_flag():
    assert rfc3339("0") == "1970-01-01T00:00:00Z"
    with pytest.raises(argparse.ArgumentTypeError):
        rfc3339("last tuesday")


def test_plan_shown_with_digest_per_shard_and_the_next_step():
    text = render(summary(OBJ), format_table)
    assert text.startswith("Reversion team/undo: AwaitingApproval\n")
    assert "ShardSet:      orders   (tables orders, keys a, b)" in text
    assert "Plan:          2 key(s): restore 1, create 0, delete 1 (4 bytes), 0 conflict(s)" in text
    assert f"Digest:        {'d' * 64}" in text
    rows = [ln.split() for ln in text.splitlines() if ln[:1].isdigit()]
    assert rows == [["0", "1", "0", "0", "4", "0", "a" * 12], ["1", "0", "0", "1", "0", "0", "b" * 12]]
    assert "To run it: kubectl chronoshard approve undo -n team" in text
    assert "Progress" not in text
    running = {**OBJ, "status": {**OBJ["status"], "phase": "Running",
                                 "progress": {"summary": "1/2", "done": 1, "skipped": 0, "conflicts": 0,
                                              "remaining": 1}}}
    shown = render(summary(running), format_table)
    assert "Progress:      1/2 (done 1, skipped 0, conflicts 0, remaining 1)" in shown and "To run it" not in shown


def test_command_flags_after_the_command_win():
    args = _args("-n", "a", "approve", "undo", "-n", "b", "-o", "json", "--yes")
    assert (args.namespace, args.output, args.yes) == ("b", "json", True)
    assert _args("-n", "a", "approve", "undo").namespace == "a"
