"""The Reshard controller's passes against the real API server and real `chronoshard-node` processes standing in for
a ShardSet's pods (each node on a pod-like loopback IP at port 7400, a Ready Pod object with that IP, as in
test_mirrorset_controller.py). Passes are driven by hand (``controller.step`` + ``write_status``), as the daemon
runs them, so a test can stop between any two and start a "new operator" from the status alone.

Covered: the spec's immutability (CEL), a split at the median the node reports then a merge (map changes pushed to
every node, the ConfigMap's epoch going up one per step), one Reshard at a time per ShardSet, a failing step, the
map ConfigMap never going back in epoch, and (with the node's move endpoints) a move under a writer, a rollback
when the target refuses, and an operator restart in the middle of a move."""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from chronoshard.operator import kube, naming
from chronoshard.operator.podcontract import NODE_PORT, PARTITION_MAP_FILE
from chronoshard.operator.reshard import controller
from chronoshard.shardnode.keyspace.partitioning import PartitionMap, initial_map, keyspace_id
from kubernetes import client

from tests.integration.shardnode.procs import BIN, INSECURE, Proc, http, http_json
from tests.support.kubelet_dir import write_keyring
from tests.support.shadowstub import GROUP, VERSION, create_custom

pytestmark = [pytest.mark.integration, pytest.mark.without_operator]

TABLE = "orders"


@pytest.fixture()
def api(k8s_client):
    previous = kube._api
    kube.set_api_client(k8s_client)
    yield client.CustomObjectsApi(k8s_client)
    kube.set_api_client(previous)


def _ip(taken: set[str]) -> str:
    while True:
        ip = f"127.{random.randrange(1, 250)}.{random.randrange(1, 250)}.{random.randrange(2, 250)}"
        if ip not in taken:
            return ip


class Shards:
    """ShardSet ``orders`` of ``n`` shards: a node process and a Ready pod per shard, the map ConfigMap and the
    mounted map file (initial_map(n))."""

    def __init__(self, k8s_client: Any, ns: str, tmp: Path, n: int = 2, name: str = "orders") -> None:
        self.k8s, self.ns, self.name = k8s_client, ns, name
        self.core = client.CoreV1Api(k8s_client)
        self.custom = client.CustomObjectsApi(k8s_client)
        keyring = tmp / "keyring"
        write_keyring(keyring, 1, {1: ("primary", os.urandom(32))})
        self.map0 = initial_map(n)
        map_file = tmp / "map.json"
        map_file.write_text(self.map0.to_json())
        create_custom(k8s_client, ns, "shardsets", name, {"shards": n}, "ShardSet")
        self.core.create_namespaced_config_map(ns, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=naming.partitions_config_map_name(name)),
            data={PARTITION_MAP_FILE: self.map0.to_json()}))
        taken: set[str] = set()
        self.urls: dict[int, str] = {}
        self.nodes: dict[int, Proc] = {}
        for shard in range(n):
            ip = _ip(taken)
            taken.add(ip)
            root = tmp / f"node-{shard}"
            root.mkdir()
            argv = [str(BIN / "chronoshard-node"), "--host", ip, "--port", str(NODE_PORT), "--data-dir",
                    str(root / "data"), "--keyring-dir", str(keyring), "--partition-map", str(map_file),
                    "--shard-index", str(shard), *INSECURE]
            self.nodes[shard] = Proc(argv, NODE_PORT, root / "node.log", dict(os.environ))
            self.urls[shard] = self.nodes[shard].url = f"http://{ip}:{NODE_PORT}"
            self._pod(shard, ip)

    def _pod(self, shard: int, ip: str) -> None:
        pod = f"{self.name}-{shard}"
        self.core.create_namespaced_pod(self.ns, client.V1Pod(
            metadata=client.V1ObjectMeta(name=pod, labels=naming.selector_labels(self.name)),
            spec=client.V1PodSpec(containers=[client.V1Container(name="node", image="x",
                                                                 command=["chronoshard-node"])])))
        self.core.patch_namespaced_pod_status(pod, self.ns, {"status": {
            "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})

    def start(self) -> Shards:
        for proc in self.nodes.values():  # all launched, then all waited for: the cold starts overlap
            proc.launch()
        for proc in self.nodes.values():
            proc.wait_ready()
        return self

    def stop(self) -> None:
        for proc in self.nodes.values():
            proc.stop()

    def cm_map(self) -> PartitionMap:
        cm = self.core.read_namespaced_config_map(naming.partitions_config_map_name(self.name), self.ns)
        return PartitionMap.from_json(cm.data[PARTITION_MAP_FILE])

    def node_epoch(self, shard: int) -> int:
        status, doc = http_json("GET", self.urls[shard] + "/v1/partitions")
        assert status == 200, doc
        return int(doc["epoch"])

    def put(self, key: str, value: bytes) -> int:
        shard = self.cm_map().owner_of(keyspace_id(TABLE, key)).shard
        status, _ = http("PUT", f"{self.urls[shard]}/v1/tables/{TABLE}/blocks/{key}", value)
        return status

    def reshard(self, name: str, steps: list[dict[str, Any]], **spec: Any) -> None:
        create_custom(self.k8s, self.ns, "reshards", name, {"shardSetRef": {"name": self.name}, "steps": steps,
                                                             **spec}, "Reshard")

    def body(self, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, "reshards", name))


@pytest.fixture()
def shards(k8s_client, api, namespace, tmp_path) -> Iterator[Shards]:
    s = Shards(k8s_client, namespace, tmp_path).start()
    yield s
    s.stop()


async def one_pass(s: Shards, name: str, events: list[tuple[str, str, str]] | None = None) -> dict[str, Any]:
    """One controller pass on the live object, its status written as the daemon writes it."""
    body = s.body(name)
    result = await controller.step(body)
    await asyncio.to_thread(controller.write_status, body, result.status)
    if events is not None:
        events.extend(result.events)
    return result.status


async def run_until(s: Shards, name: str, phases: set[str], passes: int = 200,
                    events: list[tuple[str, str, str]] | None = None) -> dict[str, Any]:
    """Passes until the Reshard's phase is one of ``phases`` (bounded by a pass count, not a clock)."""
    for _ in range(passes):
        status = await one_pass(s, name, events)
        if status.get("phase") in phases:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"Reshard {name} did not reach {phases}: {json.dumps(status)[:2000]}")


def test_shardset_ref_and_steps_are_immutable(api, namespace):
    create_custom(api.api_client, namespace, "reshards", "fixed",
                  {"shardSetRef": {"name": "orders"}, "steps": [{"split": {"partition": 0}}]}, "Reshard")
    for patch in ({"spec": {"steps": [{"split": {"partition": 1}}]}}, {"spec": {"shardSetRef": {"name": "x"}}}):
        with pytest.raises(client.ApiException) as err:
            api.patch_namespaced_custom_object(GROUP, VERSION, namespace, "reshards", "fixed", patch)
        assert err.value.status == 422 and "immutable" in err.value.body
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, "reshards", "fixed",
                                       {"spec": {"gracePeriod": "1m"}})  # the rest may change


async def test_split_at_the_median_then_merge_changes_the_map_on_every_node(shards):
    keys = [f"k{i}" for i in range(400)]
    on_zero = [k for k in keys if shards.map0.owner_of(keyspace_id(TABLE, k)).shard == 0]
    for k in on_zero:
        assert shards.put(k, b"v-" + k.encode()) == 200
    p0 = shards.map0.partitions_of(0)[0]
    status, stats = http_json("GET", f"{shards.urls[0]}/v1/ranges/stats?keyspace={p0.start:016x}-{p0.end:016x}")
    assert status == 200 and stats["blocks"] == len(on_zero)
    shards.reshard("cut", [{"split": {"partition": 0}}, {"merge": {"partitions": [0, 2]}}])
    events: list[tuple[str, str, str]] = []
    done = await run_until(shards, "cut", {"Completed", "Failed"}, events=events)
    assert done["phase"] == "Completed", done
    split, merge = done["steps"]
    assert split["splitAt"] == stats["medianKeyspaceId"] and split["partitions"] == [0, 2] and split["epoch"] == 2
    assert merge["partitions"] == [0] and merge["epoch"] == 3 and done["epoch"] == 3 and done["startEpoch"] == 1
    final = shards.cm_map()
    assert final.epoch == 3 and final.partitions == shards.map0.partitions  # split then merged back
    assert [shards.node_epoch(s) for s in (0, 1)] == [3, 3]
    assert [r for _, r, _ in events].count("StepCompleted") == 2 and ("Normal", "Started") == events[0][:2]
    # The blocks did not move: every key still reads on shard 0.
    for k in on_zero[:20]:
        assert http("GET", f"{shards.urls[0]}/v1/tables/{TABLE}/blocks/{k}")[0] == 200


async def test_one_reshard_at_a_time_and_a_step_that_cannot_apply_fails(shards):
    shards.reshard("first", [{"split": {"partition": 1, "at": "c000000000000000"}}])
    shards.reshard("second", [{"merge": {"partitions": [0, 1]}}])  # different shards: cannot apply
    await asyncio.sleep(1.1)  # creationTimestamp has second precision: "second" is strictly younger
    waiting = await one_pass(shards, "second")
    assert waiting.get("phase", "Pending") == "Pending"
    cond = next(c for c in waiting["conditions"] if c["type"] == "Progressing")
    assert cond["reason"] == "WaitingForReshard" and "first" in cond["message"]
    assert (await run_until(shards, "first", {"Completed"}))["epoch"] == 2
    failed = await run_until(shards, "second", {"Completed", "Failed"})
    assert failed["phase"] == "Failed" and failed["steps"][0]["phase"] == "Failed"
    assert "different shards" in failed["steps"][0]["message"]
    assert shards.cm_map().epoch == 2  # nothing changed by the failed step


def test_the_map_configmap_never_goes_back_in_epoch(shards, api):
    """The ShardSet controller's write is a server-side apply conditional on the resourceVersion it read: one read
    before a Reshard's write is refused, not applied over it."""
    cm_name = naming.partitions_config_map_name("orders")
    stale = kube.get("v1", "ConfigMap", shards.ns, cm_name)
    newer = PartitionMap(2, 2, shards.map0.partitions)
    assert controller._write_map(shards.ns, "orders", newer) is None
    manifest = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": cm_name, "namespace": shards.ns,
                             "resourceVersion": stale["metadata"]["resourceVersion"]},
                "data": {PARTITION_MAP_FILE: shards.map0.to_json()}}
    with pytest.raises(client.ApiException) as err:
        kube.apply(manifest)
    assert err.value.status == 409
    assert shards.cm_map().epoch == 2
    # The Reshard side refuses to lower it too.
    assert controller._write_map(shards.ns, "orders", shards.map0) is None and shards.cm_map().epoch == 2


class Writer:
    """Writes keys ``w0..w{keys-1}`` over and over to their owners by the map it started with, following 421s to
    the owner named; remembers the last value acknowledged per key and every write that failed."""

    def __init__(self, s: Shards, keys: int = 200) -> None:
        self.s, self.keys = s, keys
        self.acked: dict[str, bytes] = {}
        self.failures: list[str] = []
        self.redirects = 0
        self.unreachable = 0
        # Values sent since the key's last acknowledgement: a write whose answer was lost (its node killed) may have
        # committed, so the key may read one of these instead.
        self.pending: dict[str, set[bytes]] = {}
        self.stop = asyncio.Event()

    async def _put(self, session: aiohttp.ClientSession, key: str, value: bytes) -> None:
        self.pending.setdefault(key, set()).add(value)
        try:
            await self._put_once(session, key, value)
        except (aiohttp.ClientError, TimeoutError):
            self.unreachable += 1  # not acknowledged: a killed node; nothing is promised for it

    async def _put_once(self, session: aiohttp.ClientSession, key: str, value: bytes) -> None:
        shard = self.s.map0.owner_of(keyspace_id(TABLE, key)).shard
        for _ in range(100):
            async with session.put(f"{self.s.urls[shard]}/v1/tables/{TABLE}/blocks/{key}", data=value) as resp:
                if resp.status == 200:
                    self.acked[key] = value
                    self.pending[key] = set()
                    return
                if resp.status == 421:
                    shard = int((await resp.json())["owner"])
                    self.redirects += 1
                    continue
                self.failures.append(f"{key}: HTTP {resp.status} {await resp.text()}")
                return
        self.failures.append(f"{key}: redirected 100 times")

    async def run(self) -> None:
        i = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            while not self.stop.is_set():
                await asyncio.gather(*(self._put(session, f"w{(i + j) % self.keys}", f"{i + j}".encode())
                                       for j in range(4)))
                i += 4

    def check(self, final: PartitionMap) -> None:
        """Every acknowledged write reads back, with its last value (or a later one whose answer was lost), from the
        owner under ``final``."""
        assert not self.failures, self.failures[:5]
        for key, value in self.acked.items():
            owner = final.owner_of(keyspace_id(TABLE, key)).shard
            status, body = http("GET", f"{self.s.urls[owner]}/v1/tables/{TABLE}/blocks/{key}")
            assert status == 200 and (body == value or body in self.pending.get(key, ())), (key, owner, status, body)


def _blocks(s: Shards, shard: int, start: int, end: int) -> int:
    status, stats = http_json("GET", f"{s.urls[shard]}/v1/ranges/stats?keyspace={start:016x}-{end:016x}")
    assert status == 200, stats
    return int(stats["blocks"])


async def test_a_move_under_a_writer_loses_no_acknowledged_write(shards):
    writer = Writer(shards)
    task = asyncio.create_task(writer.run())
    try:
        while len(writer.acked) < 100:  # some data on both shards before the move
            await asyncio.sleep(0.05)
        shards.reshard("grow", [{"split": {"partition": 0, "at": "4000000000000000"}},
                                {"move": {"partition": 2, "toShard": 1}}], gracePeriod="0s")
        events: list[tuple[str, str, str]] = []
        done = await run_until(shards, "grow", {"Completed", "Failed", "RolledBack"}, passes=600, events=events)
    finally:
        writer.stop.set()
        await task
    assert done["phase"] == "Completed", done
    move = done["steps"][1]
    assert (move["phase"], move["partition"], move["fromShard"], move["toShard"]) == ("Completed", 2, 0, 1)
    assert move["verified"]["matched"] is True and move["cutoverAttempts"] >= 1 and move["pausedMs"] is not None
    assert move["epoch"] == 3 and move["purgedBlocks"] >= 0
    final = shards.cm_map()
    assert final.epoch == 3 and final.owner_of(0x4000000000000000).shard == 1
    assert [shards.node_epoch(s) for s in (0, 1)] == [3, 3]
    writer.check(final)
    # The source deleted the moved range (grace period 0s), the target holds it; no key on two owners.
    assert _blocks(shards, 0, 0x4000000000000000, 0x7FFFFFFFFFFFFFFF) == 0
    assert _blocks(shards, 1, 0x4000000000000000, 0x7FFFFFFFFFFFFFFF) > 0
    reasons = [r for _, r, _ in events]
    assert {"Copying", "Verified", "StepCompleted", "Purged"} <= set(reasons)


async def test_a_move_the_target_refuses_rolls_back(shards):
    for i in range(50):
        shards.put(f"r{i}", b"x")
    p1 = shards.map0.partitions_of(1)[0]
    # Another move of the same range already runs on the target: ours is refused (409 move_overlap).
    status, body = http_json("PUT", f"{shards.urls[0]}/v1/moves/other", {
        "source": {"url": shards.urls[1], "shard": 1}, "partition": 1,
        "ranges": [[f"{p1.start:016x}", f"{p1.end:016x}"]]})
    assert status in (200, 201), body
    try:
        shards.reshard("refused", [{"move": {"partition": 1, "toShard": 0}}])
        events: list[tuple[str, str, str]] = []
        done = await run_until(shards, "refused", {"Completed", "Failed", "RolledBack"}, events=events)
    finally:
        http("DELETE", f"{shards.urls[0]}/v1/moves/other?discard=true")
    assert done["phase"] == "RolledBack", done
    assert done["steps"][0]["phase"] == "Failed" and "MoveRefused" in done["steps"][0]["message"]
    assert shards.cm_map() == shards.map0 and [shards.node_epoch(s) for s in (0, 1)] == [1, 1]
    assert any(t == "Warning" and r == "MoveRefused" for t, r, _ in events)
    status, moves = http_json("GET", f"{shards.urls[0]}/v1/moves")
    assert status == 200 and not [m for m in moves.get("moves", []) if m.get("name") == "refused.0"]


async def test_an_operator_stopped_after_the_source_took_the_map_finishes_the_move(shards):
    """Crash mid-cutover: the source already has the new map, the status still says CuttingOver. The next operator
    must see (from the source's GET /v1/partitions) that the move happened: no rollback, no second fence."""
    for i in range(100):
        shards.put(f"c{i}", b"v" + str(i).encode())
    shards.reshard("crash", [{"move": {"partition": 1, "toShard": 0}}], gracePeriod="0s")
    for _ in range(300):
        status = await one_pass(shards, "crash")
        row = (status.get("steps") or [{}])[0]
        if row.get("phase") == "CuttingOver":
            break
        await asyncio.sleep(0.05)
    assert row.get("phase") == "CuttingOver", status
    # What the stopped operator had done: fence, catch-up, the new map on the source; then it died.
    from chronoshard.operator import reshardplan
    new_map = reshardplan.move(shards.map0, 1, 0).pmap
    code, body = http_json("PUT", f"{shards.urls[1]}/v1/partitions", new_map.to_dict())
    assert code == 200, body
    done = await run_until(shards, "crash", {"Completed", "Failed", "RolledBack"})
    assert done["phase"] == "Completed", done
    row = done["steps"][0]
    assert row["cutoverAttempts"] == 0 and row["epoch"] == 2  # no new cutover: the one that happened counted
    assert shards.cm_map() == new_map and [shards.node_epoch(s) for s in (0, 1)] == [2, 2]
    for i in range(100):
        assert http("GET", f"{shards.urls[0]}/v1/tables/{TABLE}/blocks/c{i}") == (200, b"v" + str(i).encode())


async def test_a_move_waits_for_a_key_rotation_in_progress(shards, api):
    create_custom(shards.k8s, shards.ns, "keyrotations", "rot", {"shardSetRef": {"name": "orders"},
                                                                  "trigger": "now"}, "KeyRotation")
    api.patch_namespaced_custom_object_status(GROUP, VERSION, shards.ns, "keyrotations", "rot",
                                              {"status": {"phase": "Distributing"}})
    shards.reshard("after-rotation", [{"move": {"partition": 1, "toShard": 0}}], gracePeriod="0s")
    await one_pass(shards, "after-rotation")  # Pending -> Running
    status = await one_pass(shards, "after-rotation")
    assert status["phase"] == "Running" and status["steps"][0]["phase"] == "Pending"
    cond = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert cond["reason"] == "WaitingForKeyRotation" and "rot" in cond["message"]
    status, moves = http_json("GET", f"{shards.urls[0]}/v1/moves")
    assert status == 200 and not moves.get("moves")  # nothing started on the target
    api.patch_namespaced_custom_object_status(GROUP, VERSION, shards.ns, "keyrotations", "rot",
                                              {"status": {"phase": "Completed"}})
    assert (await run_until(shards, "after-rotation", {"Completed", "Failed", "RolledBack"}))["phase"] == "Completed"


async def test_a_mirror_shardsets_map_follows_its_source(shards):
    create_custom(shards.k8s, shards.ns, "shardsets", "orders-m", {"shards": 2}, "ShardSet")
    shards.core.create_namespaced_config_map(shards.ns, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=naming.partitions_config_map_name("orders-m")),
        data={PARTITION_MAP_FILE: shards.map0.to_json()}))
    create_custom(shards.k8s, shards.ns, "mirrorsets", "orders", {
        "sourceRef": {"name": "orders"}, "mirrors": [{"shardSetRef": {"name": "orders-m"}}]}, "MirrorSet")
    shards.reshard("cut", [{"split": {"partition": 1}}])
    assert (await run_until(shards, "cut", {"Completed", "Failed"}))["phase"] == "Completed"
    cm = shards.core.read_namespaced_config_map(naming.partitions_config_map_name("orders-m"), shards.ns)
    assert PartitionMap.from_json(cm.data[PARTITION_MAP_FILE]) == shards.cm_map()
    assert shards.cm_map().epoch == 2


async def test_deleting_a_running_reshard_rolls_its_move_back(shards):
    for i in range(100):
        shards.put(f"d{i}", b"x")
    p1 = shards.map0.partitions_of(1)[0]
    shards.reshard("gone", [{"move": {"partition": 1, "toShard": 0}}])
    for _ in range(300):
        status = await one_pass(shards, "gone")
        if (status.get("steps") or [{}])[0].get("phase") in ("CatchingUp", "Verifying"):
            break
        await asyncio.sleep(0.05)
    assert status["steps"][0]["phase"] in ("CatchingUp", "Verifying"), status
    assert _blocks(shards, 0, p1.start, p1.end) > 0  # the target imported the range
    # What Kopf calls when the Reshard is deleted (its finalizer holds the object until this returns).
    await controller.reshard_deleted(name="gone", namespace=shards.ns, body=shards.body("gone"))
    status, moves = http_json("GET", f"{shards.urls[0]}/v1/moves")
    assert status == 200 and not [m for m in moves.get("moves", []) if m.get("name") == "gone.0"]
    assert _blocks(shards, 0, p1.start, p1.end) == 0  # discarded
    assert _blocks(shards, 1, p1.start, p1.end) > 0 and shards.cm_map() == shards.map0  # the source kept it all


@pytest.mark.parametrize("victim", ["target", "source"])
async def test_a_node_killed_mid_move_is_waited_for_and_the_move_completes(shards, victim):
    """kill -9 of the target or the source while the target catches up under a writer: the operator waits (no
    rollback, no cutover on a guess), the restarted node resumes from its store, and the move completes with every
    acknowledged write readable from the new owner."""
    writer = Writer(shards, keys=100)
    task = asyncio.create_task(writer.run())
    try:
        while len(writer.acked) < 50:
            await asyncio.sleep(0.05)
        shards.reshard("kill", [{"move": {"partition": 1, "toShard": 0}}], gracePeriod="0s")
        for _ in range(300):
            status = await one_pass(shards, "kill")
            if (status.get("steps") or [{}])[0].get("phase") in ("CatchingUp", "Verifying"):
                break
            await asyncio.sleep(0.05)
        node = shards.nodes[0 if victim == "target" else 1]
        node.kill()
        writer.stop.set()  # writes to a dead source would only fail
        await task
        for _ in range(5):
            status = await one_pass(shards, "kill")
            assert status["phase"] == "Running" and status["steps"][0]["phase"] != "RollingBack", status
        node.start()
        done = await run_until(shards, "kill", {"Completed", "Failed", "RolledBack"}, passes=600)
    finally:
        writer.stop.set()
        await task
    assert done["phase"] == "Completed", done
    writer.check(shards.cm_map())
    assert shards.cm_map().owner_of(shards.map0.partitions_of(1)[0].start).shard == 0
