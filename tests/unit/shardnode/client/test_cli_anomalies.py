"""``chronoshard whatif`` and ``chronoshard anomalies show`` against real HTTP servers, one per shard, each refusing
keys its shard does not own (421), as in test_cli_history.py.

The servers are tests/support/shadowstub.py, extended to issue #15's contract (``/v1/anomalies``, an incident's
keys, ``/whatif``): the shadow's own anomaly routes are built at the same time as this client, so the stub is
what these tests run against. Its what-if score is a stand-in rule (the share of the batch that overwrites or
deletes, alarm at 0.8), enough to check how the client splits, merges and exits.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from chronoshard.shardnode.client import anomalies as client_anomalies
from chronoshard.shardnode.client.cli import EXIT_USAGE, main
from chronoshard.shardnode.client.cli_anomalies import incident_rows
from chronoshard.shardnode.keyspace.partitioning import initial_map

from tests.support.servers import serve
from tests.support.shadowstub import StubShadow

M2 = initial_map(2)
T0 = 1764489600.0
EVIL = "system:serviceaccount:shop:evil"


def run_cli(*argv: str, stdin: bytes = b"") -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out, stdin=io.BytesIO(stdin), bout=io.BytesIO())
    return code, out.getvalue()


def _keys_on(shard: int, n: int) -> list[str]:
    return [k for k in (f"k{i}" for i in range(200)) if M2.shard_of("t", k) == shard][:n]


def _stubs() -> list[StubShadow]:
    stubs = []
    for shard in (0, 1):
        stub = StubShadow(shard=shard, partition_map=M2.to_dict())
        stub.owns = lambda table, key, shard=shard: M2.shard_of(table, key) == shard
        stubs.append(stub)
    return stubs


def test_parse_batch_takes_base64_or_text_and_refuses_the_rest():
    changes = client_anomalies.parse_batch({"changes": [{"op": "put", "key": "a", "text": "hé"},
                                                        {"op": "put", "key": "b", "value": "AAE="},
                                                        {"op": "delete", "key": "c"}]})
    assert changes == [{"op": "put", "key": "a", "value": base64.b64encode("hé".encode()).decode()},
                       {"op": "put", "key": "b", "value": "AAE="}, {"op": "delete", "key": "c"}]
    for bad in ({}, {"changes": []}, {"changes": [{"op": "put", "key": "a"}]},
                {"changes": [{"op": "put", "key": "a", "text": "x", "value": "eA=="}]},
                {"changes": [{"op": "put", "key": "a", "value": "not base64!"}]},
                {"changes": [{"op": "move", "key": "a"}]}, {"changes": [{"op": "delete", "key": ""}]},
                {"changes": [{"op": "delete", "key": "k"}] * 10_001}):
        with pytest.raises(client_anomalies.BatchError):
            client_anomalies.parse_batch(bad)


def test_merge_sums_counts_and_takes_the_worst_shard():
    a = {"counts": {"create": 1, "overwrite": 2, "delete": 0, "unchanged": 1}, "bytes": 10, "score": 0.4,
         "severity": 0.1, "wouldAlarm": False, "threshold": 0.8, "detector": "d", "drivers": [{"feature": "x"}]}
    b = {"counts": {"create": 0, "overwrite": 0, "delete": 5, "unchanged": 0}, "bytes": 0, "score": 0.9,
         "severity": 0.7, "wouldAlarm": True, "threshold": 0.8, "detector": "d", "drivers": [{"feature": "y"}]}
    doc = client_anomalies.merge({0: a, 1: b}, {0: 4, 1: 5})
    assert doc["counts"] == {"create": 1, "overwrite": 2, "delete": 5, "unchanged": 1}
    assert (doc["bytes"], doc["score"], doc["severity"], doc["wouldAlarm"]) == (10, 0.9, 0.7, True)
    assert doc["drivers"] == [{"feature": "y"}]
    assert [(r["shard"], r["changes"]) for r in doc["perShard"]] == [(0, 4), (1, 5)]


async def test_whatif_is_split_by_owner_merged_and_exits_1_when_it_would_alarm(tmp_path: Path):
    stubs = _stubs()
    (a, a2), (b, c) = _keys_on(0, 2), _keys_on(1, 2)
    stubs[0].write("t", a, b"old", T0)
    stubs[1].write("t", b, b"bee", T0)
    stubs[1].write("t", c, b"same", T0)
    mixed = {"changes": [{"op": "put", "key": a, "text": "new"}, {"op": "put", "key": a2, "text": "fresh"},
                         {"op": "delete", "key": b}, {"op": "put", "key": c, "text": "same"}]}
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps(mixed))
    async with AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(serve(s.app())) for s in stubs]
        base = ("--shadow-endpoints", ",".join(urls))

        def work() -> None:
            code, out = run_cli(*base, "whatif", "t", "--file", str(batch))
            assert code == 0, out
            assert "create 1, overwrite 1, delete 1, unchanged 1 (12 bytes)" in out
            assert "Score:    0.50, severity 0.10 (threshold 0.80): would not alarm" in out
            code, out = run_cli(*base, "-o", "json", "whatif", "t", "--file", "-",
                                stdin=json.dumps({"changes": [{"op": "delete", "key": b},
                                                              {"op": "put", "key": a, "text": "x"}]}).encode())
            doc = json.loads(out)
            assert code == 1 and doc["wouldAlarm"] is True and doc["score"] == 1.0
            assert [(r["shard"], r["changes"]) for r in doc["perShard"]] == [(0, 1), (1, 1)]

        await asyncio.to_thread(work)
    # Each shard's shadow got only the keys it owns, and nothing was written.
    posts = [(i, p) for i, s in enumerate(stubs) for m, p in s.requests if m == "POST"]
    assert posts and all(p == "/v1/tables/t/whatif" for _, p in posts)
    assert [len(v) for s in stubs for v in s.versions.values()] == [1, 1, 1]


async def test_a_whatif_routed_by_a_stale_map_is_refused_not_answered(tmp_path: Path):
    stubs = _stubs()
    (b,) = _keys_on(1, 1)
    stale = tmp_path / "stale.json"
    stale.write_text(initial_map(1).to_json())
    async with AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(serve(s.app())) for s in stubs]

        def work() -> None:
            code, _ = run_cli("--map-file", str(stale), "--shadow-endpoints", ",".join(urls), "whatif", "t",
                              "--file", "-", stdin=json.dumps({"changes": [{"op": "delete", "key": b}]}).encode())
            assert code not in (0, EXIT_USAGE)

        await asyncio.to_thread(work)
    assert sum(1 for m, _ in stubs[0].requests if m == "POST") == 2  # the try and the one retry, both refused


async def test_anomalies_show_lists_the_incidents_keys_from_its_shard():
    stubs = _stubs()
    keys = _keys_on(0, 3)
    for k in keys:
        stubs[0].write("t", k, b"good", T0 - 60)
        stubs[0].write("t", k, b"\xff" * 9, T0 + 1, EVIL)
    stubs[0].write("t", "unrelated", b"x", T0 + 2, "someone-else")
    stubs[0].add_incident("t", "t.1", T0, T0 + 5, EVIL)
    async with AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(serve(s.app())) for s in stubs]
        base = ("--shadow-endpoints", ",".join(urls))

        def work() -> None:
            code, out = run_cli(*base, "anomalies", "show", "t.1", "--shard", "0", "--table", "t")
            assert code == 0, out
            lines = out.splitlines()
            assert lines[0].split() == ["KEY", "FIRST-LSN", "LAST-LSN", "BEFORE-LSN", "BYTES"]
            assert [ln.split()[0] for ln in lines[1:]] == sorted(keys)
            code, out = run_cli(*base, "-o", "json", "anomalies", "show", "t.1", "--shard", "0", "--table", "t",
                                "--limit", "2")
            doc = json.loads(out)
            assert code == 0 and [k["bytes"] for k in doc["keys"]] == [9, 9]
            assert run_cli(*base, "anomalies", "show", "t.1", "--table", "t")[0] == EXIT_USAGE
            assert run_cli(*base, "anomalies", "list", "x")[0] == EXIT_USAGE
            assert run_cli(*base, "whatif", "t", "--file", "-", stdin=b"{}")[0] == EXIT_USAGE

        await asyncio.to_thread(work)
    assert not any("/anomalies/" in p for _, p in stubs[1].requests)


def test_incident_rows_filter_by_shardset_and_table_newest_first():
    def policy(name: str, shardset: str, *rows: dict) -> dict:
        return {"metadata": {"name": name}, "spec": {"shardSetRef": {"name": shardset}},
                "status": {"anomalies": list(rows)}}

    policies = [policy("p", "orders", {"id": "1", "table": "a", "detectedTime": "2026-11-30T09:00:00Z"},
                       {"id": "2", "table": "b", "detectedTime": "2026-11-30T10:00:00Z"}),
                policy("q", "other", {"id": "3", "table": "a", "detectedTime": "2026-11-30T11:00:00Z"})]
    assert [r["id"] for r in incident_rows(policies, None, None)] == ["3", "2", "1"]
    assert [r["id"] for r in incident_rows(policies, "orders", None)] == ["2", "1"]
    assert [(r["policy"], r["id"]) for r in incident_rows(policies, None, "a")] == [("q", "3"), ("p", "1")]
