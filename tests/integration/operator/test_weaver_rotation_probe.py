"""A KeyRotation's view of a pod that runs a weaver, against real `chronoshard-node`, `chronoshard-shadow` and
`chronoshard-weaver` processes listening on a loopback address of their own at the contract ports (node 7400,
shadow 7403, weaver 7404), as in a shard pod: the probe asks the weaver too (its woven rows per key version), a
version the woven snapshots still use holds the retirement back, and the weaver's rewrap (``keep``: the new
version) drops them until nothing is left under the old version on the node, the shadow or the weaver."""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from chronoshard.operator.keyrotation import plan
from chronoshard.operator.keyrotation import probe as rotation_probe
from chronoshard.operator.podcontract import NODE_PORT, SHADOW_PORT, WEAVER_PORT, weave_config
from chronoshard.operator.spec.weaveplan import parse_weaveplan
from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap

from tests.integration.shardnode.procs import BIN, INSECURE, Proc, http
from tests.support.kubelet_dir import write_keyring
from tests.support.servers import KEY1, KEY2
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

HALF, TOP = 1 << 63, (1 << 64) - 1
PMAP = PartitionMap(1, 1, (Partition(0, 0, HALF - 1, 0), Partition(1, HALF, TOP, 0)))
PLAN = {"shardSetRef": {"name": "orders"}, "mode": "weave", "predictionWindow": "30s", "interval": "1500ms",
        "sampleInterval": "250ms", "split": {"sizeThreshold": 1}}


def _procs(tmp: Path, ip: str) -> tuple[Path, list[Proc]]:
    keyring = tmp / "keyring"
    write_keyring(keyring, 1, {1: ("primary", KEY1)})
    (tmp / "map.json").write_text(PMAP.to_json())
    (tmp / "shadow.json").write_text(json.dumps({"snapshot": {"intervalSeconds": 1, "granularity": "differential",
                                                              "fullEvery": 5}}))
    (tmp / "weave.json").write_text(json.dumps(weave_config(parse_weaveplan(PLAN), "shop", "growth")))
    volume = tmp / "volume"
    volume.mkdir()
    common = ["--host", ip, "--keyring-dir", str(keyring), "--partition-map", str(tmp / "map.json"),
              "--shard-index", "0", *INSECURE]
    node_url = f"http://{ip}:{NODE_PORT}"
    procs = []
    for name, port, extra in (
            ("node", NODE_PORT, ["--data-dir", str(volume / "node")]),
            ("shadow", SHADOW_PORT, ["--node-url", node_url, "--data-dir", str(volume), "--settings",
                                     str(tmp / "shadow.json")]),
            ("weaver", WEAVER_PORT, ["--node-url", node_url, "--data-dir", str(volume), "--settings",
                                     str(tmp / "weave.json")])):
        proc = Proc([str(BIN / f"chronoshard-{name}"), "--port", str(port), *common, *extra], port,
                    tmp / f"{name}.log")
        proc.url = f"http://{ip}:{port}"
        procs.append(proc)
    return keyring, procs


def pod(ip: str) -> dict[str, Any]:
    """Shard 0 of ShardSet orders with node, cache, shadow and weaver containers, plain HTTP."""
    return {"metadata": {"name": "orders-0", "namespace": "shop", "labels": {"app.kubernetes.io/instance": "orders"}},
            "spec": {"containers": [{"name": n, "command": [f"chronoshard-{n}"]}
                                    for n in ("node", "cache", "shadow", "weaver")]},
            "status": {"podIP": ip}}


def reports(pods: dict[int, dict[str, Any]]) -> dict[str, plan.ProcessReport]:
    return {r.role: r for r in asyncio.run(rotation_probe.collect_reports(pods))}


def test_the_weaver_is_a_key_holder_of_the_rotation(tmp_path):
    ip = f"127.{random.randrange(1, 250)}.{random.randrange(1, 250)}.11"
    keyring, (node, shadow, weaver) = _procs(tmp_path, ip)
    halt = threading.Event()

    def tick() -> None:  # keeps the shadow's snapshot boundaries passing, so the weaver weaves
        i = 0
        while not halt.wait(0.2):
            http("PUT", f"{node.url}/v1/tables/ticks/blocks/t{i % 5}", b"tick")
            i += 1

    node.start()
    ticker = threading.Thread(target=tick, daemon=True)
    try:
        for i in range(30):
            assert http("PUT", f"{node.url}/v1/tables/orders/blocks/k{i}", os.urandom(200))[0] == 200
        shadow.start()
        weaver.start()
        ticker.start()
        pods = {0: pod(ip)}
        assert rotation_probe.roles_of(pods[0]) == ("node", "cache", "shadow", "weaver")
        first = wait_for(lambda: (r := reports(pods)) and r["weaver"].blocks.get(1, 0) > 0 and r, timeout=90,
                         what=f"woven rows under version 1\n{weaver.log()}")
        assert first["weaver"].reachable and (first["weaver"].primary, first["weaver"].versions) == (1, frozenset({1}))

        write_keyring(keyring, 2, {1: ("decrypt-only", KEY1), 2: ("primary", KEY2)})
        wait_for(lambda: all(reports(pods)[r].primary == 2 for r in ("node", "shadow", "weaver")),
                 what="node, shadow and weaver on version 2")
        ready, _ = plan.old_blocks(list(reports(pods).values()), 1, keep=2)
        assert not ready.ready and any(w.startswith("shard 0 weaver:") and "woven row(s)" in w
                                       for w in ready.waiting), ready.waiting

        # The Rewrapping phase's calls: the node's blocks, the shadow's history, the weaver's woven rows.
        assert asyncio.run(rotation_probe.start_rewrap(pods, 256, 0.0)) == {0: None}
        assert asyncio.run(rotation_probe.start_rewrap(pods, 256, 0.0, role="shadow")) == {0: None}
        assert asyncio.run(rotation_probe.start_rewrap(pods, 256, None, role="weaver", keep=2)) == {0: None}

        def nothing_old() -> bool:
            done, _ = plan.old_blocks(list(reports(pods).values()), 1, keep=2)
            return done.ready

        wait_for(nothing_old, timeout=90, what="nothing on version 1 on the node, the shadow or the weaver")
        final = reports(pods)
        assert final["weaver"].blocks.get(1, 0) == 0
    finally:
        halt.set()
        weaver.stop()
        shadow.stop()
        node.stop()
