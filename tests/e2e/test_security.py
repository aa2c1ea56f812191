"""e2e: the sample ShardSet over TLS with tokens on the local cluster. A ServiceAccount with a RoleBinding on the
table can put/get through the CLI (``--service-account``, and from inside a pod with a projected token) and the
Python client; one without is refused 403; no credential is 401. Afterwards no token, private key or table key
appears in any log file of the run, any event, any status or any /metrics answer."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chronoshard.shardnode.client import AsyncClient, Forbidden, Unauthenticated
from chronoshard.shardnode.client.cli_tokens import ServiceAccountToken
from chronoshard.shardnode.client.credentials import audience
from kubernetes import config

from tests.support.waiting import wait_for

from .conftest import LocalCluster, is_ready, operator_tls

pytestmark = pytest.mark.e2e

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "shardset.yaml"
EXIT_REFUSED = 5
PORTS = {"node": 7400, "cache": 7401, "predictor": 7402}


def cli(cluster: LocalCluster, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    env.pop("CHRONOSHARD_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "chronoshard.shardnode.client.cli", "-n", ns, *args],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


def rbac(ns: str, table: str) -> list[dict[str, Any]]:
    """SA app (data on ``table`` + discovery), SA stranger (discovery only), metrics reader for the test."""
    def binding(name: str, role: str, sa: str, kind: str = "Role") -> dict[str, Any]:
        meta = {"name": name} | ({"namespace": ns} if kind == "Role" else {})
        return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": f"{kind}Binding", "metadata": meta,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]}

    return [
        *({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}}
          for sa in ("app", "stranger")),
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "data", "namespace": ns},
         "rules": [{"apiGroups": ["chronoshard.io"], "resources": ["shardsets/data"], "resourceNames": [table],
                    "verbs": ["get", "list", "update", "delete"]}]},
        # What the CLI's --shardset reads: the map and CA ConfigMaps and the shard pods' IPs.
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "discover", "namespace": ns},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
                   {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]},
        binding("app-data", "data", "app"), binding("app-discover", "discover", "app"),
        binding("stranger-discover", "discover", "stranger"),
    ]


def client_pod(ns: str, name: str, sa: str, shardset: str, *command: str) -> dict[str, Any]:
    """A pod running the chronoshard CLI with its ServiceAccount's projected token for the ShardSet."""
    mount = "/var/run/secrets/chronoshard.io"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}, "spec": {
        "serviceAccountName": sa, "restartPolicy": "Never",
        "containers": [{"name": "main", "image": "none",
                        "command": ["python", "-m", "chronoshard.shardnode.client.cli", "-n", ns, "-s", shardset,
                                    "--token-file", f"{mount}/token", *command],
                        "volumeMounts": [{"name": "token", "mountPath": mount}]}],
        "volumes": [{"name": "token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": audience(ns, shardset), "expirationSeconds": 3600, "path": "token"}}]}}]}}


@pytest.fixture(scope="module")
def secured(local_cluster: LocalCluster) -> Iterator[dict[str, Any]]:
    ns = f"e2e-{uuid.uuid4().hex[:8]}"
    local_cluster.kubectl("create", "namespace", ns)
    obj = copy.deepcopy(yaml.safe_load(SAMPLE.read_text()))
    obj["metadata"]["namespace"] = ns
    name, table = obj["metadata"]["name"], obj["spec"]["tables"][0]["name"]
    local_cluster.apply(obj, *rbac(ns, table))
    wait_for(lambda: len([p for p in local_cluster.pods(ns, f"app.kubernetes.io/instance={name}")
                          if is_ready(p)]) == obj["spec"]["shards"],
             timeout=180, interval=0.5, what="the sample ShardSet's pods Ready")
    ca_cm = wait_for(lambda: local_cluster.get("configmap", f"{name}-ca", ns), timeout=30, interval=0.5,
                     what=f"ConfigMap {name}-ca")
    yield {"ns": ns, "name": name, "table": table, "ca": ca_cm["data"]["ca.crt"], "tokens": []}
    local_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_cli_with_and_without_the_right_service_account(local_cluster: LocalCluster, secured) -> None:
    ns, name, table = secured["ns"], secured["name"], secured["table"]
    base = ("-s", name, "--token-file", "/nonexistent/token")
    for i in range(6):
        r = cli(local_cluster, ns, *base, "--service-account", "app", "put", table, f"k{i}", "--value", f"v{i}")
        assert r.returncode == 0, r.stderr
    r = cli(local_cluster, ns, *base, "--service-account", "app", "get", table, "k3")
    assert (r.returncode, r.stdout) == (0, "v3"), r.stderr
    r = cli(local_cluster, ns, *base, "--service-account", "app", "-o", "json", "ls", table)
    assert r.returncode == 0 and sorted(b["key"] for b in json.loads(r.stdout)) == [f"k{i}" for i in range(6)]

    r = cli(local_cluster, ns, *base, "--service-account", "stranger", "get", table, "k3")
    assert r.returncode == EXIT_REFUSED and "HTTP 403 forbidden" in r.stderr, r.stderr
    r = cli(local_cluster, ns, *base, "get", table, "k3")  # the kubeconfig's admin token: not for this audience
    assert r.returncode == EXIT_REFUSED and "HTTP 401" in r.stderr and "--service-account" in r.stderr


def test_python_client_through_kubernetes_discovery(local_cluster: LocalCluster, secured) -> None:
    ns, name, table = secured["ns"], secured["name"], secured["table"]
    api = config.new_client_from_config(config_file=str(local_cluster.kubeconfig))
    app = ServiceAccountToken(api, ns, "app", audience(ns, name))
    stranger = ServiceAccountToken(api, ns, "stranger", audience(ns, name))

    async def use() -> None:
        async with AsyncClient.for_shardset(name, ns, api_client=api, token_provider=app,
                                            token_file="/nonexistent/token") as c:
            keys = [f"py-{i}" for i in range(30)]
            await asyncio.gather(*(c.put(table, k, k.encode() * 100) for k in keys))
            assert await c.batch_get(table, keys) == {k: k.encode() * 100 for k in keys}
            assert c.transport.fallbacks == 0  # every pod already speaks TLS
            secured["tokens"].append(await app())
        async with AsyncClient.for_shardset(name, ns, api_client=api, token_provider=stranger,
                                            token_file="/nonexistent/token") as c:
            with pytest.raises(Forbidden):
                await c.get(table, "py-1")
            secured["tokens"].append(await stranger())
        async with AsyncClient.for_shardset(name, ns, api_client=api, token_file="/nonexistent/token") as c:
            with pytest.raises(Unauthenticated, match="No credential was sent"):
                await c.get(table, "py-1")

    asyncio.run(use())


def test_pods_with_projected_tokens(local_cluster: LocalCluster, secured) -> None:
    ns, name, table = secured["ns"], secured["name"], secured["table"]
    local_cluster.apply(client_pod(ns, "writer", "app", name, "put", table, "from-pod", "--value", "hello"))
    phase = wait_for(lambda: (p := local_cluster.get("pod", "writer", ns)) and p["status"].get("phase") in
                     ("Succeeded", "Failed") and p["status"]["phase"], timeout=90, interval=0.5,
                     what="writer pod finished")
    assert phase == "Succeeded", local_cluster.kubectl("logs", "writer", "-n", ns, check=False).stdout
    local_cluster.apply(client_pod(ns, "reader", "app", name, "get", table, "from-pod"),
                        client_pod(ns, "intruder", "stranger", name, "get", table, "from-pod"))
    for pod, want in (("reader", "Succeeded"), ("intruder", "Failed")):
        got = wait_for(lambda pod=pod: (p := local_cluster.get("pod", pod, ns)) and p["status"].get("phase") in
                       ("Succeeded", "Failed") and p["status"]["phase"], timeout=90, interval=0.5,
                       what=f"{pod} pod finished")
        logs = local_cluster.kubectl("logs", pod, "-n", ns, check=False).stdout
        assert got == want, logs
        assert ("hello" in logs) if pod == "reader" else ("403" in logs)
    for pod in ("writer", "reader", "intruder"):  # the projected tokens the kubelet (node agent) wrote
        uid = local_cluster.get("pod", pod, ns)["metadata"]["uid"]
        for f in (local_cluster.state_dir / "agent" / "pods" / uid).rglob("token"):
            if f.is_file():
                secured["tokens"].append(f.read_text().strip())


# --- nothing secret leaks -------------------------------------------------------------------------------


def secret_values(cluster: LocalCluster, ns: str, name: str) -> dict[str, str]:
    """label -> secret text: private keys (the CA's, the pods'), table keys, the KEK (in Secret data forms)."""
    out: dict[str, str] = {}
    for secret in (f"{name}-ca", f"{name}-tls", f"{name}-keyring", f"{name}-kek"):
        obj = cluster.get("secret", secret, ns) or {}
        for key, b64 in (obj.get("data") or {}).items():
            if not key.endswith((".key", ".wrapped")):
                continue
            raw = base64.b64decode(b64)
            out[f"{secret}/{key} (base64)"] = b64
            if raw.startswith(b"-----BEGIN"):
                body = b"".join(raw.splitlines()[1:-1]).decode()
                out[f"{secret}/{key} (PEM body)"] = body[:48]
            else:
                out[f"{secret}/{key} (hex)"] = raw.hex()
                out[f"{secret}/{key} (base64 of raw)"] = base64.b64encode(raw).decode()
    return out


def test_no_secret_in_logs_events_statuses_or_metrics(local_cluster: LocalCluster, secured) -> None:
    ns, name = secured["ns"], secured["name"]
    needles = secret_values(local_cluster, ns, name)
    assert any("ca.key" in k for k in needles) and any("tls.key" in k for k in needles)
    assert any(k.startswith(f"{name}-keyring/") for k in needles), sorted(needles)
    for i, token in enumerate(t for t in secured["tokens"] if t):
        needles[f"token {i}"] = token
        needles[f"token {i} signature"] = token.rsplit(".", 1)[-1]
    kubeconfig = yaml.safe_load(local_cluster.kubeconfig.read_text())
    needles["admin token"] = kubeconfig["users"][0]["user"]["token"]
    assert len(secured["tokens"]) >= 4, "the other tests of this module ran first and kept their tokens"
    # The needles have the form the secrets take on disk: the pods' key is found in their mounted Secret.
    mounted = [f.read_text() for f in (local_cluster.state_dir / "agent" / "pods").rglob("tls.key") if f.is_file()]
    assert any(needles[f"{name}-tls/tls.key (PEM body)"] in text for text in mounted)

    haystacks: dict[str, str] = {}
    for f in local_cluster.state_dir.rglob("*.log"):
        haystacks[str(f)] = f.read_text(errors="replace")
    haystacks["events"] = local_cluster.kubectl("get", "events", "-A", "-o", "json").stdout
    for kind in ("shardsets", "keyrotations", "prefetchpolicies", "pods", "statefulsets"):
        items = json.loads(local_cluster.kubectl("get", kind, "-A", "-o", "json").stdout)["items"]
        haystacks[f"{kind} status"] = json.dumps([i.get("status") for i in items])
    ctx = operator_tls(local_cluster, ns, name)
    for pod in local_cluster.pods(ns, f"app.kubernetes.io/instance={name}"):
        for server, port in PORTS.items():
            url = f"https://{pod['status']['podIP']}:{port}/metrics"
            with urllib.request.urlopen(url, timeout=10, context=ctx) as r:
                assert r.status == 200
                haystacks[f"{pod['metadata']['name']} {server} /metrics"] = r.read().decode()
    assert any("chronoshard_auth_decisions_total" in h for k, h in haystacks.items() if "/metrics" in k)
    assert len([k for k in haystacks if k.endswith(".log")]) >= 5, sorted(haystacks)
    leaks = [(label, where) for label, needle in needles.items() for where, text in haystacks.items()
             if needle and needle in text]
    assert leaks == [], leaks
