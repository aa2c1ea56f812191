"""e2e: an existing ShardSet moves to TLS and authentication by a rolling update, and no request of a client that
already sends credentials fails (issue 13, "Upgrade without downtime"; README, "Moving an existing ShardSet to TLS
and tokens").

One local cluster started without an operator. The ShardSet's children are first written the way the previous
release's operator wrote them (the same field manager, the StatefulSet of ``main`` before TLS: plain-HTTP URLs and
probes, no tls volume, the ``default`` ServiceAccount, no security.json); the binaries of this checkout need
``--insecure`` to serve that way, which is exactly what the old image did. A client of this version, found through
Kubernetes (``Client.for_shardset``: the ``auto`` scheme, the CA from the ``NAME-ca`` ConfigMap once it exists) and
sending a TokenRequest token of a ServiceAccount with the data Role, keeps writing and reading while this version's
operator starts and the StatefulSet rolls pod after pod to HTTPS with authentication. Afterwards: no request
failed, every read returned what was last acknowledged, every acknowledged write reads back, the roll completed,
and the pods speak HTTPS only and refuse a request without a token (401).
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chronoshard.devcluster.controlplane import free_port
from chronoshard.shardnode.client import Client
from chronoshard.shardnode.client.cli_tokens import ServiceAccountToken
from chronoshard.shardnode.client.credentials import audience
from kubernetes import config

from tests.e2e.conftest import LocalCluster, down, is_ready, start_cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

NS, NAME, TABLE, SHARDS = "upgrade", "vault", "orders", 3
PRELOAD = 200
WORKLOAD_SECONDS = 420  # bound of the load loop, even if the test fails before stopping it
WORKLOAD_OPS = 60_000
PORTS = {"node": 7400, "cache": 7401, "predictor": 7402}
SECURE_FLAGS = ("--tls-dir", "--security-config")  # each takes one value


# --- the ShardSet as the previous release left it ------------------------------------------------------------


def previous_release_statefulset(sts: dict[str, Any]) -> dict[str, Any]:
    """This version's StatefulSet as the release before TLS wrote it (``git show main:operator/shardset/
    manifests.py``): no --tls-dir/--security-config, http:// internal URLs, HTTP probes, no tls volume, the
    ``default`` ServiceAccount without a token; plus ``--insecure``, which the old binaries did not need."""
    old = copy.deepcopy(sts)
    pod = old["spec"]["template"]["spec"]
    pod["serviceAccountName"], pod["automountServiceAccountToken"] = "default", False
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "tls"]
    for c in pod["containers"]:
        cmd: list[str] = []
        it = iter(c["command"])
        for arg in it:
            if arg in SECURE_FLAGS:
                next(it)
                continue
            cmd.append(arg.replace("https://", "http://"))
        c["command"] = [*cmd, "--insecure"]
        c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "tls"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            c[probe]["httpGet"]["scheme"] = "HTTP"
    return old


def previous_release_children(owner: dict[str, Any]) -> list[dict[str, Any]]:
    """Every child the previous release's operator kept for ``owner``, built from this version's manifests."""
    from chronoshard.operator.keyring import initial_keyring_data, new_kek_data, parse_kek
    from chronoshard.operator.podcontract import SECURITY_CONFIG_FILE
    from chronoshard.operator.shardset import manifests
    from chronoshard.operator.spec.shardset import parse_shardset
    from chronoshard.shardnode.keyspace.partitioning import initial_map

    spec = parse_shardset(owner["spec"])
    kek = manifests.kek_secret(owner, new_kek_data())
    keyring = manifests.keyring_secret(owner, initial_keyring_data(
        spec.key_algorithm, kek=parse_kek(kek["data"], kek["metadata"]["name"])))
    cfg = manifests.config_map(owner, spec)
    del cfg["data"][SECURITY_CONFIG_FILE]  # pods before TLS had no security config
    return [kek, keyring, cfg, manifests.partitions_config_map(owner, initial_map(spec.shards).to_json()),
            manifests.headless_service(owner), manifests.client_service(owner),
            manifests.pod_disruption_budget(owner, spec),
            previous_release_statefulset(manifests.statefulset(owner, spec))]


def apply_as_operator(cluster: LocalCluster, objs: list[dict[str, Any]]) -> None:
    """Server-side apply under the operator's field manager, as the previous release did."""
    from chronoshard.operator.naming import MANAGER

    for obj in objs:
        cluster.kubectl("apply", "--server-side", f"--field-manager={MANAGER}", "--force-conflicts", "-f", "-",
                        input=json.dumps(obj))


def secured(pod: dict[str, Any]) -> bool:
    return all("--tls-dir" in c["command"] for c in pod["spec"]["containers"])


# --- the operator of this version, started when the test says so ---------------------------------------------


class Operator:
    """``chronoshard-operator`` as a process of this test (started late: that is the upgrade)."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster, self.log = cluster, cluster.state_dir / "operator-upgrade.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chronoshard.operator.main", "--all-namespaces", "--standalone",
                 "--verbose", "--metrics-port", str(free_port())],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


# --- the client's load -----------------------------------------------------------------------------------------


@dataclass
class Load:
    """A bounded loop of one client: a write of a new value, then a read of an acknowledged key, and so on."""

    client: Client
    keys: list[str]
    acked: dict[str, bytes] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    writes: int = 0
    reads: int = 0
    slowest: float = 0.0  # the longest put or get, in seconds (a shard waited for while its pod was replaced)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def preload(self) -> None:
        for k in self.keys:
            v = f"{k}:initial".encode() * 8
            self.client.put(TABLE, k, v)
            self.acked[k] = v

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="upgrade-load", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = random.Random(13)
        deadline = time.monotonic() + WORKLOAD_SECONDS
        while not self._stop.is_set() and time.monotonic() < deadline and self.writes < WORKLOAD_OPS:
            key = rng.choice(self.keys)
            value = f"{key}:{self.writes}:{rng.random()}".encode() * rng.randint(1, 16)
            start = time.monotonic()
            try:
                self.client.put(TABLE, key, value)
                self.acked[key] = value
                self.writes += 1
            except Exception as exc:  # every failure is the test's finding, with its time and cause
                self.failures.append(f"{time.strftime('%H:%M:%S')} put {key}: {type(exc).__name__}: {exc}")
            probe = rng.choice(self.keys)
            try:
                got = self.client.get(TABLE, probe)
                self.reads += 1
                self.slowest = max(self.slowest, time.monotonic() - start)
                if got != self.acked[probe]:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} get {probe}: not the acknowledged value")
            except Exception as exc:
                self.failures.append(f"{time.strftime('%H:%M:%S')} get {probe}: {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)


def data_access(cluster: LocalCluster) -> ServiceAccountToken:
    """ServiceAccount app with the data Role on TABLE (and discovery reads); its TokenRequest token provider."""
    rbac = "rbac.authorization.k8s.io/v1"

    def bind(role: str) -> dict[str, Any]:
        return {"apiVersion": rbac, "kind": "RoleBinding", "metadata": {"name": f"app-{role}", "namespace": NS},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": NS}]}

    cluster.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app", "namespace": NS}},
        {"apiVersion": rbac, "kind": "Role", "metadata": {"name": "data", "namespace": NS},
         "rules": [{"apiGroups": ["chronoshard.io"], "resources": ["shardsets/data"], "resourceNames": [TABLE],
                    "verbs": ["get", "list", "update", "delete"]}]},
        bind("data"))
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    return ServiceAccountToken(api, NS, "app", audience(NS, NAME))


# --- the test --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    state = Path(tempfile.mkdtemp(prefix="chronoshard-upgrade-e2e-"))
    c = start_cluster(state, "--no-operator")
    try:
        yield c
    finally:
        down(state)


def shard_pods(cluster: LocalCluster) -> list[dict[str, Any]]:
    return sorted(cluster.pods(NS, f"app.kubernetes.io/instance={NAME}"), key=lambda p: p["metadata"]["name"])


def rollout_done(cluster: LocalCluster) -> bool:
    sts = cluster.get("statefulset", NAME, NS) or {}
    st, gen = sts.get("status") or {}, (sts.get("metadata") or {}).get("generation")
    pods = shard_pods(cluster)
    return (st.get("observedGeneration") == gen and st.get("updateRevision") == st.get("currentRevision")
            and st.get("updatedReplicas") == SHARDS and st.get("readyReplicas") == SHARDS
            and len(pods) == SHARDS and all(is_ready(p) and secured(p) for p in pods))


def get(url: str, ctx: ssl.SSLContext | None = None) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5, context=ctx) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_rolling_update_to_tls_without_a_failed_request(cluster: LocalCluster) -> None:
    cluster.kubectl("create", "namespace", NS)
    cluster.apply({"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShardSet",
                   "metadata": {"name": NAME, "namespace": NS},
                   "spec": {"shards": SHARDS, "tables": [{"name": TABLE}], "cache": {"size": "8Mi"},
                            "podDisruptionBudget": {"maxUnavailable": 1}}})
    apply_as_operator(cluster, previous_release_children(cluster.get("shardset", NAME, NS)))
    wait_for(lambda: len([p for p in shard_pods(cluster) if is_ready(p) and not secured(p)]) == SHARDS,
             timeout=180, interval=0.5, what="the pre-TLS pods Ready")
    old = {p["metadata"]["name"]: p["metadata"]["uid"] for p in shard_pods(cluster)}
    for pod in shard_pods(cluster):  # the previous release: plain HTTP, nobody asked
        assert get(f"http://{pod['status']['podIP']}:7401/v1/tables/{TABLE}/blocks?limit=1") == 200
    assert cluster.get("configmap", f"{NAME}-ca", NS) is None

    # Step 1 of the README: clients send credentials first (today's pods ignore them).
    tokens = data_access(cluster)
    client = Client.for_shardset(NAME, NS, kubeconfig=str(cluster.kubeconfig), token_provider=tokens,
                                 token_file="/nonexistent/token", timeout=10)
    load = Load(client, [f"k{i:04d}" for i in range(PRELOAD)])
    operator = Operator(cluster)
    try:
        load.preload()
        assert client.aio.transport.fallbacks >= 1  # auto found plain pods
        load.start()
        # The load runs before the roll begins (its failures, if any, are asserted below).
        wait_for(lambda: load.writes >= 20 or load.failures, timeout=60, interval=0.1,
                 what="the load's first writes before the roll")
        # Step 2: this version's operator takes over and the StatefulSet rolls pod after pod.
        before, began = load.writes, time.monotonic()
        operator.start()
        wait_for(lambda: rollout_done(cluster), timeout=360, interval=1, what="the roll to TLS completed")
        during, took = load.writes - before, time.monotonic() - began
        rolled = load.writes  # some load on the fully rolled ShardSet:
        wait_for(lambda: load.writes >= rolled + 20 or load.failures, timeout=60, interval=0.1,
                 what="writes to the fully rolled ShardSet")
    finally:
        load.stop()
        operator.stop()

    pods = shard_pods(cluster)
    assert all(old.get(p["metadata"]["name"]) != p["metadata"]["uid"] for p in pods), "every pod was replaced"
    assert load.failures == [], f"{len(load.failures)} failed requests during the roll:\n" + "\n".join(
        load.failures[:30])
    waits = client.aio.restart_waits
    print(f"roll: {took:.0f} s, {during} writes during it; in all {load.writes} writes, {load.reads} reads, "
          f"slowest put+get {load.slowest:.1f} s, {waits} attempts waited for a replaced pod, "
          f"{client.aio.transport.fallbacks} plain-HTTP fallbacks")
    assert during >= 50 and load.reads >= 100, (during, load.reads)
    assert waits >= SHARDS, "each replaced pod kept its shard unreachable for a while: the client waited"
    assert client.get(TABLE, load.keys[0]) == load.acked[load.keys[0]]
    assert client.batch_get(TABLE, load.keys) == load.acked  # every acknowledged write is readable
    client.close()

    # The pods end on HTTPS with authentication: plaintext is dropped, no token is 401, a token is 200.
    ca = cluster.get("configmap", f"{NAME}-ca", NS)["data"]["ca.crt"]
    ctx = ssl.create_default_context(cadata=ca)
    ctx.check_hostname = False  # reached by IP here; the client above checked the pod DNS names
    for pod in pods:
        ip = pod["status"]["podIP"]
        for port in PORTS.values():
            assert get(f"https://{ip}:{port}/readyz", ctx) == 200
            with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
                urllib.request.urlopen(f"http://{ip}:{port}/readyz", timeout=5)
        assert get(f"https://{ip}:7401/v1/tables/{TABLE}/blocks?limit=1", ctx) == 401
    after = Client.for_shardset(NAME, NS, kubeconfig=str(cluster.kubeconfig), token_provider=tokens,
                                token_file="/nonexistent/token")
    try:
        assert after.get(TABLE, load.keys[1]) == load.acked[load.keys[1]]
        assert after.aio.transport.fallbacks == 0  # every pod speaks TLS now
    finally:
        after.close()
    shardset = cluster.get("shardset", NAME, NS)
    assert (shardset.get("status") or {}).get("phase") == "Ready", shardset.get("status")
