"""WeavePlan end to end on the local cluster (docs/weaving.md, #20): a real operator process, a 2-shard ShardSet
whose pods run node, cache, predictor, shadow and weaver processes, a ShadowPolicy (2-second snapshots) and a
WeavePlan in mode split with short intervals and a size threshold the workload crosses within the test.

An application grows one partition (new keys whose keyspace ids all fall in partition 0, written through the
cache). The plan's status then shows the forecast (partition 0 likely to cross, partition 1 not), a weave of
partition 0 with woven points, and the what-if (the upper half moved to the least-loaded shard 1, the bytes that
moves); the operator's gauges carry the probability. ``mode: split`` creates the Reshard (split at the weave's
key, move of the new partition to shard 1), which completes: the map has three partitions, the new one on shard
1, and every key written is read back with its value.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chronoshard.shardnode.client import Client
from chronoshard.shardnode.keyspace.partitioning import PartitionMap, keyspace_id

from tests.e2e.conftest import LocalCluster, Operator, data_client_args, dev, is_ready, start_cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

NS, NAME, TABLE, PLAN = "weave-e2e", "orders", "orders", "growth"
HALF = 1 << 63
VALUE_BYTES = 2048
PLAN_SPEC = {"shardSetRef": {"name": NAME}, "mode": "split", "predictionWindow": "2m", "interval": "4s",
             "sampleInterval": "1s", "confidenceThreshold": 0.75,
             "split": {"sizeThreshold": "1Mi", "loadThreshold": 100000, "placement": "leastLoaded"},
             "retention": {"maxSnapshots": 4}}


@dataclass
class Env:
    cluster: LocalCluster
    operator: Operator
    client_args: dict[str, Any] = field(default_factory=dict)

    def plan(self) -> dict[str, Any]:
        obj = self.cluster.get("weaveplan", PLAN, NS)
        assert obj is not None
        return obj

    def pmap(self) -> PartitionMap:
        cm = self.cluster.get("configmap", f"{NAME}-partitions", NS)
        assert cm is not None
        return PartitionMap.from_json(cm["data"]["map.json"])


def _all_ready(cluster: LocalCluster) -> bool:
    pods = cluster.pods(NS, f"app.kubernetes.io/instance={NAME}")
    return len(pods) == 2 and all(
        {"shadow", "weaver"} <= {c["name"] for c in p["spec"]["containers"]} and is_ready(p) for p in pods)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    state = Path(tempfile.mkdtemp(prefix="chronoshard-weave-e2e-"))
    cluster = start_cluster(state, "--no-operator")
    operator = Operator(cluster.kubeconfig, state)
    operator.start()
    try:
        cluster.kubectl("create", "namespace", NS)
        cluster.apply(
            {"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShardSet", "metadata": {"name": NAME, "namespace": NS},
             # gracePeriod: the plan's Reshards take it, as rebalance Reshards do (the default 5 m outlasts a test).
             "spec": {"shards": 2, "cache": {"size": "8Mi"}, "partitioning": {"gracePeriod": "2s"}}},
            {"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShadowPolicy",
             "metadata": {"name": f"{NAME}-shadow", "namespace": NS},
             "spec": {"shardSetRef": {"name": NAME}, "snapshot": {"interval": "2s"}}},
            {"apiVersion": "chronoshard.io/v1alpha1", "kind": "WeavePlan", "metadata": {"name": PLAN, "namespace": NS},
             "spec": PLAN_SPEC})
        wait_for(lambda: _all_ready(cluster), timeout=240, interval=0.5,
                 what="both shard pods ready with their shadow and weaver containers")
        yield Env(cluster, operator, data_client_args(cluster, NS, NAME, [TABLE]))
    finally:
        operator.stop()
        dev(state, "down")
        if not os.environ.get("CHRONOSHARD_KEEP_E2E"):
            dev(state, "down", "--purge")
            shutil.rmtree(state, ignore_errors=True)


def _lower_half_keys(count: int) -> list[str]:
    """Keys whose keyspace ids fall in partition 0 (the lower half of the keyspace, on shard 0)."""
    keys: list[str] = []
    i = 0
    while len(keys) < count:
        key = f"grow-{i:06}"
        if keyspace_id(TABLE, key) < HALF:
            keys.append(key)
        i += 1
    return keys


class Grower(threading.Thread):
    """Writes new keys of partition 0 one after another (about 2 KiB each), remembering every acknowledged value."""

    def __init__(self, client: Client) -> None:
        super().__init__(daemon=True)
        self.client, self.halt = client, threading.Event()
        self.written: dict[str, bytes] = {}
        self.errors: list[str] = []

    def run(self) -> None:
        deadline = time.monotonic() + 240  # bounded even if the test fails before stopping it
        for key in _lower_half_keys(100_000):
            if self.halt.is_set() or time.monotonic() > deadline:
                return
            value = os.urandom(VALUE_BYTES)
            try:
                self.client.put(TABLE, key, value)
            except Exception as exc:  # a cutover's retry exhausted: recorded, the test fails on it
                self.errors.append(f"{key}: {exc}")
                continue
            self.written[key] = value
            time.sleep(0.02)


def _split_status(env: Env) -> dict[str, Any] | None:
    status = env.plan().get("status") or {}
    return status if status.get("splits") else None


def test_the_plan_forecasts_weaves_reports_and_splits_the_growing_partition(env: Env) -> None:
    doc = env.cluster.get("configmap", f"{NAME}-config", NS)
    assert doc is not None and '"mode": "split"' in doc["data"]["weave.json"]
    with Client.for_shardset(NAME, NS, kubeconfig=str(env.cluster.kubeconfig), **env.client_args) as client:
        grower = Grower(client)
        grower.start()
        try:
            status = wait_for(lambda: _split_status(env), timeout=150, interval=1.0,
                              what="the WeavePlan to forecast, weave and create its Reshard")
        finally:
            grower.halt.set()
            grower.join(30)

        parts = {p["id"]: p for p in status["partitions"]}
        assert parts[0]["shard"] == 0 and parts[0]["bytes"] > 0 and parts[0]["growthBytesPerHour"] > 0
        assert parts[0]["forecast"]["probability"] >= 0.75 and parts[0]["forecast"]["reason"] == "size"
        assert parts[1]["forecast"]["probability"] < 0.75
        weave = next(w for w in status["weaves"] if w["partition"] == 0)
        assert weave["shard"] == 0 and weave["snapshots"] >= 1 and weave["sourceLsn"] is not None
        report = next(r for r in status["whatIf"] if r["partition"] == 0)
        assert report["placement"] == {"lowerHalfShard": 0, "upperHalfShard": 1}
        assert report["bytesToMove"] > 0 and report["expectedCutoverPauseMs"] > 0
        rows = {r["shard"]: r for r in report["shards"]}
        assert rows[0]["bytesAfter"] < rows[0]["bytesBefore"] and rows[1]["bytesAfter"] > rows[1]["bytesBefore"]
        assert env.operator.metric("chronoshard_weaveplan_split_probability", weaveplan=PLAN,
                                   partition="0") >= 0.75

        split = status["splits"][0]
        assert split["partition"] == 0 and split["splitKey"] == weave["splitKey"]
        reshard = env.cluster.get("reshard", split["reshard"], NS)
        assert reshard is not None
        assert reshard["spec"]["steps"] == [{"split": {"partition": 0, "at": weave["splitKey"]}},
                                            {"move": {"partition": 2, "toShard": 1}}]
        assert reshard["spec"]["gracePeriod"] == "2s"
        done = wait_for(lambda: (r := env.cluster.get("reshard", split["reshard"], NS)) and
                        (r.get("status") or {}).get("phase") in ("Completed", "Failed", "RolledBack") and r,
                        timeout=120, interval=1.0, what="the plan's Reshard to finish")
        assert done["status"]["phase"] == "Completed", done["status"]
        pmap = env.pmap()
        assert {p.id: p.shard for p in pmap.partitions} == {0: 0, 1: 1, 2: 1}
        assert next(p for p in pmap.partitions if p.id == 2).start == int(weave["splitKey"], 16)
        recorded = wait_for(lambda: (s := (env.plan().get("status") or {}).get("splits")) and
                            s[0].get("phase") == "Completed" and s, timeout=60, interval=1.0,
                            what="the plan's split row to show the Reshard completed")
        assert recorded[0]["reshard"] == split["reshard"]
        ready = wait_for(lambda: next((c for c in (env.plan().get("status") or {}).get("conditions") or []
                                       if c["type"] == "Ready" and c["status"] == "True"), None),
                         timeout=60, interval=1.0, what="the plan Ready with both weavers reporting")
        assert ready["reason"] == "WeaversReporting"

        assert grower.errors == [] and len(grower.written) > 100
        for key, value in grower.written.items():
            assert client.get(TABLE, key) == value, key

    events = env.cluster.kubectl("get", "events", "-n", NS, "--field-selector",
                                 f"involvedObject.kind=WeavePlan,involvedObject.name={PLAN}", "-o",
                                 "jsonpath={.items[*].reason}").stdout.split()
    assert {"Forecast", "Woven", "SplitScheduled", "SplitStarted"} <= set(events), events
