"""A move seen by the target's real `chronoshard-shadow` process (docs/resharding.md, "Shadows"): the blocks the target
node imports and catches up (change-log origin `move_in`) are versions with origin `move` holding the source's values,
the diff calls them moved in, and a client's write after the cutover is an ordinary version again."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap, keyspace_id

from tests.integration.shardnode.procs import BIN, INSECURE, Proc, free_port, http, http_json, node
from tests.support.kubelet_dir import write_keyring
from tests.support.waiting import wait_for

HALF, TOP = 1 << 63, (1 << 64) - 1
UPPER = ["8000000000000000", "ffffffffffffffff"]


def two_shard_map(upper_shard: int, epoch: int) -> PartitionMap:
    return PartitionMap(epoch, 2, (Partition(0, 0, HALF - 1, 0), Partition(1, HALF, TOP, upper_shard)))


def shard_node(tmp: Path, keyring: Path, name: str, index: int) -> Proc:
    d = tmp / name
    d.mkdir()
    (d / "map.json").write_text(two_shard_map(0, 1).to_json())
    p = node(d, keyring)
    p.argv += ["--partition-map", str(d / "map.json"), "--shard-index", str(index)]
    return p


def shadow(tmp: Path, keyring: Path, node_url: str) -> Proc:
    port = free_port()
    (tmp / "shadow.json").write_text(json.dumps({"tables": ["t"]}))
    argv = [str(BIN / "chronoshard-shadow"), "--host", "127.0.0.1", "--port", str(port), "--node-url", node_url,
            "--data-dir", str(tmp / "shadow"), "--keyring-dir", str(keyring), "--settings",
            str(tmp / "shadow.json"), *INSECURE]
    return Proc(argv, port, tmp / f"shadow-{port}.log")


def caught_up(shadow_url: str, node_url: str) -> bool:
    last = http_json("GET", f"{node_url}/v1/status")[1]["lastLsn"]
    st = http_json("GET", f"{shadow_url}/v1/status")[1]
    return st["capture"]["state"] == "running" and st["capture"]["cursor"] >= last


def test_target_shadow_records_moved_in_blocks_as_moves(tmp_path):
    keyring = tmp_path / "keyring"
    write_keyring(keyring, 1, {1: ("primary", os.urandom(32))})
    src = shard_node(tmp_path, keyring, "src", 0).start()
    dst = shard_node(tmp_path, keyring, "dst", 1).start()
    sh = shadow(tmp_path, keyring, dst.url).start()
    try:
        values = {f"k{i}": os.urandom(20) for i in range(80)}
        for k, v in values.items():
            assert http("PUT", f"{src.url}/v1/tables/t/blocks/{k}", v)[0] == 200
        upper = sorted(k for k in values if keyspace_id("t", k) >= HALF)
        assert upper
        wait_for(lambda: http_json("GET", f"{sh.url}/v1/status")[1]["capture"]["seeds"] >= 1, what="the seed")
        status, body = http_json("PUT", f"{dst.url}/v1/moves/m1", {"source": {"url": src.url, "shard": 0},
                                                                    "partition": 1, "ranges": [UPPER]})
        assert status in (200, 201), body
        wait_for(lambda: http_json("GET", f"{dst.url}/v1/moves/m1")[1]["phase"] == "catching_up",
                 what="the copy to finish")
        # A change during the catch-up arrives as a move_in too.
        assert http("PUT", f"{src.url}/v1/tables/t/blocks/{upper[0]}", b"changed on the source")[0] == 200
        values[upper[0]] = b"changed on the source"
        wait_for(lambda: http_json("GET", f"{dst.url}/v1/moves/m1")[1]["sourceLsn"] >= len(values) + 1,
                 what="the catch-up to apply the change")
        wait_for(lambda: caught_up(sh.url, dst.url), what="the target's shadow to capture the move")

        for k in upper:
            versions = http_json("GET", f"{sh.url}/v1/tables/t/history/{k}")[1]["versions"]
            assert versions and all((v["op"], v["origin"]) == ("put", "move") for v in versions), (k, versions)
            assert base64.b64decode(versions[-1]["value"]) == values[k]
        diff = http_json("GET", f"{sh.url}/v1/tables/t/diff?fromLsn=0&limit=1000")[1]["entries"]
        assert {e["key"]: e["change"] for e in diff} == {k: "moved_in" for k in upper}

        # After the cutover the target owns the range: a client's write there is an ordinary version.
        for n in (src, dst):
            assert http("PUT", n.url + "/v1/partitions", two_shard_map(1, 2).to_json().encode())[0] == 200
        assert http("PUT", f"{dst.url}/v1/tables/t/blocks/{upper[0]}", b"a client's")[0] == 200
        wait_for(lambda: caught_up(sh.url, dst.url), what="the shadow to capture the client's write")
        last = http_json("GET", f"{sh.url}/v1/tables/t/history/{upper[0]}")[1]["versions"][-1]
        assert (last["op"], last["origin"], base64.b64decode(last["value"])) == ("put", None, b"a client's")
    finally:
        sh.stop()
        dst.stop()
        src.stop()
