"""`POST /v1/ranges:purge` and `GET /v1/ranges/stats` on a real node process (docs/resharding.md): stats of a range
(blocks, bytes, the median keyspace id); a purge refuses any range the node owns under the map in force (or a map
older than asked), deletes every block of an unowned one in batches with change-log rows of origin `purge`, and is
resumable (a second purge finds nothing left)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap, format_id, initial_map, keyspace_id

from tests.integration.shardnode.procs import Proc, http, http_json, node
from tests.support.kubelet_dir import write_keyring

BASE = initial_map(2)
P0, P1 = BASE.partitions
ALL_ON_0 = PartitionMap(1, 2, (P0, Partition(P1.id, P1.start, P1.end, 0)))  # the mounted map: shard 0 owns all
MOVED = PartitionMap(2, 2, (P0, P1))  # partition 1 moved to shard 1


def rng(p: Partition) -> list[str]:
    return [format_id(p.start), format_id(p.end)]


@pytest.fixture
def source(tmp_path: Path):
    ring = tmp_path / "keyring"
    write_keyring(ring, 1, {1: ("primary", os.urandom(32))})
    (tmp_path / "map.json").write_text(ALL_ON_0.to_json())
    n = node(tmp_path, ring)
    n.argv += ["--partition-map", str(tmp_path / "map.json"), "--shard-index", "0"]
    n.start()
    try:
        yield n
    finally:
        n.stop()


def stats(n: Proc, *parts: Partition) -> dict:
    q = ",".join(f"{format_id(p.start)}-{format_id(p.end)}" for p in parts)
    status, body = http_json("GET", f"{n.url}/v1/ranges/stats?keyspace={q}")
    assert status == 200, body
    return body


def purge(n: Proc, ranges: list[list[str]], epoch: int) -> tuple[int, dict]:
    return http_json("POST", n.url + "/v1/ranges:purge", {"ranges": ranges, "epoch": epoch})


def test_stats_purge_refusals_and_purge(source):
    n = source
    values = {f"k{i}": os.urandom(10 + i % 7) for i in range(1200)}
    for k, v in values.items():
        assert http("PUT", f"{n.url}/v1/tables/t/blocks/{k}", v)[0] == 200
    in1 = sorted(keyspace_id("t", k) for k in values if P1.contains(keyspace_id("t", k)))
    assert len(in1) > 500  # more than one purge batch

    body = stats(n, P1)
    assert body["blocks"] == len(in1)
    assert body["bytes"] == sum(len(v) for k, v in values.items() if P1.contains(keyspace_id("t", k)))
    assert body["medianKeyspaceId"] == format_id(in1[(len(in1) - 1) // 2])
    everything = sorted(keyspace_id("t", k) for k in values)
    assert stats(n, P0, P1)["medianKeyspaceId"] == format_id(everything[(len(everything) - 1) // 2])
    empty = Partition(9, P1.end, P1.end, 0)
    assert stats(n, empty) == {"blocks": 0, "bytes": 0, "medianKeyspaceId": None}
    assert http_json("GET", f"{n.url}/v1/ranges/stats?keyspace=zz")[0] == 400

    # Owned under the map in force: refused, nothing deleted.
    status, body = purge(n, [rng(P1)], 1)
    assert status == 409 and body["error"] == "owned"
    assert http("PUT", n.url + "/v1/partitions", MOVED.to_json().encode())[0] == 200
    status, body = purge(n, [rng(P1)], 3)  # the node has not seen epoch 3 yet
    assert status == 409 and body["error"] == "epoch_behind"
    status, body = purge(n, [rng(P0), rng(P1)], 2)  # partition 0 is still ours
    assert status == 409 and body["owned"] == [rng(P0)]
    assert stats(n, P1)["blocks"] == len(in1)

    last = http_json("GET", n.url + "/v1/status")[1]["lastLsn"]
    status, body = purge(n, [rng(P1)], 2)
    assert (status, body) == (200, {"purgedBlocks": len(in1)})
    assert stats(n, P1)["blocks"] == 0
    assert stats(n, P0)["blocks"] == len(values) - len(in1)
    logged: list[dict] = []
    while page := http_json("GET", f"{n.url}/v1/changes?after={last}&limit=1000")[1]["changes"]:
        logged += page
        last = page[-1]["lsn"]
    assert len(logged) == len(in1)
    assert all(c["op"] == "delete" and c["origin"] == "purge" for c in logged)
    assert sorted(keyspace_id("t", c["key"]) for c in logged) == in1
    assert purge(n, [rng(P1)], 2) == (200, {"purgedBlocks": 0})  # resumable: nothing left the second time
    k0 = next(k for k in values if P0.contains(keyspace_id("t", k)))
    assert http("GET", f"{n.url}/v1/tables/t/blocks/{k0}")[1] == values[k0]


def test_purge_validation(source):
    n = source
    for doc in ({"ranges": [rng(P1)]}, {"ranges": [rng(P1)], "epoch": -1}, {"ranges": [], "epoch": 1},
                {"ranges": [rng(P1)], "epoch": 1, "more": True}):
        status, body = http_json("POST", n.url + "/v1/ranges:purge", doc)
        assert status == 400, (doc, body)
    assert json.loads(http("GET", n.url + "/v1/ranges/stats")[1])["error"] == "invalid_parameter"
