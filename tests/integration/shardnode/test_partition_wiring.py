"""`--partition-map` wiring: a real node refuses keys of other shards (421) in single and batch requests."""

from __future__ import annotations

import json
import os

from chronoshard.shardnode.keyspace.partitioning import initial_map, keyspace_id

from tests.integration.shardnode.procs import http, http_json, node
from tests.support.kubelet_dir import write_keyring


def test_node_with_partition_map_refuses_foreign_keys(tmp_path):
    keyring = tmp_path / "keyring"
    write_keyring(keyring, 1, {1: ("primary", os.urandom(32))})
    pmap = initial_map(2)
    (tmp_path / "map.json").write_text(json.dumps(pmap.to_dict()))
    n = node(tmp_path, keyring)
    n.argv += ["--partition-map", str(tmp_path / "map.json"), "--shard-index", "0"]
    n.start()
    try:
        keys = [f"k{i}" for i in range(40)]
        mine = [k for k in keys if pmap.owner_of(keyspace_id("t", k)).shard == 0]
        theirs = [k for k in keys if k not in mine]
        assert mine and theirs
        assert http("PUT", f"{n.url}/v1/tables/t/blocks/{mine[0]}", b"v")[0] == 200
        status, body = http_json("PUT", f"{n.url}/v1/tables/t/blocks/{theirs[0]}")
        assert status == 421 and body["error"] == "misdirected" and body["owner"] == 1 and body["epoch"] == 1
        status, body = http_json("POST", f"{n.url}/v1/tables/t/blocks:batchGet", {"keys": [mine[0], theirs[0]]})
        assert status == 200
        ok, wrong = body["blocks"]
        assert ok["found"] and wrong["error"]["error"] == "misdirected" and wrong["error"]["owner"] == 1
        assert http_json("GET", f"{n.url}/v1/keys")[1]["blocks"] == {"1": 1}  # the refused write stored nothing
        assert http_json("GET", f"{n.url}/v1/partitions")[1]["epoch"] == 1
    finally:
        n.stop()
