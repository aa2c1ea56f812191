"""A purge seen by a real `chronoshard-shadow` process following a real node (docs/resharding.md, "Shadows"): the
purged keys are recorded as moved away (their history before stays queryable, the point lookup says moved_away, the
diff says moved_away, the state leaves them out), and an ordinary delete stays a delete."""

from __future__ import annotations

import json
import os
from pathlib import Path

from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap, format_id, initial_map, keyspace_id

from tests.integration.shardnode.procs import BIN, INSECURE, Proc, free_port, http, http_json, node
from tests.support.kubelet_dir import write_keyring
from tests.support.waiting import wait_for

TABLE = "orders"
BASE = initial_map(2)
P0, P1 = BASE.partitions
ALL_ON_0 = PartitionMap(1, 2, (P0, Partition(P1.id, P1.start, P1.end, 0)))
MOVED = PartitionMap(2, 2, (P0, P1))


def shadow(tmp: Path, keyring: Path, node_url: str) -> Proc:
    port = free_port()
    argv = [str(BIN / "chronoshard-shadow"), "--host", "127.0.0.1", "--port", str(port), "--node-url", node_url,
            "--data-dir", str(tmp / "shadow"), "--keyring-dir", str(keyring), "--settings",
            str(tmp / "shadow.json"), *INSECURE]
    return Proc(argv, port, tmp / f"shadow-{port}.log")


def caught_up(shadow_url: str, node_url: str) -> bool:
    last = http_json("GET", f"{node_url}/v1/changes?after=0&limit=1")[1]["lastLsn"]
    st = http_json("GET", f"{shadow_url}/v1/status")[1]
    return st["capture"]["state"] == "running" and st["capture"]["cursor"] >= last


def test_shadow_records_a_purge_as_moved_away(tmp_path):
    keyring = tmp_path / "keyring"
    write_keyring(keyring, 1, {1: ("primary", os.urandom(32))})
    (tmp_path / "map.json").write_text(ALL_ON_0.to_json())
    (tmp_path / "shadow.json").write_text(json.dumps({"tables": [TABLE]}))
    n = node(tmp_path, keyring)
    n.argv += ["--partition-map", str(tmp_path / "map.json"), "--shard-index", "0"]
    n.start()
    s = shadow(tmp_path, keyring, n.url).start()
    try:
        keys = [f"k{i}" for i in range(60)]
        for k in keys:
            assert http("PUT", f"{n.url}/v1/tables/{TABLE}/blocks/{k}", f"first {k}".encode())[0] == 200
        moved = [k for k in keys if P1.contains(keyspace_id(TABLE, k))]
        stays = [k for k in keys if k not in moved]
        assert moved and len(stays) > 1
        assert http("DELETE", f"{n.url}/v1/tables/{TABLE}/blocks/{stays[0]}")[0] == 200
        before = http_json("GET", f"{n.url}/v1/changes?after=0&limit=1")[1]["lastLsn"]
        assert http("PUT", n.url + "/v1/partitions", MOVED.to_json().encode())[0] == 200
        status, body = http_json("POST", n.url + "/v1/ranges:purge",
                                 {"ranges": [[format_id(P1.start), format_id(P1.end)]], "epoch": 2})
        assert (status, body) == (200, {"purgedBlocks": len(moved)})
        wait_for(lambda: caught_up(s.url, n.url), what="the shadow to capture the purge")

        k = moved[0]
        versions = http_json("GET", f"{s.url}/v1/tables/{TABLE}/history/{k}")[1]["versions"]
        assert [(v["op"], v["origin"]) for v in versions[-1:]] == [("delete", "moved_away")]
        assert any(v["op"] in ("put", "seed") and v["origin"] is None for v in versions[:-1])
        status, body = http_json("GET", f"{s.url}/v1/tables/{TABLE}/at/{k}?lsn={before}")
        assert status == 200 and body["key"] == k  # its value before the move is still here
        status, body = http_json("GET", f"{s.url}/v1/tables/{TABLE}/at/{k}?lsn={before + len(moved)}")
        assert status == 404 and body["error"] == "moved_away"
        status, body = http_json("GET", f"{s.url}/v1/tables/{TABLE}/at/{stays[0]}?lsn={before}")
        assert status == 404 and body["error"] == "not_found"  # an ordinary delete stays a delete

        diff = http_json("GET", f"{s.url}/v1/tables/{TABLE}/diff?fromLsn={before}&limit=1000")[1]["entries"]
        assert {e["key"]: e["change"] for e in diff} == {k: "moved_away" for k in moved}
        state = http_json("GET", f"{s.url}/v1/tables/{TABLE}/state?limit=1000")[1]["entries"]
        assert {e["key"] for e in state} == set(stays[1:])
    finally:
        s.stop()
        n.stop()
