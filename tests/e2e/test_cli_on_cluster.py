"""e2e: the `chronoshard` CLI finds a ShardSet's map and shard pods through the Kubernetes API alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.waiting import wait_for

from .conftest import LocalCluster, data_client_args, is_ready

pytestmark = pytest.mark.e2e


def cli(cluster: LocalCluster, ns: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    return subprocess.run([sys.executable, "-m", "chronoshard.shardnode.client.cli", "-n", ns, *args],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


def test_put_get_ls_status_by_shardset_name(local_cluster: LocalCluster, e2e_namespace: str) -> None:
    local_cluster.apply({"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShardSet",
                         "metadata": {"name": "cli", "namespace": e2e_namespace}, "spec": {"shards": 2}})
    wait_for(
        lambda: len([p for p in local_cluster.pods(
            e2e_namespace, "app.kubernetes.io/instance=cli") if is_ready(p)]) == 2,
        timeout=120, interval=0.5, what="2 ready shard pods",
    )
    # The shards serve HTTPS with authentication: the CLI asks a token for ServiceAccount e2e-data (allowed on
    # table t) and verifies the pods with the cli-ca ConfigMap.
    wait_for(lambda: local_cluster.get("configmap", "cli-ca", e2e_namespace), timeout=30, interval=0.5,
             what="ConfigMap cli-ca")
    data_client_args(local_cluster, e2e_namespace, "cli", ["t"])
    keys = [f"k{i}" for i in range(6)]  # each CLI run is a process start and a token request: few keys
    for k in keys:
        put = cli(local_cluster, e2e_namespace, "-s", "cli", "--service-account", "e2e-data", "put", "t", k,
                  "--value", f"value-{k}")
        assert put.returncode == 0, put.stderr
    for k in keys:
        got = cli(local_cluster, e2e_namespace, "-s", "cli", "--service-account", "e2e-data", "get", "t", k)
        assert got.returncode == 0 and got.stdout == f"value-{k}", (got.stdout, got.stderr)
    listed = cli(local_cluster, e2e_namespace, "-s", "cli", "--service-account", "e2e-data", "-o", "json", "ls", "t")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    rows = rows if isinstance(rows, list) else rows.get("blocks", rows.get("items", []))
    assert sorted(r["key"] for r in rows) == sorted(keys)
    assert {r["shard"] for r in rows} == {0, 1}, "both shards hold some keys"
    missing = cli(local_cluster, e2e_namespace, "-s", "cli", "--service-account", "e2e-data", "get", "t", "nope")
    assert missing.returncode == 3
    status = cli(local_cluster, e2e_namespace, "status", "cli")
    assert status.returncode == 0 and "2/2 ready" in status.stdout, status.stdout
