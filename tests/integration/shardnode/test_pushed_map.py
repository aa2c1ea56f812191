"""`PUT /v1/partitions` on real node and cache processes (docs/resharding.md): a higher epoch is taken and, on the
node, survives kill -9; the same map again is a no-op; a lower epoch or the same epoch with other content is 409;
the map in force is the higher-epoch one of the mounted file and the pushed map; the cache keeps it in memory."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap, initial_map, keyspace_id

from tests.integration.shardnode.procs import Proc, cache, http, http_json, node
from tests.support.kubelet_dir import write_keyring
from tests.support.waiting import wait_for

BASE = initial_map(2)  # epoch 1: partition 0 on shard 0, partition 1 on shard 1


def moved(epoch: int, shard_of_1: int, shards: int = 2) -> PartitionMap:
    """BASE with partition 1 on ``shard_of_1`` under ``epoch``."""
    p0, p1 = BASE.partitions
    return PartitionMap(epoch, shards, (p0, Partition(p1.id, p1.start, p1.end, shard_of_1)))


def key_in(partition: int, pmap: PartitionMap = BASE) -> str:
    return next(k for k in (f"k{i}" for i in range(1000)) if pmap.owner_of(keyspace_id("t", k)).id == partition)


def put_map(url: str, pmap: PartitionMap) -> tuple[int, dict]:
    status, body = http("PUT", url + "/v1/partitions", pmap.to_json().encode())
    return status, json.loads(body)


def epoch_gauge(url: str) -> float:
    text = http("GET", url + "/metrics")[1].decode()
    return float(re.search(r"^chronoshard_partition_map_epoch (\S+)$", text, re.M).group(1))


@pytest.fixture
def keyring(tmp_path: Path) -> Path:
    ring = tmp_path / "keyring"
    write_keyring(ring, 1, {1: ("primary", os.urandom(32))})
    return ring


def mapped_node(tmp_path: Path, keyring: Path, shard: int = 0) -> Proc:
    (tmp_path / "map.json").write_text(BASE.to_json())
    n = node(tmp_path, keyring)
    n.argv += ["--partition-map", str(tmp_path / "map.json"), "--shard-index", str(shard)]
    return n


def test_node_takes_a_higher_epoch_keeps_it_across_a_crash_and_refuses_older_or_conflicting(tmp_path, keyring):
    n = mapped_node(tmp_path, keyring).start()
    try:
        theirs = key_in(1)
        assert http("PUT", f"{n.url}/v1/tables/t/blocks/{theirs}", b"v")[0] == 421

        status, body = put_map(n.url, moved(2, 0))
        assert (status, body) == (200, {"epoch": 2, "outcome": "accepted"})
        assert http_json("GET", n.url + "/v1/partitions")[1]["epoch"] == 2
        assert epoch_gauge(n.url) == 2
        assert http("PUT", f"{n.url}/v1/tables/t/blocks/{theirs}", b"v")[0] == 200  # partition 1 is ours now

        assert put_map(n.url, moved(2, 0)) == (200, {"epoch": 2, "outcome": "same"})
        status, body = put_map(n.url, moved(2, 1))  # epoch 2 with other content
        assert status == 409 and body["error"] == "epoch_conflict" and body["epoch"] == 2
        status, body = put_map(n.url, moved(1, 0))  # lower than the map in force
        assert status == 409 and body["error"] == "epoch_conflict"
        status, body = http_json("PUT", n.url + "/v1/partitions", {"epoch": 3})
        assert status == 400 and body["error"] == "invalid_body"
        assert http_json("GET", n.url + "/v1/partitions")[1] == moved(2, 0).to_dict() | {"loadError": None}

        n.kill()  # persisted before the answer: the restarted node never falls back to the mounted epoch 1
        n.start()
        assert http_json("GET", n.url + "/v1/partitions")[1]["epoch"] == 2
        assert epoch_gauge(n.url) == 2
        assert http("PUT", f"{n.url}/v1/tables/t/blocks/{theirs}", b"w")[0] == 200

        # The operator writes the ConfigMap after its pushes: a higher file epoch is in force, a lower one is not.
        (tmp_path / "map.json").write_text(moved(3, 1).to_json())
        def file_epoch() -> bool:
            return http_json("GET", n.url + "/v1/partitions")[1]["epoch"] == 3

        wait_for(file_epoch, what="the mounted epoch 3 to be in force")
        assert http("PUT", f"{n.url}/v1/tables/t/blocks/{theirs}", b"y")[0] == 421
        assert put_map(n.url, moved(2, 0))[0] == 409  # the file's epoch 3 is in force
    finally:
        n.stop()


def test_cache_takes_a_pushed_map_in_memory(tmp_path, keyring):
    n = mapped_node(tmp_path, keyring).start()
    c = cache(tmp_path, keyring, n.url, "--partition-map", str(tmp_path / "map.json"), "--shard-index", "0",
              env={**os.environ, "CHRONOSHARD_PEER_URLS": "http://127.0.0.1:9,http://127.0.0.1:9"}).start()
    try:
        theirs = key_in(1)
        # Routed by epoch 1 to the wrong shard: refused with the owner (a routed request is never forwarded).
        status, body = http_json_routed(c.url, theirs, 1)
        assert status == 421 and body["owner"] == 1
        assert put_map(n.url, moved(2, 0))[0] == 200
        assert put_map(c.url, moved(2, 0)) == (200, {"epoch": 2, "outcome": "accepted"})
        assert epoch_gauge(c.url) == 2
        status, _ = http_json_routed(c.url, theirs, 2)
        assert status == 200  # the cache and its node both own partition 1 under epoch 2
        assert put_map(c.url, moved(1, 0))[0] == 409
        assert put_map(c.url, moved(2, 1))[0] == 409
        c.stop()
        c.start()  # in memory only: a restarted cache reads the mounted map (the operator updates it after pushing)
        assert http_json("GET", c.url + "/v1/partitions")[1]["epoch"] == 1
    finally:
        c.stop()
        n.stop()


def http_json_routed(url: str, key: str, epoch: int) -> tuple[int, dict]:
    req = urllib.request.Request(f"{url}/v1/tables/t/blocks/{key}", data=b"v", method="PUT",
                                 headers={"X-Chronoshard-Routed": str(epoch)})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
