"""e2e fixtures: a whole local cluster (control plane + operator + node agent) started by ``chronoshard-dev up``."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from chronoshard.devcluster.controlplane import free_port

from tests.support.s3 import s3_server  # noqa: F401  (SeaweedFS for the disaster-recovery test, started on use)
from tests.support.waiting import wait_for

PROBE_SERVER = Path(__file__).resolve().parent / "probe_server.py"
# Every operator of the e2e tests (the one `chronoshard-dev up` starts, and ``Operator``) reports a policy's shard
# figures every second instead of every 10 s (operator/settings.py's test seam): the tests wait on those figures.
OPERATOR_ENV = {"CHRONOSHARD_TEST_POLL_SECONDS": "1"}


def dev(state: Path, *args: str, timeout: float = 300, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess:
    """Run ``chronoshard-dev`` (this checkout's) with ``--state-dir state`` (``env``: added to the environment)."""
    return subprocess.run(
        [sys.executable, "-m", "chronoshard.devcluster.cli", "--state-dir", str(state), *args],
        capture_output=True, text=True, timeout=timeout, check=False,
        env=None if env is None else {**os.environ, **env},
    )


def down(state: Path) -> subprocess.CompletedProcess:
    """``chronoshard-dev down``, purging the state dir in the same call unless $CHRONOSHARD_KEEP_E2E is set (one
    process start instead of a ``down`` and then a ``down --purge``)."""
    return dev(state, "down", *(() if os.environ.get("CHRONOSHARD_KEEP_E2E") else ("--purge",)))


@dataclass
class LocalCluster:
    """A running local cluster: its state dir and helpers to drive it."""

    state_dir: Path
    kubeconfig: Path
    bin_dir: Path
    console_port: int | None = None  # the recovery console's, when `up` started it (with the operator)

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, timeout=60, check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}")
        return proc

    def apply(self, *objs: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        proc = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return json.loads(self.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout)["items"]

    def pod_dir(self, pod: dict[str, Any]) -> Path:
        return self.state_dir / "agent" / "pods" / pod["metadata"]["uid"]


class Operator:
    """``chronoshard-operator`` as a process we can kill and restart, with a controllable clock offset."""

    def __init__(self, kubeconfig: Path, state: Path, *, verbose: bool = True, log_name: str = "operator-test.log"
                 ) -> None:
        self.kubeconfig = kubeconfig
        self.clock_file = state / "clock-offset"
        self.clock_file.write_text("0")
        self.log = state / log_name
        self.verbose = verbose  # benchmarks leave it off: debug logging costs the operator CPU
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.metrics_port = free_port()

    def start(self) -> None:
        env = {**os.environ, **OPERATOR_ENV, "KUBECONFIG": str(self.kubeconfig),
               "CHRONOSHARD_CLOCK_OFFSET_FILE": str(self.clock_file)}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chronoshard.operator.main", "--all-namespaces", "--standalone",
                 *(["--verbose"] if self.verbose else []), "--metrics-port", str(self.metrics_port)],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.starts += 1

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the operator's Prometheus metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        _, body = http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def advance(self, seconds: float) -> None:
        self.clock_file.write_text(str(float(self.clock_file.read_text()) + seconds))


def is_ready(pod: dict[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return pod["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conds
    )


def http_get(url: str, timeout: float = 3, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_put(url: str, body: bytes, context: ssl.SSLContext | None = None) -> int:
    req = urllib.request.Request(url, data=body, method="PUT")
    with urllib.request.urlopen(req, timeout=3, context=context) as resp:
        return resp.status


_TLS: dict[tuple[str, str, str, str], ssl.SSLContext] = {}


def data_client_args(cluster: LocalCluster, namespace: str, shardset: str, tables: list[str],
                     account: str = "e2e-data") -> dict[str, Any]:
    """What a test's chronoshard client needs to reach a ShardSet as an application does: ServiceAccount
    ``account`` (default ``e2e-data``) bound to a Role on ``tables`` (every data verb), a TokenRequest token
    provider with the ShardSet's audience, and the CA from the ``NAME-ca`` ConfigMap. Returns
    ``Client``/``AsyncClient`` kwargs."""
    from chronoshard.shardnode.client.cli_tokens import ServiceAccountToken
    from chronoshard.shardnode.client.credentials import audience
    from kubernetes import config

    rbac = "rbac.authorization.k8s.io/v1"
    cluster.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": namespace}},
        {"apiVersion": rbac, "kind": "Role", "metadata": {"name": account, "namespace": namespace},
         "rules": [{"apiGroups": ["chronoshard.io"], "resources": ["shardsets/data"], "resourceNames": tables,
                    "verbs": ["get", "list", "update", "delete"]}]},
        {"apiVersion": rbac, "kind": "RoleBinding", "metadata": {"name": account, "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]})
    cm = cluster.get("configmap", f"{shardset}-ca", namespace)
    assert cm is not None, f"ConfigMap {namespace}/{shardset}-ca"
    ca = Path(tempfile.mkdtemp(prefix="shardset-ca-")) / "ca.crt"
    ca.write_text(cm["data"]["ca.crt"])
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    tokens = ServiceAccountToken(api, namespace, account, audience(namespace, shardset))
    return {"ca": ca, "token_provider": tokens, "token_file": "/nonexistent/token"}


def operator_tls(cluster: LocalCluster, namespace: str, shardset: str) -> ssl.SSLContext:
    """A client context for a ShardSet's pods with the operator's identity (CN chronoshard:operator, signed by the
    ShardSet's CA from Secret NAME-ca, as the operator signs its own): administrative endpoints and /metrics."""
    return _identity_tls(cluster, namespace, shardset, "operator")


def pod_tls(cluster: LocalCluster, namespace: str, shardset: str) -> ssl.SSLContext:
    """A client context with the ShardSet pods' own identity (CN chronoshard:shardset:NS:NAME, what one pod of the
    ShardSet presents to another): allowed on every endpoint, for tests that reach a pod's node or cache directly."""
    return _identity_tls(cluster, namespace, shardset, "pod")


def _identity_tls(cluster: LocalCluster, namespace: str, shardset: str, identity: str) -> ssl.SSLContext:
    """Pods are reached by IP: the chain is verified against the ShardSet CA, the name is not."""
    from chronoshard.operator import certs

    memo = (str(cluster.state_dir), namespace, shardset, identity)
    if memo in _TLS:
        return _TLS[memo]
    secret = cluster.get("secret", f"{shardset}-ca", namespace)
    assert secret is not None, f"Secret {namespace}/{shardset}-ca"
    ca = certs.KeyPair(base64.b64decode(secret["data"]["ca.crt"]), base64.b64decode(secret["data"]["ca.key"]))
    now = datetime.now(UTC)
    pair = (certs.issue_operator_certificate(ca, now) if identity == "operator" else
            certs.issue(ca, certs.pod_identity(namespace, shardset), now, certs.SERVING_LIFETIME, server=False))
    d = Path(tempfile.mkdtemp(prefix=f"{identity}-cert-"))
    (d / "tls.crt").write_bytes(pair.cert)
    (d / "tls.key").write_bytes(pair.key)
    ctx = ssl.create_default_context(cadata=ca.cert.decode())
    ctx.check_hostname = False
    ctx.load_cert_chain(d / "tls.crt", d / "tls.key")
    _TLS[memo] = ctx
    return ctx


def start_cluster(state: Path, *extra: str, env: dict[str, str] | None = None) -> LocalCluster:
    """``chronoshard-dev up`` in ``state``; the recovery console (when started) on a free port, not the default
    7410, which another cluster on the machine (a parallel worker, another checkout's tests) may hold."""
    console_port = None if "--no-operator" in extra or "--no-console" in extra else free_port()
    port_args = [] if console_port is None else ["--console-port", str(console_port)]
    up = dev(state, "up", "--backoff-base", "1", *port_args, *extra, env={**OPERATOR_ENV, **(env or {})})
    assert up.returncode == 0, f"chronoshard-dev up failed:\n{up.stdout}\n{up.stderr}"
    info = json.loads((state / "dev.json").read_text())["controlplane"]
    return LocalCluster(state_dir=state, kubeconfig=Path(info["kubeconfig"]), bin_dir=Path(info["bin_dir"]),
                        console_port=console_port)


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    """``chronoshard-dev up`` in a temporary state dir for the session; ``down`` (checked) afterwards."""
    state = Path(tempfile.mkdtemp(prefix="chronoshard-dev-e2e-"))
    cluster = start_cluster(state)
    try:
        yield cluster
    finally:
        stopped = down(state)
        if stopped.returncode != 0:
            raise AssertionError(f"chronoshard-dev down failed:\n{stopped.stdout}\n{stopped.stderr}")


@pytest.fixture()
def e2e_namespace(local_cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace in the local cluster, deleted afterwards."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    local_cluster.kubectl("create", "namespace", name)
    yield name
    local_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@dataclass
class ShadowedShardSet:
    """A local cluster with the operator running, a one-shard ShardSet and its ShadowPolicy, the pod ready with its
    shadow container (``shadowed_shardset``)."""

    cluster: LocalCluster
    operator: Operator
    state: Path


@contextlib.contextmanager
def shadowed_shardset(prefix: str, namespace: str, name: str, policy: str,
                      policy_spec: dict[str, Any]) -> Iterator[ShadowedShardSet]:
    """Start a local cluster and the operator, create ``namespace`` with ShardSet ``name`` (1 shard) and ShadowPolicy
    ``policy`` (``policy_spec`` beside its shardSetRef), wait for the shadow container; stop and purge after."""
    state = Path(tempfile.mkdtemp(prefix=prefix))
    cluster = start_cluster(state, "--no-operator")
    operator = Operator(cluster.kubeconfig, state)
    operator.start()
    try:
        cluster.kubectl("create", "namespace", namespace)
        cluster.apply(
            {"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShardSet",
             "metadata": {"name": name, "namespace": namespace}, "spec": {"shards": 1, "cache": {"size": "8Mi"}}},
            {"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShadowPolicy",
             "metadata": {"name": policy, "namespace": namespace},
             "spec": {"shardSetRef": {"name": name}, **policy_spec}})

        def shadow_running() -> bool:
            pods = cluster.pods(namespace, f"app.kubernetes.io/instance={name}")
            names = [c["name"] for c in pods[0]["spec"]["containers"]] if len(pods) == 1 else []
            return "shadow" in names and is_ready(pods[0])

        wait_for(shadow_running, timeout=240, interval=0.5, what="the shard pod ready with its shadow container")
        yield ShadowedShardSet(cluster, operator, state)
    finally:
        operator.stop()
        down(state)
        if not os.environ.get("CHRONOSHARD_KEEP_E2E"):
            shutil.rmtree(state, ignore_errors=True)  # the purge leaves what a test wrote there (its logs)
