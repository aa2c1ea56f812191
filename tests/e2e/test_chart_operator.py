"""e2e: pods get their ServiceAccount's credentials, so the chart's operator pod really runs on the local cluster.

One local cluster started without its own operator (``--no-operator``): the only operator is the one
``helm install`` deploys, running as a pod of the node agent and signed in as the chart's ServiceAccount.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import subprocess
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.waiting import wait_for
from tests.unit.charts.helpers import CHART, tools_bin

from .conftest import LocalCluster, down, http_get, is_ready, start_cluster

pytestmark = pytest.mark.e2e

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "shardset.yaml"
RELEASE, RELEASE_NS = "chronoshard", "chronoshard-system"
OPERATOR_SELECTOR = f"app.kubernetes.io/name=chronoshard-operator,app.kubernetes.io/instance={RELEASE}"

# Runs inside the pod with nothing but what the agent gives it: the kubernetes client must find $KUBECONFIG.
CLIENT_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    if "KUBECONFIG" not in os.environ:
        sys.exit("no KUBECONFIG")
    config.load_incluster_config() if os.environ.get("KUBERNETES_SERVICE_HOST") else config.load_kube_config()
    ns = config.list_kube_config_contexts()[1]["context"]["namespace"]
    core = client.CoreV1Api()
    def status(call):
        try:
            call()
            return 200
        except ApiException as exc:
            return exc.status
    print(json.dumps({
        "namespace": ns,
        "configmaps": sorted(c.metadata.name for c in core.list_namespaced_config_map(ns).items),
        "secrets": status(lambda: core.list_namespaced_secret(ns)),
        "other_ns": status(lambda: core.list_namespaced_config_map("kube-system")),
    }))
""")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A local cluster of this module's own, without the dev operator (the chart brings one)."""
    state = Path(tempfile.mkdtemp(prefix="chronoshard-dev-chart-"))
    try:
        yield start_cluster(state, "--no-operator")
    finally:
        stopped = down(state)
        if not os.environ.get("CHRONOSHARD_KEEP_E2E"):
            shutil.rmtree(state, ignore_errors=True)
        assert stopped.returncode == 0, f"chronoshard-dev down failed:\n{stopped.stdout}\n{stopped.stderr}"


def _namespace(cluster: LocalCluster) -> str:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    return name


def _pod(cluster: LocalCluster, ns: str, name: str) -> dict[str, Any] | None:
    return cluster.get("pod", name, ns)


def _client_pod(name: str, sa: str, automount: bool | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "serviceAccountName": sa,
        "restartPolicy": "Never",
        "containers": [{"name": "client", "image": "python", "command": ["python", "-c", CLIENT_SCRIPT]}],
    }
    if automount is not None:
        spec["automountServiceAccountToken"] = automount
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def _finished(cluster: LocalCluster, ns: str, name: str) -> dict[str, Any] | None:
    pod = _pod(cluster, ns, name)
    return pod if pod and pod.get("status", {}).get("phase") in ("Succeeded", "Failed") else None


def test_pod_lists_its_namespace_with_its_service_account_token_and_rbac_applies(cluster: LocalCluster) -> None:
    ns = _namespace(cluster)
    try:
        role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "read-cm", "namespace": ns},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]}
        binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "read-cm", "namespace": ns},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-cm"},
                   "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]}
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "visible", "namespace": ns},
              "data": {"k": "v"}}
        sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader", "namespace": ns}}
        quiet = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "quiet", "namespace": ns},
                 "automountServiceAccountToken": False}
        cluster.apply(sa, quiet, role, binding, cm)
        for name, account, automount in (("reader", "reader", None), ("no-sa-token", "quiet", None),
                                         ("opted-out", "reader", False)):
            obj = _client_pod(name, account, automount)
            obj["metadata"]["namespace"] = ns
            cluster.apply(obj)

        reader = wait_for(
            lambda: _finished(cluster, ns, "reader"),
            timeout=90, interval=0.5, what="reader pod finished",
        )
        logs = cluster.kubectl("logs", "reader", "-n", ns).stdout
        assert reader["status"]["phase"] == "Succeeded", logs
        got = json.loads(logs.strip().splitlines()[-1])
        assert got["namespace"] == ns
        assert "visible" in got["configmaps"]  # allowed by its Role
        assert got["secrets"] == 403 and got["other_ns"] == 403  # not allowed: the token carries only its RBAC

        # The standard files, as kubelet projects them, next to the kubeconfig.
        sa_dir = cluster.pod_dir(reader) / "serviceaccount"
        assert (sa_dir / "namespace").read_text() == ns
        assert (sa_dir / "ca.crt").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
        token = (sa_dir / "token").read_text()
        config = yaml.safe_load((sa_dir / "kubeconfig").read_text())
        assert config["users"][0]["user"]["token"] == token
        whoami = cluster.kubectl("auth", "whoami", "-o", "json", f"--token={token}")
        # Bound to this pod (dies with it), and requested like kubelet's: renew after ~1 h.
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        assert claims["kubernetes.io"]["pod"] == {"name": "reader", "uid": reader["metadata"]["uid"]}
        assert claims["kubernetes.io"]["warnafter"] - claims["iat"] == 3607
        assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:reader"

        # No credentials when the ServiceAccount or the pod opts out.
        for name in ("no-sa-token", "opted-out"):
            pod = wait_for(lambda n=name: _finished(cluster, ns, n), timeout=90, interval=0.5, what=f"{name} finished")
            assert pod["status"]["phase"] == "Failed"
            assert not (cluster.pod_dir(pod) / "serviceaccount").exists()
            assert "no KUBECONFIG" in cluster.kubectl("logs", name, "-n", ns).stdout
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _helm(cluster: LocalCluster, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([str(tools_bin() / "helm"), f"--kubeconfig={cluster.kubeconfig}", *args],
                         capture_output=True, text=True, timeout=240, env=env, check=False)
    assert out.returncode == 0, f"helm {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out


def _ready_operator(cluster: LocalCluster, exclude: str = "") -> dict[str, Any] | None:
    pods = [p for p in cluster.pods(RELEASE_NS, OPERATOR_SELECTOR)
            if p["metadata"]["uid"] != exclude and not p["metadata"].get("deletionTimestamp")]
    return pods[0] if len(pods) == 1 and is_ready(pods[0]) else None


def _shard_set(cluster: LocalCluster, ns: str, name: str, shards: int) -> None:
    obj = copy.deepcopy(yaml.safe_load(SAMPLE.read_text()))
    obj["metadata"].update(name=name, namespace=ns)
    obj["spec"]["shards"] = shards
    cluster.apply(obj)


def _ready_shards(cluster: LocalCluster, ns: str, name: str) -> int:
    return len([p for p in cluster.pods(ns, "") if p["metadata"]["name"].startswith(f"{name}-") and is_ready(p)])


def test_helm_installed_operator_pod_runs_and_reconciles_through_an_upgrade(cluster: LocalCluster,
                                                                             tmp_path: Path) -> None:
    env = {**os.environ, "HELM_CONFIG_HOME": str(tmp_path / "config"), "HELM_DATA_HOME": str(tmp_path / "data"),
           "HELM_CACHE_HOME": str(tmp_path / "cache")}
    ns = _namespace(cluster)
    installed = False
    try:
        _helm(cluster, env, "install", RELEASE, str(CHART), "-n", RELEASE_NS, "--create-namespace")
        installed = True
        operator = wait_for(
            lambda: _ready_operator(cluster),
            timeout=150, interval=0.5, what="the chart's operator pod Running and Ready",
        )
        cluster.kubectl("-n", RELEASE_NS, "rollout", "status", f"deployment/{RELEASE}", "--timeout=60s")
        ip = operator["status"]["podIP"]
        # Ready means its probes answered: Kopf's health endpoint and the metrics endpoint, at the pod IP.
        assert http_get(f"http://{ip}:8080/healthz")[0] == 200
        assert http_get(f"http://{ip}:9090/metrics")[0] == 200
        (status,) = operator["status"]["containerStatuses"]
        assert status["restartCount"] == 0, cluster.kubectl("logs", operator["metadata"]["name"], "-n", RELEASE_NS,
                                                            "--previous", check=False).stdout[-3000:]
        # It signs in as the chart's ServiceAccount, so the API server applies the chart's RBAC to it.
        sa_kubeconfig = cluster.pod_dir(operator) / "serviceaccount" / "kubeconfig"
        whoami = cluster.kubectl(f"--kubeconfig={sa_kubeconfig}", "auth", "whoami", "-o", "json")
        sa = operator["spec"]["serviceAccountName"]
        assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == \
            f"system:serviceaccount:{RELEASE_NS}:{sa}"
        assert cluster.kubectl(f"--kubeconfig={sa_kubeconfig}", "auth", "can-i", "delete", "nodes",
                               check=False).stdout.strip() == "no"

        _shard_set(cluster, ns, "orders", 3)
        wait_for(
            lambda: cluster.get("statefulset", "orders", ns),
            timeout=90, interval=0.5, what="the operator's StatefulSet",
        )
        wait_for(
            lambda: _ready_shards(cluster, ns, "orders") == 3,
            timeout=240, interval=0.5, what="3 shard pods Ready",
        )

        # An upgrade that changes the pod template: Recreate replaces the pod, and the new one takes over.
        _helm(cluster, env, "upgrade", RELEASE, str(CHART), "-n", RELEASE_NS, "--set", "operator.verbose=true")
        new = wait_for(
            lambda: _ready_operator(cluster, exclude=operator["metadata"]["uid"]),
            timeout=150, interval=0.5, what="a new operator pod Ready after the upgrade",
        )
        assert "--verbose" in new["spec"]["containers"][0]["args"]
        _shard_set(cluster, ns, "invoices", 1)
        wait_for(
            lambda: cluster.get("statefulset", "invoices", ns),
            timeout=90, interval=0.5, what="the upgraded operator's StatefulSet",
        )
        wait_for(
            lambda: _ready_shards(cluster, ns, "invoices") == 1,
            timeout=180, interval=0.5, what="the new shard pod Ready",
        )
        assert _ready_shards(cluster, ns, "orders") == 3
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        if installed:
            _helm(cluster, env, "uninstall", RELEASE, "-n", RELEASE_NS, "--wait", "--timeout", "120s")
    wait_for(
        lambda: not cluster.pods(RELEASE_NS, OPERATOR_SELECTOR),
        timeout=120, interval=0.5, what="the operator pod gone after helm uninstall",
    )
