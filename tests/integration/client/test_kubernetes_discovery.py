"""Map discovery from the partition ConfigMap, ``chronoshard status`` and ``map`` on a real kube-apiserver."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from chronoshard.shardnode.client import ConfigMapMap, MapUnavailable
from chronoshard.shardnode.client.cli import EXIT_NOT_FOUND, main
from chronoshard.shardnode.keyspace.partitioning import initial_map, rescale
from kubernetes import client

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[3] / "crds" / "samples"


def put_config_map(core: client.CoreV1Api, ns: str, name: str, data: dict[str, str]) -> None:
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data=data)
    try:
        core.create_namespaced_config_map(ns, body)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
        core.replace_namespaced_config_map(name, ns, body)


async def test_config_map_discovery(k8s_client, namespace):
    core = client.CoreV1Api(k8s_client)
    source = ConfigMapMap("orders", namespace, api_client=k8s_client)
    with pytest.raises(MapUnavailable, match="HTTP 404"):
        await source.fetch()
    m = initial_map(3)
    put_config_map(core, namespace, "orders-partitions", {"map.json": m.to_json()})
    assert await source.fetch() == m
    m2 = rescale(m, 5)
    put_config_map(core, namespace, "orders-partitions", {"map.json": m2.to_json()})
    assert await source.fetch() == m2
    put_config_map(core, namespace, "orders-partitions", {"map.json": '{"format": 1, "epoch": 3}'})
    with pytest.raises(MapUnavailable, match="partitions"):
        await source.fetch()
    put_config_map(core, namespace, "orders-partitions", {"other": "x"})
    with pytest.raises(MapUnavailable, match="no map.json"):
        await source.fetch()


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out, stdin=io.BytesIO(), bout=io.BytesIO()), out.getvalue()


def test_cli_status_and_map_from_the_api(control_plane, k8s_client, namespace):
    core = client.CoreV1Api(k8s_client)
    custom = client.CustomObjectsApi(k8s_client)
    kc = str(control_plane.kubeconfig)
    assert run_cli("--kubeconfig", kc, "-n", namespace, "status", "orders")[0] == EXIT_NOT_FOUND

    shardset = yaml.safe_load((SAMPLES / "shardset.yaml").read_text())
    custom.create_namespaced_custom_object("chronoshard.io", "v1alpha1", namespace, "shardsets", shardset)
    m = initial_map(3)
    status = {
        "phase": "Ready", "observedGeneration": 1,
        "shards": {"desired": 3, "ready": 3}, "readyShards": "3/3", "keyVersion": 2,
        "keyVersions": [{"id": 1, "state": "decrypt-only"}, {"id": 2, "state": "primary"}],
        "partitionMap": {"epoch": 1, "partitions": m.to_dict()["partitions"]},
        "conditions": [{"type": "Ready", "status": "True", "reason": "AllShardsReady", "message": "3/3 ready",
                        "lastTransitionTime": "2026-11-22T00:00:00Z"}],
    }
    custom.patch_namespaced_custom_object_status(
        "chronoshard.io", "v1alpha1", namespace, "shardsets", "orders", {"status": status})
    rotation = yaml.safe_load((SAMPLES / "keyrotation.yaml").read_text())
    custom.create_namespaced_custom_object("chronoshard.io", "v1alpha1", namespace, "keyrotations", rotation)
    custom.patch_namespaced_custom_object_status(
        "chronoshard.io", "v1alpha1", namespace, "keyrotations", rotation["metadata"]["name"],
        {"status": {"phase": "Rewrapping", "fromVersion": 1, "toVersion": 2,
                    "shards": [{"shard": 0, "rewrapped": 7, "remaining": 3, "oldVersionBlocks": 3}]}})

    code, out = run_cli("--kubeconfig", kc, "-n", namespace, "status", "orders")
    assert code == 0, out
    assert "3/3 ready" in out and "v2 (primary)" in out and "in progress" in out
    assert "orders-weekly" in out and "Rewrapping" in out
    code, out = run_cli("--kubeconfig", kc, "-n", namespace, "-o", "json", "status", "orders")
    doc = json.loads(out)
    assert doc["keyVersion"] == 2 and doc["partitionEpoch"] == 1 and doc["rotationInProgress"] is True
    assert doc["rotations"][0]["shards"][0]["remaining"] == 3

    put_config_map(core, namespace, "orders-partitions", {"map.json": m.to_json()})
    code, out = run_cli("--kubeconfig", kc, "-n", namespace, "--shardset", "orders", "-o", "json", "map")
    assert code == 0 and json.loads(out) == m.to_dict()
