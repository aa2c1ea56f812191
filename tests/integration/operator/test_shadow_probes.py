"""The operator's probes against a real node and a real shadow: the ShadowPolicy's status from the shadow's
GET /v1/status, and a KeyRotation's view of the shadow (GET /v1/keys, POST /v1/rewrap) until the history holds
nothing under the old version.

The probes address a pod by its IP and the contract ports (node 7400, shadow 7403), so node and shadow listen on a
loopback address of their own (127.0.0.0/8 is all loopback on Linux), as on the local process cluster."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from chronoshard.operator.keyrotation import plan
from chronoshard.operator.keyrotation import probe as rotation_probe
from chronoshard.operator.podcontract import NODE_PORT, SHADOW_PORT, shadow_config
from chronoshard.operator.shadowpolicy import probe as shadow_probe
from chronoshard.operator.shadowpolicy.controller import Observation, build_status
from chronoshard.operator.shadowselect import ShadowSelection
from chronoshard.operator.spec.shadowpolicy import parse_shadowpolicy
from chronoshard.shardnode.node.server import NodeConfig
from chronoshard.shardnode.node.server import create_app as create_node
from chronoshard.shardnode.shadow.server import SHADOW
from chronoshard.shardnode.shadow.server import create_app as create_shadow

from tests.support.kubelet_dir import write_keyring
from tests.support.servers import KEY1, KEY2, keyring_dir
from tests.support.shadow import shadow_config as shadow_process_config
from tests.support.waiting import wait_for_async

pytestmark = pytest.mark.integration

TABLE = "orders"


@contextlib.asynccontextmanager
async def listen(app: web.Application, host: str, port: int) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def pod(ip: str) -> dict[str, Any]:
    """The pod as the API server would show it: shard 0 of ShardSet orders, with a shadow container, plain HTTP."""
    return {"metadata": {"name": "orders-0", "namespace": "shop", "labels": {"app.kubernetes.io/instance": "orders"}},
            "spec": {"containers": [{"name": n, "command": [f"chronoshard-{n}"]} for n in ("node", "cache", "shadow")]},
            "status": {"podIP": ip}}


@pytest.fixture()
async def shard(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    ip = f"127.{random.randint(1, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    kdir = keyring_dir(tmp_path)
    node_cfg = NodeConfig(data_dir=tmp_path / "data", keyring_dir=kdir, keyring_poll_seconds=0.05)
    node_cfg.apply({"tables": [TABLE]})
    policy = parse_shadowpolicy({"shardSetRef": {"name": "orders"}, "tables": [TABLE]})
    async with listen(create_node(node_cfg), ip, NODE_PORT) as node_url:
        # The shadow reads exactly the shadow.json the operator writes for this policy.
        settings = shadow_config(policy, "shop")
        shadow_app = create_shadow(shadow_process_config(tmp_path, node_url, kdir, settings))
        async with listen(shadow_app, ip, SHADOW_PORT), aiohttp.ClientSession() as session:
            yield {"ip": ip, "node_url": node_url, "session": session, "keyring": kdir, "policy": policy,
                   "shadow": shadow_app[SHADOW]}


async def put(shard: dict[str, Any], key: str, value: bytes) -> None:
    async with shard["session"].put(f"{shard['node_url']}/v1/tables/{TABLE}/blocks/{key}", data=value) as r:
        assert r.status == 200, await r.text()


async def caught_up(shard: dict[str, Any]) -> bool:
    async with shard["session"].get(f"{shard['node_url']}/v1/changes", params={"after": 0, "limit": 1}) as r:
        last = (await r.json())["lastLsn"]
    capture = shard["shadow"].capture
    return capture is not None and capture.state == "running" and capture.position >= last


async def test_shadow_policy_status_from_a_real_shadow(shard):
    for i in range(30):
        await put(shard, f"k{i}", b"order line %d " % i * 20)
    await wait_for_async(lambda: caught_up(shard), what="the shadow to catch up")

    pods = {0: pod(shard["ip"])}
    samples = await shadow_probe.collect(pods, 2)
    assert samples[1].report is None and samples[1].error == "no pod"
    obs = Observation(shardset="orders", spec=shard["policy"], shardset_obj={"spec": {"shards": 2}},
                      selection=ShadowSelection("shp", shard["policy"]), config_applied=True, expected=2, pods=pods)
    status = build_status({"metadata": {"name": "shp", "namespace": "shop", "generation": 1}}, obs, samples)
    row = status["shards"][0]
    assert row["reporting"] is True and "error" not in row, row
    assert (row["state"], row["captureLagLsn"]) == ("running", 0)
    versions = sum(t.get("versions", 0) for t in row.get("tiers", {}).values())
    assert versions >= 30, row
    assert status["reporting"] == "1/2" and status["phase"] == "Degraded"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["reason"], ready["message"].count("shard 1: no pod")) == ("ShardsNotReporting", 1)

    one = build_status({"metadata": {"name": "shp", "namespace": "shop", "generation": 1}},
                       Observation(**{**obs.__dict__, "expected": 1}), samples[:1])
    assert one["phase"] == "Active", one
    assert {c["type"]: c["status"] for c in one["conditions"]} == {
        "ShardSetMissing": "False", "CaptureBehind": "False", "Ready": "True"}


async def test_rotation_waits_for_the_shadows_history_and_rewraps_it(shard):
    for i in range(12):
        await put(shard, f"k{i}", b"v1 value %d" % i)
    await wait_for_async(lambda: caught_up(shard), what="the shadow to catch up")
    pods = {0: pod(shard["ip"])}

    reports = {r.role: r for r in await rotation_probe.collect_reports(pods)}
    assert set(reports) == {"node", "cache", "shadow"}  # the cache is not running here: reported unreachable
    shadow = reports["shadow"]
    assert shadow.reachable and (shadow.primary, shadow.versions) == (1, frozenset({1}))
    assert shadow.blocks.get(1, 0) >= 12

    # The rotation's next steps: version 2 added and promoted (here by hand, as the controller does).
    write_keyring(shard["keyring"], 2, {1: ("decrypt-only", KEY1), 2: ("primary", KEY2)})

    async def promoted() -> bool:
        r = {x.role: x for x in await rotation_probe.collect_reports(pods)}
        return r["shadow"].primary == 2 and r["node"].primary == 2

    await wait_for_async(promoted, what="node and shadow on version 2")
    await wait_for_async(lambda: caught_up(shard), what="the shadow to catch up")
    reports_now = await rotation_probe.collect_reports(pods)
    ready, _ = plan.old_blocks(reports_now, 1, keep=2)
    assert not ready.ready and any(w.startswith("shard 0 shadow:") for w in ready.waiting), ready.waiting
    waiting = plan.promoted(reports_now, 1, 2, 2).waiting  # node and shadow are promoted; no cache runs here
    assert len(waiting) == 1 and waiting[0].startswith("shard 0 cache: unreachable"), waiting

    # Rewrap the node's blocks and the shadow's history, as the Rewrapping phase does; then nothing is on v1.
    assert await rotation_probe.start_rewrap(pods, 256, 0.0) == {0: None}
    assert await rotation_probe.start_rewrap(pods, 256, 0.0, role="shadow") == {0: None}

    async def nothing_old() -> bool:
        done, _ = plan.old_blocks(await rotation_probe.collect_reports(pods), 1, keep=2)
        return done.ready

    await wait_for_async(nothing_old, what="no block and no history version on version 1")
    final = {r.role: r for r in await rotation_probe.collect_reports(pods)}
    assert final["shadow"].blocks.get(1, 0) == 0 and final["shadow"].blocks.get(2, 0) >= 12
