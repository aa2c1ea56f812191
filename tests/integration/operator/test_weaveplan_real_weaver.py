"""A WeavePlan in mode split end to end with the real processes: a real `chronoshard-node`, `chronoshard-shadow`
and `chronoshard-weaver` (the weaver at a pod-like loopback IP on port 7404, as in a shard pod), the real API
server, and the controller's passes. The plan's status carries the weaver's partitions and forecasts, its weave
and the what-if; the split is due at once (a 1-byte size threshold: both partitions are over it), so the
controller creates exactly one Reshard splitting at the weave's split key, owned by the plan, and records it; the
CLI's ``weave status|whatif|ls|state`` show the same plan and woven snapshots."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from chronoshard.operator import kube
from chronoshard.operator.podcontract import WEAVER_PORT, weave_config
from chronoshard.operator.spec.weaveplan import parse_weaveplan
from chronoshard.operator.weaveplan import controller
from chronoshard.shardnode.client.cli import main as cli_main
from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap
from kubernetes import client

from tests.integration.shardnode.procs import BIN, INSECURE, Proc, free_port, http
from tests.support.kubelet_dir import write_keyring
from tests.support.shadowstub import GROUP, VERSION, create_custom

pytestmark = [pytest.mark.integration, pytest.mark.without_operator]

HALF, TOP = 1 << 63, (1 << 64) - 1
PMAP = PartitionMap(1, 1, (Partition(0, 0, HALF - 1, 0), Partition(1, HALF, TOP, 0)))
PLAN = {"shardSetRef": {"name": "orders"}, "mode": "split", "predictionWindow": "30s", "interval": "2s",
        "sampleInterval": "250ms", "split": {"sizeThreshold": 1, "placement": "stay"},
        "retention": {"maxSnapshots": 4}}


@pytest.fixture()
def api(k8s_client):
    previous = kube._api
    kube.set_api_client(k8s_client)
    yield client.CustomObjectsApi(k8s_client)
    kube.set_api_client(previous)


def _procs(tmp: Path, ip: str, namespace: str) -> tuple[Proc, Proc, Proc]:
    keyring = tmp / "keyring"
    write_keyring(keyring, 1, {1: ("primary", os.urandom(32))})
    (tmp / "map.json").write_text(PMAP.to_json())
    (tmp / "shadow.json").write_text(json.dumps({"snapshot": {"intervalSeconds": 1, "granularity": "differential",
                                                              "fullEvery": 5}}))
    (tmp / "weave.json").write_text(json.dumps(weave_config(parse_weaveplan(PLAN), namespace, "growth")))
    volume = tmp / "volume"
    volume.mkdir()
    common = ["--keyring-dir", str(keyring), "--partition-map", str(tmp / "map.json"), "--shard-index", "0",
              *INSECURE]
    port = free_port()
    node = Proc([str(BIN / "chronoshard-node"), "--host", "127.0.0.1", "--port", str(port), *common,
                 "--data-dir", str(volume / "node")], port, tmp / "node.log")
    sport = free_port()
    shadow = Proc([str(BIN / "chronoshard-shadow"), "--host", "127.0.0.1", "--port", str(sport), *common,
                   "--node-url", node.url, "--data-dir", str(volume), "--settings", str(tmp / "shadow.json")],
                  sport, tmp / "shadow.log")
    weaver = Proc([str(BIN / "chronoshard-weaver"), "--host", ip, "--port", str(WEAVER_PORT), *common,
                   "--node-url", node.url, "--data-dir", str(volume), "--settings", str(tmp / "weave.json")],
                  WEAVER_PORT, tmp / "weaver.log")
    weaver.url = f"http://{ip}:{WEAVER_PORT}"
    return node, shadow, weaver


class Ticker(threading.Thread):
    """Writes a key every 0.2 s, so the shadow's snapshot boundaries keep passing (the weaver weaves at them)."""

    def __init__(self, node_url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.halt = node_url, threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.wait(0.2):
            http("PUT", f"{self.url}/v1/tables/ticks/blocks/t{i % 5}", b"tick")
            i += 1


def _objects(k8s_client: Any, ns: str, ip: str) -> None:
    create_custom(k8s_client, ns, "shardsets", "orders", {"shards": 1}, "ShardSet")
    create_custom(k8s_client, ns, "shadowpolicies", "orders-shadow", {"shardSetRef": {"name": "orders"}},
                  "ShadowPolicy")
    create_custom(k8s_client, ns, "weaveplans", "growth", PLAN, "WeavePlan")
    core = client.CoreV1Api(k8s_client)
    # What the ShardSet controller would have written: weave.json in the config, the map in force.
    core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="orders-config"), data={
        "weave.json": json.dumps(weave_config(parse_weaveplan(PLAN), ns, "growth"))}))
    core.create_namespaced_config_map(ns, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="orders-partitions"), data={"map.json": PMAP.to_json()}))
    core.create_namespaced_pod(ns, client.V1Pod(
        metadata=client.V1ObjectMeta(name="orders-0", labels={
            "app.kubernetes.io/name": "chronoshard", "app.kubernetes.io/instance": "orders",
            "app.kubernetes.io/component": "shard"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="weaver", image="x",
                                                             command=["chronoshard-weaver"])])))
    core.patch_namespaced_pod_status("orders-0", ns, {"status": {"podIP": ip, "podIPs": [{"ip": ip}]}})


def _cli(control_plane: Any, ns: str, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli_main(["--kubeconfig", str(control_plane.kubeconfig), "-n", ns, *argv], out=out, stdin=io.BytesIO(),
                    bout=io.BytesIO())
    return code, out.getvalue()


def test_the_plan_reports_the_real_weaver_and_splits_once(control_plane, k8s_client, api, namespace, tmp_path):
    ip = f"127.{random.randrange(1, 250)}.{random.randrange(1, 250)}.9"
    node, shadow, weaver = _procs(tmp_path, ip, namespace)
    node.start()
    ticker = Ticker(node.url)
    try:
        for i in range(40):
            assert http("PUT", f"{node.url}/v1/tables/orders/blocks/k{i}", os.urandom(300))[0] == 200
        shadow.start()
        weaver.start()
        ticker.start()
        _objects(k8s_client, namespace, ip)

        async def passes() -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
            events: list[tuple[str, str, str]] = []
            for _ in range(120):
                body = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "weaveplans", "growth")
                status, evs = await controller.step(body)
                events += evs
                await asyncio.to_thread(controller.write_status, body, status)
                if status.get("splits"):
                    return status, events
                await asyncio.sleep(0.5)
            raise AssertionError(f"no split: {status}\n{weaver.log()}")

        status, events = asyncio.run(passes())
        assert status["phase"] == "Splitting", status
        assert sorted(p["id"] for p in status["partitions"]) == [0, 1]
        assert all(p["shard"] == 0 and p["bytes"] > 0 and p["forecast"]["probability"] >= 0.75
                   for p in status["partitions"]), status["partitions"]
        (split,) = status["splits"]
        weave = next(w for w in status["weaves"] if w["partition"] == split["partition"])
        assert weave["snapshots"] >= 1 and len(weave["splitKey"]) == 16 and weave["window"] == "30s"
        assert split["splitKey"] == weave["splitKey"] and split["phase"] == "Pending"
        report = next(r for r in status["whatIf"] if r["partition"] == split["partition"])
        assert report["placement"] == {"lowerHalfShard": 0, "upperHalfShard": 0} and report["bytesToMove"] == 0
        assert [s["shard"] for s in report["shards"]] == [0]
        reasons = {e[1] for e in events}
        assert {"Forecast", "Woven", "SplitScheduled", "SplitStarted"} <= reasons, events

        reshard = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "reshards", split["reshard"])
        assert split["reshard"] == f"growth-{split['partition']}-1"
        assert reshard["spec"]["steps"] == [{"split": {"partition": split["partition"], "at": split["splitKey"]}}]
        (owner,) = reshard["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"]) == ("WeavePlan", "growth")

        # More passes: the Reshard (no controller runs it here) holds every further split back; never a second one.
        body = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "weaveplans", "growth")
        again, evs = asyncio.run(controller.step(body))
        assert "SplitStarted" not in {e[1] for e in evs}
        splitting = next(c for c in again["conditions"] if c["type"] == "Splitting")
        assert (splitting["status"], splitting["reason"]) == ("True", "SplitRunning")
        assert len(api.list_namespaced_custom_object(GROUP, VERSION, namespace, "reshards")["items"]) == 1

        # The CLI shows the same plan, and the woven snapshots from the weaver.
        code, out = _cli(control_plane, namespace, "weave", "status", "growth")
        assert code == 0 and "Splitting" in out and weave["id"] in out, out
        code, out = _cli(control_plane, namespace, "weave", "whatif", "growth")
        assert code == 0 and f"Partition {split['partition']} split at {split['splitKey']}" in out, out
        code, out = _cli(control_plane, namespace, "--endpoints", f"http://{ip}:7400", "-o", "json", "weave", "ls",
                         "growth", "--partition", str(split["partition"]), "--confidence", "0.75")
        assert code == 0, out
        found = json.loads(out)
        assert {w["half"] for w in found} == {"lower", "upper"} and all(w["shard"] == 0 for w in found)
        code, out = _cli(control_plane, namespace, "--endpoints", f"http://{ip}:7400", "-o", "json", "weave", "state",
                         found[0]["ref"], "--plan", "growth", "--values")
        assert code == 0, out
        assert json.loads(out)["id"] == found[0]["id"]
        code, out = _cli(control_plane, namespace, "weave", "state", "nonsense", "--plan", "growth")
        assert code != 0
        code, out = _cli(control_plane, namespace, "weave", "status", "absent")
        assert code != 0
    finally:
        ticker.halt.set()
        weaver.stop()
        shadow.stop()
        node.stop()
