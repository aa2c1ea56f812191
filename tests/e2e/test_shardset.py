"""e2e: a ShardSet applied to the local cluster runs as real chronoshard-node/cache/predictor processes."""

from __future__ import annotations

import base64
import copy
import json
import os
import ssl
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from chronoshard.devcluster.nodeagent.volumes import read_snapshot
from chronoshard.shardnode.keys.provider import unwrap_key, wrap_key

from tests.support.waiting import wait_for

from .conftest import LocalCluster, http_get, is_ready, pod_tls

pytestmark = pytest.mark.e2e

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "shardset.yaml"
PORTS = {"node": 7400, "cache": 7401, "predictor": 7402}


def shard_pods(cluster: LocalCluster, ns: str, name: str) -> list[dict]:
    pods = [p for p in cluster.pods(ns, "") if p["metadata"]["name"].startswith(f"{name}-")]
    return sorted(pods, key=lambda p: p["metadata"]["name"])


def put_block(ip: str, table: str, key: str, body: bytes, context: ssl.SSLContext) -> int:
    req = urllib.request.Request(f"https://{ip}:7400/v1/tables/{table}/blocks/{key}", data=body, method="PUT",
                                 headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=5, context=context) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def shardset(local_cluster: LocalCluster):
    ns = f"e2e-{uuid.uuid4().hex[:8]}"
    local_cluster.kubectl("create", "namespace", ns)
    obj = copy.deepcopy(yaml.safe_load(SAMPLE.read_text()))
    obj["metadata"]["namespace"] = ns
    obj["spec"]["shards"] = 3
    local_cluster.apply(obj)
    name = obj["metadata"]["name"]
    wait_for(
        lambda: len([p for p in shard_pods(local_cluster, ns, name) if is_ready(p)]) == 3,
        timeout=120, interval=0.5, what="3 shard pods Ready",
    )
    yield ns, name, obj["spec"]["tables"][0]["name"]
    local_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_three_shards_run_ready_on_distinct_ips_and_answer(local_cluster, shardset):
    ns, name, _ = shardset
    pods = shard_pods(local_cluster, ns, name)
    assert [p["metadata"]["name"] for p in pods] == [f"{name}-0", f"{name}-1", f"{name}-2"]
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 3
    for pod in pods:
        statuses = {s["name"]: s for s in pod["status"]["containerStatuses"]}
        assert set(statuses) == set(PORTS)
        for container, port in PORTS.items():
            assert statuses[container]["ready"] and "running" in statuses[container]["state"]
            for path in ("/healthz", "/readyz"):
                code, _ = http_get(f"https://{pod['status']['podIP']}:{port}{path}",
                                   context=pod_tls(local_cluster, ns, name))
                assert code == 200, f"{pod['metadata']['name']}/{container}{path} answered {code}"


def test_shard_data_survives_pod_deletion(local_cluster, shardset):
    ns, name, table = shardset
    pod = wait_for(
        lambda: (p := local_cluster.get("pod", f"{name}-0", ns)) and is_ready(p) and p,
        timeout=90, interval=0.5, what="shard 0 ready",
    )
    ip, body = pod["status"]["podIP"], uuid.uuid4().bytes * 4
    # Keys map to shards by hash; use the first key shard 0 owns (others answer 421 misdirected).
    tls = pod_tls(local_cluster, ns, name)
    key = next(k for k in (f"k{i}" for i in range(200)) if put_block(ip, table, k, body, tls) == 200)
    local_cluster.kubectl("delete", "pod", f"{name}-0", "-n", ns, "--wait=false")
    new = wait_for(
        lambda: (p := local_cluster.get("pod", f"{name}-0", ns))
            and p["metadata"]["uid"] != pod["metadata"]["uid"] and is_ready(p) and p,
        timeout=90, interval=0.5, what="shard 0 re-created",
    )
    assert http_get(f"https://{new['status']['podIP']}:7400/v1/tables/{table}/blocks/{key}", context=tls) == (
        200, body)


def test_default_keyring_is_wrapped_under_the_mounted_kek(local_cluster, shardset):
    ns, name, _ = shardset
    secret = local_cluster.get("secret", f"{name}-keyring", ns)
    kek = base64.b64decode(local_cluster.get("secret", f"{name}-kek", ns)["data"]["kek.key"])
    assert set(secret["data"]) == {"keyring.json", "v1.wrapped"}
    assert len(unwrap_key(kek, base64.b64decode(secret["data"]["v1.wrapped"]), 1)) == 32
    for pod in shard_pods(local_cluster, ns, name):
        assert (local_cluster.pod_dir(pod) / "volumes" / "kek" / "kek.key").read_bytes() == kek
        for port in (PORTS["node"], PORTS["cache"]):
            keys = json.loads(http_get(f"https://{pod['status']['podIP']}:{port}/v1/keys",
                                       context=pod_tls(local_cluster, ns, name))[1])
            assert keys["loadError"] is None and keys["wrapped"] == [1], keys


def test_keyring_secret_update_is_seen_atomically_and_reloaded(local_cluster, shardset):
    ns, name, _ = shardset
    secret = local_cluster.get("secret", f"{name}-keyring", ns)
    kek = base64.b64decode(local_cluster.get("secret", f"{name}-kek", ns)["data"]["kek.key"])
    manifest = json.loads(base64.b64decode(secret["data"]["keyring.json"]))
    new_id = max(v["id"] for v in manifest["versions"]) + 1
    manifest["generation"] += 1
    manifest["versions"].append({"id": new_id, "state": "decrypt-only", "created": "2026-11-22T00:00:00Z"})
    pods = shard_pods(local_cluster, ns, name)
    volume = local_cluster.pod_dir(pods[0]) / "volumes" / "keyring"
    assert json.loads((volume / "keyring.json").read_text())["generation"] == manifest["generation"] - 1

    stop = threading.Event()
    problems: list[str] = []
    snapshots: list[int] = []

    def reader():
        # Every snapshot must be self-consistent: each version the manifest lists has its (wrapped) key file.
        while not stop.is_set():
            files = read_snapshot(volume)
            listed = json.loads(files["keyring.json"])
            missing = [v["id"] for v in listed["versions"] if not files.get(f"v{v['id']}.wrapped")]
            if missing:
                problems.append(f"generation {listed['generation']} lacks keys {missing}")
            snapshots.append(listed["generation"])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        patch = {"data": {"keyring.json": base64.b64encode(json.dumps(manifest).encode()).decode(),
                          f"v{new_id}.wrapped": base64.b64encode(wrap_key(kek, os.urandom(32), new_id)).decode()}}
        local_cluster.kubectl("patch", "secret", f"{name}-keyring", "-n", ns, "--type", "merge",
                              "-p", json.dumps(patch))
        for pod in pods:
            for port in (PORTS["node"], PORTS["cache"]):
                url = f"https://{pod['status']['podIP']}:{port}/v1/keys"
                wait_for(
                    lambda url=url: json.loads(http_get(url, context=pod_tls(local_cluster, ns, name))[1])["generation"]
                        == manifest["generation"],
                    timeout=60, interval=0.5, what=f"{url} reloaded",
                )
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert set(snapshots) == {manifest["generation"] - 1, manifest["generation"]}
    keys = json.loads(http_get(f"https://{pods[0]['status']['podIP']}:7400/v1/keys",
                               context=pod_tls(local_cluster, ns, name))[1])
    assert {v["id"] for v in keys["versions"]} == {v["id"] for v in manifest["versions"]}
    assert keys["wrapped"] == sorted(v["id"] for v in manifest["versions"]) and keys["loadError"] is None
