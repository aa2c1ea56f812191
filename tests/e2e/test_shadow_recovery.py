"""Disaster recovery on the local cluster: a ShardSet whose ShadowPolicy sends the cold tier to S3-compatible
object storage (a real SeaweedFS on 127.0.0.1) is deleted with its volumes, and a new ShardSet bootstrapped from
the bucket with the source's keyring and KEK Secrets serves every block the source held.

The cold tier holds history older than ``retention.warm``, compacted to the hour, so a real run would wait for an
hour to pass before anything is exported. The node agent is started with the test clock
(``$CHRONOSHARD_CLOCK_OFFSET_FILE``, shardnode/serving/clock.py), and moving it two hours forward makes the shadow's
housekeeping see the writes as two hours old: compacted to cold and exported on its next pass.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from chronoshard.shardnode.client import Client, Endpoint
from chronoshard.shardnode.client.discovery import pod_dns_name
from chronoshard.shardnode.keyspace.partitioning import PartitionMap

from tests.e2e.conftest import LocalCluster, Operator, data_client_args, down, is_ready, pod_tls, start_cluster
from tests.support.s3 import S3Server
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

NS = "dr-e2e"
SOURCE, RESTORED = "ledger", "ledger-restored"
TABLE = "orders"
PREFIX = "backups"


@dataclass
class Env:
    cluster: LocalCluster
    clock: Path

    def pods(self, name: str) -> list[dict[str, Any]]:
        return self.cluster.pods(NS, f"app.kubernetes.io/instance={name}")

    def client(self, name: str) -> Client:
        cm = self.cluster.get("configmap", f"{name}-partitions", NS)
        assert cm is not None
        pmap = PartitionMap.from_json(cm["data"]["map.json"])
        ip = self.pods(name)[0]["status"]["podIP"]
        return Client(pmap, [Endpoint(f"{ip}:7401", "https", pod_dns_name(name, 0, NS))], timeout=10,
                      **data_client_args(self.cluster, NS, name, [TABLE]))

    def shadow_status(self) -> dict[str, Any]:
        import urllib.request

        ip = self.pods(SOURCE)[0]["status"]["podIP"]
        with urllib.request.urlopen(f"https://{ip}:7403/v1/status", timeout=10,
                                    context=pod_tls(self.cluster, NS, SOURCE)) as resp:
            return json.loads(resp.read())


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    state = Path(tempfile.mkdtemp(prefix="chronoshard-dr-e2e-"))
    clock = state / "data-plane-clock"  # the operator process keeps its own (state/clock-offset)
    clock.write_text("0")
    cluster = start_cluster(state, "--no-operator", env={"CHRONOSHARD_CLOCK_OFFSET_FILE": str(clock)})
    operator = Operator(cluster.kubeconfig, state)
    operator.start()
    try:
        cluster.kubectl("create", "namespace", NS)
        yield Env(cluster, clock)
    finally:
        operator.stop()
        down(state)


def _cold_storage(s3: S3Server) -> dict[str, Any]:
    return {"endpoint": s3.endpoint, "bucket": s3.bucket, "prefix": PREFIX, "forcePathStyle": True,
            "credentialsSecret": {"name": "objectstore"}}


def _why_pods_remain(env: Env) -> str:
    """What stands between a deleted ShardSet and its pod being gone (kept for a failure message)."""
    sts = env.cluster.get("statefulset", SOURCE, NS)
    lines = [f"statefulset: {'absent' if sts is None else json.dumps(sts['metadata'])[:800]}"]
    for pod in env.pods(SOURCE):
        meta = {k: pod["metadata"].get(k) for k in ("deletionTimestamp", "deletionGracePeriodSeconds",
                                                    "ownerReferences", "finalizers")}
        lines.append(f"pod {pod['metadata']['name']}: {json.dumps(meta)} phase {pod['status'].get('phase')}")
        lines.append(json.dumps(pod["status"].get("containerStatuses"))[:1500])
    for name in ("kube-controller-manager.log", "nodeagent.log"):
        for log in env.cluster.state_dir.rglob(name):
            text = log.read_text(errors="replace").splitlines()
            gc = [line for line in text if "garbagecollector" in line or "graph_builder" in line]
            lines.append(f"--- {log} (garbage collector, then tail)\n" + "\n".join(gc[-25:] + ["..."] + text[-15:]))
    return "\n".join(lines)


def _ready(env: Env, name: str, containers: int) -> bool:
    pods = env.pods(name)
    return len(pods) == 1 and len(pods[0]["spec"]["containers"]) == containers and is_ready(pods[0])


def test_a_shardset_deleted_with_its_volumes_is_restored_from_the_bucket(env: Env, s3_server: S3Server) -> None:
    s3 = s3_server
    env.cluster.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "objectstore", "namespace": NS},
         "stringData": {"accessKeyId": s3.credentials.access_key_id,
                        "secretAccessKey": s3.credentials.secret_access_key}},
        {"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShardSet", "metadata": {"name": SOURCE, "namespace": NS},
         "spec": {"shards": 1, "tables": [{"name": TABLE}]}},
        {"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShadowPolicy",
         "metadata": {"name": f"{SOURCE}-shadow", "namespace": NS},
         "spec": {"shardSetRef": {"name": SOURCE}, "tables": [TABLE], "snapshot": {"interval": "5s"},
                  "retention": {"hot": "1m", "warm": "1m", "cold": "720h"}, "coldStorage": _cold_storage(s3)}})
    wait_for(lambda: _ready(env, SOURCE, 4), timeout=240, interval=0.5, what="the source pod with its shadow")

    client = env.client(SOURCE)
    written: dict[str, bytes] = {}
    for i in range(300):
        key = f"order-{i % 120:04d}"  # some keys written more than once: the last value must come back
        written[key] = f"{key} v{i} ".encode() * (1 + i % 7)
        client.put(TABLE, key, written[key])
    last = client.put(TABLE, "order-9999", b"the last write")["lsn"]
    written["order-9999"] = b"the last write"
    client.close()
    wait_for(lambda: env.shadow_status()["capture"].get("cursor", 0) >= last, timeout=60, interval=0.5,
             what="the shadow to capture every write")

    # Two hours later, as far as the housekeeping can tell: everything is cold and goes to the bucket.
    env.clock.write_text(str(2 * 3600))

    def exported() -> dict[str, Any] | None:
        st = env.shadow_status()
        done = (st["tiers"]["cold"]["versions"] >= len(written) and st["tiers"]["hot"]["versions"] == 0
                and (st.get("maintenance") or {}).get("coldExportedSegment") is not None)
        return None if not done else st

    try:
        wait_for(exported, timeout=120, interval=1, what="the history compacted to cold and exported")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nshadow status: {json.dumps(env.shadow_status())[:3000]}") from None
    # The clock goes back so nothing else (the restored pod's housekeeping included) runs two hours ahead.
    env.clock.write_text("0")

    # The disaster: the ShardSet and its volumes are gone. Its keyring and KEK Secrets outlive it on purpose.
    env.cluster.kubectl("delete", "shardset", SOURCE, "-n", NS, "--wait=true", "--timeout=120s")
    # On a loaded machine the garbage collector of this minute-old control plane missed the ShardSet's deletion
    # (its log: no REST mapping for ShardSet when the StatefulSet appeared; it watches a CRD only from a later
    # discovery sync), and the StatefulSet stayed. The disaster is not about the collector: the StatefulSet goes
    # explicitly, and its pods by the collection of built-in kinds, which it watches from the start.
    env.cluster.kubectl("delete", "statefulset", SOURCE, "-n", NS, "--ignore-not-found", "--wait=true",
                        "--timeout=120s")
    try:
        wait_for(lambda: not env.pods(SOURCE), timeout=120, interval=0.5, what="the source pod gone")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_why_pods_remain(env)}") from None
    env.cluster.kubectl("delete", "pvc", "-n", NS, "-l", f"app.kubernetes.io/instance={SOURCE}", "--wait=true",
                        "--timeout=120s")
    assert env.cluster.get("secret", f"{SOURCE}-keyring", NS) is not None
    assert env.cluster.get("secret", f"{SOURCE}-kek", NS) is not None

    env.cluster.apply(
        {"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShardSet", "metadata": {"name": RESTORED, "namespace": NS},
         "spec": {"shards": 1, "tables": [{"name": TABLE}], "bootstrap": {"fromShadow": {
             "coldStorage": _cold_storage(s3), "source": {"name": SOURCE},
             "keyringSecret": {"name": f"{SOURCE}-keyring"}, "kekSecret": {"name": f"{SOURCE}-kek"}}}}})
    wait_for(lambda: _ready(env, RESTORED, 3), timeout=240, interval=0.5, what="the restored pod ready")
    pod = env.pods(RESTORED)[0]
    init = next(c for c in pod["status"]["initContainerStatuses"] if c["name"] == "bootstrap")
    assert init["state"]["terminated"]["exitCode"] == 0

    restored = env.client(RESTORED)
    try:
        for key, value in written.items():
            assert restored.get(TABLE, key) == value, key
        # The restored ShardSet is an ordinary one: it takes writes.
        restored.put(TABLE, "after-recovery", b"new")
        assert restored.get(TABLE, "after-recovery") == b"new"
    finally:
        restored.close()
