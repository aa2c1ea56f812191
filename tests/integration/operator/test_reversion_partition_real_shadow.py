"""A Reversion by partition end to end with the real processes: a real `chronoshard-node`, a real
`chronoshard-shadow` with a partition map (partition 1 = the upper half of a split, both on shard 0), a woven
snapshot of that half written beside the shadow's history through the weaver's code, the real API server and the
controller's passes. The plan is read from the woven snapshot (status.plan.base), and the run puts the partition's
keys back to the point while the other partition keeps its later writes."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from chronoshard.operator.reversion import controller
from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap, keyspace_id
from chronoshard.shardnode.weave import weaving
from chronoshard.shardnode.weave.store import FULL, LOWER, UPPER, Weave, WeaveStore

from tests.integration.operator.test_reversion_real_shadow import TABLE, _caught_up, _pod, _put, api  # noqa: F401
from tests.integration.shardnode.procs import BIN, INSECURE, Proc, http_json, node
from tests.support.kubelet_dir import write_keyring
from tests.support.shadowstub import GROUP, SHADOW_PORT, VERSION, create_custom
from tests.support.waiting import wait_for
from tests.support.woven_history import KEYSPACE_MAX, RANGES, SPLIT

pytestmark = [pytest.mark.integration, pytest.mark.without_operator]

KEYS = [f"k{i:02}" for i in range(30)]
UPPER_KEYS = [k for k in KEYS if keyspace_id(TABLE, k) >= SPLIT]
LOWER_KEYS = [k for k in KEYS if keyspace_id(TABLE, k) < SPLIT]
TICK = next(f"tick{i}" for i in range(100) if keyspace_id(TABLE, f"tick{i}") < SPLIT)  # moves time, partition 0


def _shadow(tmp: Path, keyring: Path, node_url: str, ip: str) -> Proc:
    (tmp / "shadow.json").write_text(json.dumps({"tables": [TABLE], "snapshot": {"intervalSeconds": 1}}))
    pmap = PartitionMap(1, 1, (Partition(0, 0, SPLIT - 1, 0), Partition(1, SPLIT, KEYSPACE_MAX, 0)))
    (tmp / "map.json").write_text(pmap.to_json())
    argv = [str(BIN / "chronoshard-shadow"), "--host", ip, "--port", str(SHADOW_PORT), "--node-url", node_url,
            "--data-dir", str(tmp / "data"), "--keyring-dir", str(keyring), "--settings", str(tmp / "shadow.json"),
            "--partition-map", str(tmp / "map.json"), "--shard-index", "0", *INSECURE]
    proc = Proc(argv, SHADOW_PORT, tmp / "shadow.log")
    proc.url = f"http://{ip}:{SHADOW_PORT}"
    return proc


def _newest_snapshot_lsn(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT coalesce(max(lsn), -1) FROM snapshots").fetchone()[0])
    finally:
        conn.close()


def _weave_full_point(data: Path) -> int:
    """The weaver's first step: a full point of both halves at the newest shadow snapshot; its LSN."""
    conn = weaving.open_shadow(data / "shadow.sqlite3")
    snap = weaving.newest_snapshot(conn)
    assert snap is not None
    rows = weaving.full_rows(conn, snap.id, RANGES)
    conn.close()
    store = WeaveStore(data / "weave.sqlite3")
    store.add_weave(Weave("w-0-1", 0, SPLIT, RANGES[LOWER], RANGES[UPPER], 0.9, None, 3600.0, time.time(), "active"))
    store.add_points([("w-0-1", h, snap.boundary, snap.lsn, FULL, None, snap.id, rows[h]) for h in RANGES])
    store.close()
    return snap.lsn


def test_reversion_by_partition_uses_the_woven_snapshot(k8s_client, api, namespace, tmp_path):  # noqa: F811
    keyring = tmp_path / "keyring"
    write_keyring(keyring, 1, {1: ("primary", os.urandom(32))})
    ip = f"127.{random.randrange(1, 250)}.{random.randrange(1, 250)}.8"
    n = node(tmp_path, keyring).start()
    s = _shadow(tmp_path, keyring, n.url, ip).start()
    try:
        wait_for(lambda: http_json("GET", f"{s.url}/v1/status")[1]["capture"]["seeds"] == 1, what="the first seed")
        for k in KEYS:
            last = _put(n.url, k, b"v0-" + k.encode())

        def snapshot_taken() -> bool:
            _put(n.url, TICK, b".")  # a boundary is taken once a later change arrives
            return _caught_up(s.url, n.url) and _newest_snapshot_lsn(tmp_path / "data" / "shadow.sqlite3") >= last

        wait_for(snapshot_taken, what="a shadow snapshot after the first writes")
        woven_lsn = _weave_full_point(tmp_path / "data")
        for k in UPPER_KEYS[:3]:
            _put(n.url, k, b"v1-" + k.encode())  # after the woven point: replayed from the history
        wait_for(lambda: _caught_up(s.url, n.url), what="the shadow to capture the good writes")
        time.sleep(0.05)  # the point must lie strictly between the two groups of writes (wall clock)
        point = time.time()
        time.sleep(0.05)
        for k in KEYS:
            _put(n.url, k, b"bad")
        wait_for(lambda: _caught_up(s.url, n.url), what="the shadow to capture the bad writes")

        create_custom(k8s_client, namespace, "shardsets", "orders", {"shards": 1}, "ShardSet")
        create_custom(k8s_client, namespace, "shadowpolicies", "orders-shadow", {"shardSetRef": {"name": "orders"}},
                      "ShadowPolicy")
        _pod(k8s_client, namespace, ip)
        point_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(point)) + f".{int(point % 1 * 1e6):06d}Z"
        create_custom(k8s_client, namespace, "reversions", "undo", {"shardSetRef": {"name": "orders"},
                                                                     "partition": 1, "pointInTime": point_text},
                      "Reversion")

        async def passes(until: str) -> dict[str, Any]:
            for _ in range(20):
                body = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "reversions", "undo")
                st = await controller.step(body)
                await asyncio.to_thread(controller.write_status, body, st.status)
                if st.status["phase"] == until:
                    return st.status
                if st.status["phase"] == "Running":
                    await asyncio.sleep(0.2)
            raise AssertionError(f"not {until}: {st.status}")

        planned = asyncio.run(passes("AwaitingApproval"))
        plan = planned["plan"]
        assert plan["restore"] == len(UPPER_KEYS) and plan["keys"] == len(UPPER_KEYS), plan
        assert plan["base"]["kind"] == "woven" and plan["base"]["lsn"] == woven_lsn and plan["base"]["shard"] == 0
        assert plan["perShard"][0]["base"]["kind"] == "woven"
        stored = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "reversions", "undo")
        assert stored["status"]["plan"]["base"]["kind"] == "woven"  # kept by the CRD's status schema

        api.patch_namespaced_custom_object(GROUP, VERSION, namespace, "reversions", "undo",
                                           {"spec": {"approve": planned["digest"]}})
        done = asyncio.run(passes("Completed"))
        assert done["progress"]["done"] == len(UPPER_KEYS), done["progress"]
        values = _values(n.url)
        for k in UPPER_KEYS:
            assert values[k] == (b"v1-" if k in UPPER_KEYS[:3] else b"v0-") + k.encode(), k
        assert all(values[k] == b"bad" for k in LOWER_KEYS)  # the other partition: untouched
    finally:
        s.stop()
        n.stop()


def _values(node_url: str) -> dict[str, bytes]:
    import base64

    status, body = http_json("POST", f"{node_url}/v1/tables/{TABLE}/blocks:batchGet", {"keys": KEYS})
    assert status == 200, body
    return {b["key"]: base64.b64decode(b["value"]) for b in body["blocks"] if b["found"]}
