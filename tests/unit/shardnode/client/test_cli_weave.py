"""``chronoshard weave``'s pure parts: woven snapshot references, times, and the what-if and status rendering."""

import pytest
from chronoshard.shardnode.client.cli import format_table, parser
from chronoshard.shardnode.client.cli_weave import render_status, render_whatif, woven_rows
from chronoshard.shardnode.client.transport import Endpoint
from chronoshard.shardnode.client.weave import parse_ref, unix_time, weaver_endpoint

PLAN = {"metadata": {"name": "growth", "namespace": "shop"}, "spec": {"shardSetRef": {"name": "orders"},
                                                                      "mode": "split"},
        "status": {"phase": "Weaving", "lastForecastTime": "2026-12-07T12:00:00Z",
                   "partitions": [{"id": 2, "shard": 1, "bytes": 3 * 2**20, "loadRps": 12.5, "growthBytesPerHour": 2048,
                                   "forecast": {"probability": 0.83, "predictedTime": "2026-12-07T18:00:00Z",
                                                "reason": "size", "model": "linear"}}],
                   "weaves": [{"id": "w-2-1", "partition": 2, "shard": 1, "splitKey": "a3f0000000000000",
                               "confidence": 0.83, "snapshots": 3, "bytes": 5000}],
                   "whatIf": [{"partition": 2, "splitKey": "a3f0000000000000",
                               "placement": {"lowerHalfShard": 1, "upperHalfShard": 0},
                               "shards": [{"shard": 0, "bytesBefore": 0, "bytesAfter": 2**20, "loadBefore": 1.0,
                                           "loadAfter": 7.0},
                                          {"shard": 1, "bytesBefore": 2 * 2**20, "bytesAfter": 2**20,
                                           "loadBefore": 12.0, "loadAfter": 6.0}],
                               "bytesToMove": 2**20, "expectedCutoverPauseMs": 400.0,
                               "forecast": {"probability": 0.83, "predictedTime": "2026-12-07T18:00:00Z",
                                            "sizeAtWindowEnd": {"low": 2**20, "point": 4 * 2**20, "high": 8 * 2**20}}}],
                   "conditions": [{"type": "Ready", "status": "True", "reason": "WeaversReporting", "message": "ok"}]}}


def test_refs_times_and_the_weaver_port():
    assert parse_ref("1:17") == (1, 17)
    for bad in ("17", "a:1", "1:", ":2"):
        with pytest.raises(ValueError):
            parse_ref(bad)
    assert unix_time("1765108800") == 1765108800.0 and unix_time("2025-12-07T12:00:00Z") == 1765108800.0
    with pytest.raises(ValueError):
        unix_time("yesterday")
    ep = weaver_endpoint(Endpoint.parse("https://10.0.0.7:7401"))
    assert ep.hostport == "10.0.0.7:7404"


def test_whatif_and_status_read_like_the_report():
    text = render_whatif(PLAN, format_table)
    assert "Partition 2 split at a3f0000000000000: probability 0.83 by 2026-12-07T18:00:00Z" in text
    assert "(80%: 1.0 MiB .. 8.0 MiB)" in text
    assert "upper half on shard 0; 1.0 MiB to move, expected cutover pause 400.0 ms" in text
    status = render_status(PLAN, format_table)
    assert "WeavePlan shop/growth: Weaving" in status and "w-2-1" in status and "0.83" in status
    empty = {**PLAN, "status": {}}
    assert "no predicted split" in render_whatif(empty, format_table)


def test_ls_rows_and_the_parser():
    rows = woven_rows([{"ref": "0:3", "weave": "w", "partition": 2, "half": "upper", "range": ["a", "b"],
                        "pointTime": 1.5, "lsn": 9, "kind": "full", "rows": 4, "bytes": 100, "confidence": 0.9}])
    assert rows == [["0:3", "w", 2, "upper", "a,b", 1.5, 9, "full", 4, "100 B", "0.90"]]
    args = parser().parse_args(["weave", "ls", "growth", "--partition", "2", "--at", "2026-12-07T12:00:00Z",
                                "-n", "team"])
    assert (args.command, args.weave_command, args.plan, args.partition, args.namespace) == (
        "weave", "ls", "growth", 2, "team")
    args = parser().parse_args(["weave", "state", "0:3", "--plan", "growth", "--values"])
    assert (args.ref, args.plan_name, args.values) == ("0:3", "growth", True)
