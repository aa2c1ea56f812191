"""The ShadowPolicy controller with the ShardSet controller against a real kube-apiserver: the policy adds the
shadow container and shadow.json, changes reach shadow.json, deleting the policy removes both; a policy for a
missing ShardSet says so; a ShardSet bootstrapped from a shadow gets the bootstrap init container and the
source's keyring and KEK."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from chronoshard.operator.keyring import initial_keyring_data, new_kek_data
from kubernetes import client

from tests.support.waiting import wait_for

GROUP, VERSION = "chronoshard.io", "v1alpha1"

pytestmark = pytest.mark.integration


@pytest.fixture()
def api(k8s_client):
    return {"core": client.CoreV1Api(k8s_client), "apps": client.AppsV1Api(k8s_client),
            "custom": client.CustomObjectsApi(k8s_client)}


def create(api, ns: str, plural: str, kind: str, name: str, spec: dict[str, Any]) -> None:
    api["custom"].create_namespaced_custom_object(GROUP, VERSION, ns, plural, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec})


def get_policy(api, ns: str, name: str) -> dict[str, Any]:
    return api["custom"].get_namespaced_custom_object(GROUP, VERSION, ns, "shadowpolicies", name)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def config_data(api, ns: str, shardset: str) -> dict[str, str]:
    try:
        return api["core"].read_namespaced_config_map(f"{shardset}-config", ns).data or {}
    except client.ApiException as exc:
        if exc.status == 404:
            return {}
        raise


def pod_spec(api, ns: str, shardset: str) -> Any:
    try:
        return api["apps"].read_namespaced_stateful_set(shardset, ns).spec.template.spec
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def container_names(api, ns: str, shardset: str) -> list[str]:
    spec = pod_spec(api, ns, shardset)
    return [c.name for c in spec.containers] if spec is not None else []


COLD = {"endpoint": "http://seaweedfs.storage:8333", "bucket": "backups", "prefix": "prod",
        "credentialsSecret": {"name": "objectstore"}}


def test_policy_adds_the_shadow_and_deleting_it_removes_it(operator_runner, api, namespace):
    create(api, namespace, "shardsets", "ShardSet", "alpha", {"shards": 2, "tables": [{"name": "t"}]})
    wait_for(lambda: container_names(api, namespace, "alpha") == ["node", "cache", "predictor"],
             what="the StatefulSet without a shadow")
    assert "shadow.json" not in config_data(api, namespace, "alpha")

    create(api, namespace, "shadowpolicies", "ShadowPolicy", "shp",
           {"shardSetRef": {"name": "alpha"}, "tables": ["t"], "coldStorage": COLD})
    wait_for(lambda: container_names(api, namespace, "alpha") == ["node", "cache", "predictor", "shadow"],
             what="the shadow container in the StatefulSet")
    spec = pod_spec(api, namespace, "alpha")
    shadow = next(c for c in spec.containers if c.name == "shadow")
    assert shadow.command[:2] == ["chronoshard-shadow", "--host"]
    assert "https://$(POD_IP):7400" in shadow.command and shadow.ports[0].container_port == 7403
    assert {m.name: m.mount_path for m in shadow.volume_mounts}["objectstore"] == "/etc/chronoshard/objectstore"
    volume = next(v for v in spec.volumes if v.name == "objectstore")
    assert (volume.secret.secret_name, volume.secret.optional) == ("objectstore", True)
    doc = json.loads(config_data(api, namespace, "alpha")["shadow.json"])
    assert doc["tables"] == ["t"] and doc["compression"] == {"codec": "zstd", "level": 3, "dictionary": True}
    assert doc["cold"]["prefix"] == f"prod/{namespace}/alpha" and doc["cold"]["bucket"] == "backups"

    # The credentials Secret does not exist, and no kubelet runs the pods here: the status says both, per shard.
    pol = wait_for(lambda: (p := get_policy(api, namespace, "shp")).get("status", {}).get("shards") and p,
                   what="per-shard status")
    st = pol["status"]
    assert st["observedGeneration"] == pol["metadata"]["generation"]
    assert (st["phase"], st["reporting"], st["shardsExpected"]) == ("Pending", "0/2", 2)
    # The controller manager made pods from the first template; without a kubelet they never roll.
    assert [(s["shard"], s["reporting"]) for s in st["shards"]] == [(0, False), (1, False)]
    assert all(s["error"] in ("no pod", "pod has no shadow container yet (rolling)", "pod has no IP yet")
               for s in st["shards"]), st["shards"]
    ready = condition(pol, "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "ShardsNotReporting")
    missing = condition(pol, "ShardSetMissing")
    assert missing is not None and missing["status"] == "False"

    # A change of the policy reaches shadow.json without touching the pod template.
    before = pod_spec(api, namespace, "alpha").to_dict()
    api["custom"].patch_namespaced_custom_object(GROUP, VERSION, namespace, "shadowpolicies", "shp", {"spec": {
        "compression": {"level": 9, "dictionary": False}, "snapshot": {"fullEvery": 4}}})
    doc = wait_for(lambda: (d := json.loads(config_data(api, namespace, "alpha").get("shadow.json", "{}")))
                   .get("compression", {}).get("level") == 9 and d, what="the new level in shadow.json")
    assert doc["compression"]["dictionary"] is False and doc["snapshot"]["fullEvery"] == 4
    assert pod_spec(api, namespace, "alpha").to_dict() == before
    gen = get_policy(api, namespace, "shp")["metadata"]["generation"]
    wait_for(lambda: get_policy(api, namespace, "shp").get("status", {}).get("observedGeneration") == gen,
             what="the new generation observed")

    api["custom"].delete_namespaced_custom_object(GROUP, VERSION, namespace, "shadowpolicies", "shp")
    wait_for(lambda: container_names(api, namespace, "alpha") == ["node", "cache", "predictor"],
             what="the shadow container gone after the policy is deleted")
    wait_for(lambda: "shadow.json" not in config_data(api, namespace, "alpha"), what="shadow.json gone")
    assert "objectstore" not in [v.name for v in pod_spec(api, namespace, "alpha").volumes]


def test_policy_for_a_missing_shardset_says_so_and_recovers(operator_runner, api, namespace):
    create(api, namespace, "shadowpolicies", "ShadowPolicy", "early", {"shardSetRef": {"name": "later"}})
    pol = wait_for(lambda: (p := get_policy(api, namespace, "early")) and condition(p, "ShardSetMissing") and p,
                   what="a ShardSetMissing condition")
    missing, ready = condition(pol, "ShardSetMissing"), condition(pol, "Ready")
    assert pol["status"]["phase"] == "Waiting"
    assert missing is not None and missing["status"] == "True" and "ShardSet later" in missing["message"]
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "ShardSetMissing")
    assert "shards" not in pol["status"]

    create(api, namespace, "shardsets", "ShardSet", "later", {"shards": 1})
    wait_for(lambda: "shadow" in container_names(api, namespace, "later"), what="the shadow in the new ShardSet")
    # Between the two, a pass may see the ShardSet but not yet its config ConfigMap with the policy: phase Waiting,
    # reason ConfigPending. The claim is where it ends: Pending, no shard reporting (no pod runs here).
    pol = wait_for(lambda: (p := get_policy(api, namespace, "early")) and
                   (condition(p, "ShardSetMissing") or {}).get("status") == "False"
                   and p["status"].get("phase") == "Pending" and p, timeout=30,
                   what="ShardSetMissing False and phase Pending once the ShardSet exists")
    assert pol["status"]["reporting"] == "0/1"
    assert condition(pol, "Ready")["reason"] == "ShardsNotReporting"


def _secret(api, ns: str, name: str, data: dict[str, str]) -> None:
    api["core"].create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name=name), data=data))


def _shardset(api, ns: str, name: str) -> dict[str, Any]:
    return api["custom"].get_namespaced_custom_object(GROUP, VERSION, ns, "shardsets", name)


def test_bootstrap_uses_the_sources_keyring_and_kek(operator_runner, api, namespace):
    kek = new_kek_data()
    keyring = initial_keyring_data("AES-256-GCM", kek=base64.b64decode(kek["kek.key"]))
    create(api, namespace, "shardsets", "ShardSet", "restored", {"shards": 2, "bootstrap": {"fromShadow": {
        "coldStorage": {**COLD, "credentialsSecret": {"name": "restore-s3"}},
        "source": {"name": "orders"}, "pointInTime": "2026-12-01T10:00:00Z",
        "keyringSecret": {"name": "orders-keyring-copy"}, "kekSecret": {"name": "orders-kek-copy"}}}})
    # The source's Secrets are not there yet: nothing is generated in their place and no pod is started.
    ss = wait_for(lambda: (s := _shardset(api, namespace, "restored")).get("status", {}).get("conditions") and s,
                  what="the ShardSet's status")
    messages = json.dumps(ss["status"]["conditions"])
    assert "BootstrapSecretMissing" in messages and "orders-kek-copy" in messages
    assert pod_spec(api, namespace, "restored") is None
    secrets = {s.metadata.name for s in api["core"].list_namespaced_secret(namespace).items}
    assert "restored-kek" not in secrets and "restored-keyring" not in secrets

    _secret(api, namespace, "orders-kek-copy", kek)
    _secret(api, namespace, "orders-keyring-copy", keyring)
    spec = wait_for(lambda: pod_spec(api, namespace, "restored"), timeout=30, what="the StatefulSet")
    (init,) = spec.init_containers
    assert init.name == "bootstrap" and init.command[:2] == ["chronoshard-shadow", "bootstrap"]
    assert {m.name: m.mount_path for m in init.volume_mounts}["bootstrap-objectstore"] == \
        "/etc/chronoshard/objectstore"
    assert api["core"].read_namespaced_secret("restored-kek", namespace).data == kek
    assert api["core"].read_namespaced_secret("restored-keyring", namespace).data == keyring
    doc = json.loads(config_data(api, namespace, "restored")["bootstrap.json"])
    assert doc["source"] == {"namespace": namespace, "name": "orders"}
    assert doc["pointInTime"] == "2026-12-01T10:00:00Z" and doc["cold"]["prefix"] == f"prod/{namespace}/orders"
