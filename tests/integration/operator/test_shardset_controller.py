"""The ShardSet controller against a real kube-apiserver and kube-controller-manager."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from chronoshard.shardnode.keys.provider import unwrap_key
from kubernetes import client

from tests.support.waiting import wait_for

GROUP, VERSION, PLURAL = "chronoshard.io", "v1alpha1", "shardsets"

pytestmark = pytest.mark.integration



def shardset(name: str, shards: int = 3, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ShardSet",
        "metadata": {"name": name},
        "spec": {"shards": shards, **spec},
    }


def get_ss(apis, ns, name):
    return apis["custom"].get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)


def read_secret(apis, ns, name):
    try:
        return apis["core"].read_namespaced_secret(name, ns)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def unwrapped_v1(keyring, kek_secret) -> bytes:
    """Version 1's key from a wrapped keyring Secret, unwrapped with the KEK Secret's kek.key."""
    kek = base64.b64decode(kek_secret.data["kek.key"])
    return unwrap_key(kek, base64.b64decode(keyring.data["v1.wrapped"]), 1)


def degraded(apis, ns, name):
    st = get_ss(apis, ns, name).get("status") or {}
    return next((c for c in st.get("conditions", []) if c["type"] == "Degraded" and c["status"] == "True"), None)


def children_exist(apis, ns, name):
    try:
        apis["core"].read_namespaced_secret(f"{name}-keyring", ns)
        apis["core"].read_namespaced_config_map(f"{name}-config", ns)
        apis["core"].read_namespaced_config_map(f"{name}-partitions", ns)
        apis["core"].read_namespaced_service(f"{name}-headless", ns)
        apis["core"].read_namespaced_service(name, ns)
        apis["policy"].read_namespaced_pod_disruption_budget(name, ns)
        return apis["apps"].read_namespaced_stateful_set(name, ns)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def test_shardset_creates_owned_children_and_status(operator_runner, apis, namespace):
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, shardset("alpha", 3))
    sts = wait_for(lambda: children_exist(apis, namespace, "alpha"), what="children")
    owner_uid = get_ss(apis, namespace, "alpha")["metadata"]["uid"]
    assert sts.spec.replicas == 3
    assert sts.spec.service_name == "alpha-headless"
    names = [c.name for c in sts.spec.template.spec.containers]
    assert names == ["node", "cache", "predictor"]
    for obj in (
        sts,
        apis["core"].read_namespaced_config_map("alpha-config", namespace),
        apis["core"].read_namespaced_service("alpha", namespace),
        apis["policy"].read_namespaced_pod_disruption_budget("alpha", namespace),
        apis["core"].read_namespaced_secret("alpha-keyring", namespace),
    ):
        refs = obj.metadata.owner_references
        assert refs and refs[0].uid == owner_uid and refs[0].controller
        assert obj.metadata.labels["app.kubernetes.io/managed-by"] == "chronoshard-operator"
        assert obj.metadata.labels["app.kubernetes.io/instance"] == "alpha"

    secret = apis["core"].read_namespaced_secret("alpha-keyring", namespace)
    manifest = json.loads(base64.b64decode(secret.data["keyring.json"]))
    assert [v["state"] for v in manifest["versions"]] == ["primary"]
    # The default provider (embedded): version 1 is stored wrapped under the KEK in its own owned Secret.
    assert set(secret.data) == {"keyring.json", "v1.wrapped"}
    kek = apis["core"].read_namespaced_secret("alpha-kek", namespace)
    assert set(kek.data) == {"kek.key"} and len(base64.b64decode(kek.data["kek.key"])) == 32
    assert kek.metadata.owner_references[0].uid == owner_uid and kek.metadata.owner_references[0].controller
    key = unwrapped_v1(secret, kek)
    assert len(key) == 32
    volumes = {v.name: v for v in sts.spec.template.spec.volumes}
    assert volumes["kek"].secret.secret_name == "alpha-kek" and volumes["kek"].secret.default_mode == 0o440
    for c in sts.spec.template.spec.containers[:2]:
        assert "/etc/chronoshard/kek" in c.command and "kek" in {m.name for m in c.volume_mounts}

    def status_ready():
        st = get_ss(apis, namespace, "alpha").get("status") or {}
        return st if st.get("observedGeneration") == 1 and "partitionMap" in st else None

    st = wait_for(status_ready, what="status")
    assert st["keyVersion"] == 1
    assert st["keyVersions"] == [{"id": 1, "state": "primary", "wrapped": True}]
    assert st["shards"] == {"desired": 3, "ready": 0}
    assert {c["type"] for c in st["conditions"]} >= {"Ready", "Progressing", "Degraded"}
    assert st["partitionMap"]["epoch"] == 1 and len(st["partitionMap"]["partitions"]) == 3

    # Kopf posts events from a background queue after the handler returns: wait for the three, then check them.
    def alpha_events() -> list:
        return [e for e in apis["core"].list_namespaced_event(namespace).items if e.involved_object.name == "alpha"]

    wait_for(lambda: {"KEKCreated", "KeyringCreated", "StatefulSetCreated"} <= {e.reason for e in alpha_events()},
             what="the creation events")
    # Key material (the KEK, the wrapped blob, the unwrapped key) never leaks into status or events.
    events = apis["core"].list_namespaced_event(namespace).items
    blob = json.dumps(st) + " ".join((e.message or "") for e in events)
    for secret_b64 in (kek.data["kek.key"], secret.data["v1.wrapped"], base64.b64encode(key).decode()):
        assert secret_b64 not in blob and base64.b64decode(secret_b64).hex() not in blob
    reasons = {e.reason for e in events if e.involved_object.name == "alpha"}
    assert {"KEKCreated", "KeyringCreated", "StatefulSetCreated"} <= reasons


def test_second_reconcile_changes_nothing(operator_runner, apis, namespace):
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, shardset("idem", 2))
    wait_for(lambda: (get_ss(apis, namespace, "idem").get("status") or {}).get("observedGeneration") == 1,
             what="first reconcile")

    def controllers_done() -> bool:
        # kube-controller-manager writes the StatefulSet's and the PDB's status once it has made the two pods.
        sts = apis["apps"].read_namespaced_stateful_set("idem", namespace)
        pdb = apis["policy"].read_namespaced_pod_disruption_budget("idem", namespace)
        return (sts.status.observed_generation == sts.metadata.generation and sts.status.replicas == 2
                and pdb.status is not None and pdb.status.observed_generation == pdb.metadata.generation
                and pdb.status.expected_pods == 2)

    wait_for(controllers_done, what="the controller manager done with the StatefulSet and the PDB")
    from chronoshard.operator.shardset import controller
    from chronoshard.operator.triggers import TRIGGERS

    # The loop clears its wake-up when a pass starts; the second pass starts only after the first has ended.
    wake = TRIGGERS.event("ShardSet", namespace, "idem")

    def two_passes(when: str) -> None:
        for n in (1, 2):
            TRIGGERS.fire("ShardSet", namespace, "idem")
            wait_for(lambda: not wake.is_set(), what=f"reconcile pass {n} {when}")

    # At rest means the stored status comes from a pass that saw the controller manager's work (under load
    # the last pass could have run before it, and its status would rightly differ from a new one).
    two_passes("after the controller manager is done")

    def versions():
        return {
            "sts": apis["apps"].read_namespaced_stateful_set("idem", namespace).metadata.resource_version,
            "cm": apis["core"].read_namespaced_config_map("idem-config", namespace).metadata.resource_version,
            "secret": apis["core"].read_namespaced_secret("idem-keyring", namespace).metadata.resource_version,
            "kek": apis["core"].read_namespaced_secret("idem-kek", namespace).metadata.resource_version,
            "svc": apis["core"].read_namespaced_service("idem", namespace).metadata.resource_version,
            "pdb": apis["policy"].read_namespaced_pod_disruption_budget("idem", namespace).metadata.resource_version,
        }

    before = versions()
    body = get_ss(apis, namespace, "idem")
    result = controller.reconcile(body)
    assert result.outcome == "success"
    old, new = body["status"], result.status
    diff = {k: (old.get(k), new.get(k)) for k in set(old) | set(new) if old.get(k) != new.get(k)}
    assert controller._status_changed(old, new) is False, diff
    two_passes("after the wake-up")
    assert versions() == before


def test_scale_up_and_refused_scale_down(operator_runner, apis, namespace):
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, shardset("scale", 2))
    wait_for(lambda: children_exist(apis, namespace, "scale"), what="children")
    patch = {"spec": {"shards": 4}}
    apis["custom"].patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "scale", patch)
    wait_for(lambda: apis["apps"].read_namespaced_stateful_set("scale", namespace).spec.replicas == 4,
             what="scale up to 4")
    pmap = wait_for(lambda: (get_ss(apis, namespace, "scale").get("status") or {}).get("partitionMap", {})
                    if (get_ss(apis, namespace, "scale").get("status") or {}).get("observedGeneration") == 2 else None,
                    what="status after scale up")
    assert {p["shard"] for p in pmap["partitions"]} == {0, 1}, "new shards start empty"

    # Back to 2: shards 2 and 3 own nothing, so this is allowed.
    apis["custom"].patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "scale", {"spec": {"shards": 2}})
    wait_for(lambda: apis["apps"].read_namespaced_stateful_set("scale", namespace).spec.replicas == 2,
             what="scale down to 2")

    # To 1: shard 1 owns a partition; refused with a clear condition, StatefulSet unchanged.
    apis["custom"].patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "scale", {"spec": {"shards": 1}})

    def degraded():
        st = get_ss(apis, namespace, "scale").get("status") or {}
        for c in st.get("conditions", []):
            if c["type"] == "Degraded" and c["status"] == "True" and st.get("observedGeneration") == 4:
                return c
        return None

    cond = wait_for(degraded, what="ScaleDownRefused")
    assert cond["reason"] == "ScaleDownRefused"
    assert "1" in cond["message"]
    assert apis["apps"].read_namespaced_stateful_set("scale", namespace).spec.replicas == 2


def test_child_deleted_by_hand_is_recreated(operator_runner, apis, namespace):
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, shardset("heal", 1))
    wait_for(lambda: children_exist(apis, namespace, "heal"), what="children")
    old_uid = apis["core"].read_namespaced_service("heal", namespace).metadata.uid
    apis["core"].delete_namespaced_service("heal", namespace)
    apis["apps"].delete_namespaced_stateful_set("heal", namespace)

    def recreated():
        try:
            svc = apis["core"].read_namespaced_service("heal", namespace)
            apis["apps"].read_namespaced_stateful_set("heal", namespace)
        except client.ApiException:
            return None
        return svc.metadata.uid != old_uid

    wait_for(recreated, what="service and statefulset recreated")


def test_invalid_image_and_missing_storage_class_become_conditions(operator_runner, apis, namespace):
    bad = shardset("badimg", 1, image="not a valid image!!")
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, bad)
    nosc = shardset("nosc", 1, storage={"size": "1Gi", "storageClassName": "does-not-exist"})
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, nosc)

    def reason(name):
        st = get_ss(apis, namespace, name).get("status") or {}
        for c in st.get("conditions", []):
            if c["type"] == "Degraded" and c["status"] == "True":
                return c
        return None

    c1 = wait_for(lambda: reason("badimg"), what="InvalidImage")
    assert c1["reason"] == "InvalidImage" and "spec.image" in c1["message"]
    c2 = wait_for(lambda: reason("nosc"), what="StorageClassNotFound")
    assert c2["reason"] == "StorageClassNotFound" and "does-not-exist" in c2["message"]
    assert get_ss(apis, namespace, "nosc")["status"]["phase"] == "Degraded"
    # Nothing is rolled out on a spec that cannot work.
    with pytest.raises(client.ApiException) as err:
        apis["apps"].read_namespaced_stateful_set("badimg", namespace)
    assert err.value.status == 404


def test_delete_garbage_collects_children_and_keeps_keyring_and_kek(operator_runner, apis, namespace):
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, shardset("gone", 1))
    wait_for(lambda: children_exist(apis, namespace, "gone"), what="children")
    key_before = apis["core"].read_namespaced_secret("gone-keyring", namespace).data["v1.wrapped"]
    kek_before = apis["core"].read_namespaced_secret("gone-kek", namespace).data["kek.key"]
    apis["custom"].delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gone")

    def collected():
        try:
            apis["apps"].read_namespaced_stateful_set("gone", namespace)
            return False
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        for read in (lambda: apis["core"].read_namespaced_config_map("gone-config", namespace),
                     lambda: apis["core"].read_namespaced_service("gone", namespace)):
            try:
                read()
                return False
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
        return True

    # The garbage collector runs in kube-controller-manager: this proves ownerReferences are right.
    wait_for(collected, timeout=60, what="garbage collection")
    for name in ("gone-keyring", "gone-kek"):
        assert not apis["core"].read_namespaced_secret(name, namespace).metadata.owner_references, name
    # Re-creating the ShardSet adopts the same keyring and KEK: the retained volumes stay readable.
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, shardset("gone", 1))
    wait_for(lambda: children_exist(apis, namespace, "gone"), what="children again")
    new_uid = get_ss(apis, namespace, "gone")["metadata"]["uid"]
    for name, field, before in (("gone-keyring", "v1.wrapped", key_before), ("gone-kek", "kek.key", kek_before)):
        again = wait_for(lambda name=name: (s := read_secret(apis, namespace, name)) and s.metadata.owner_references
                         and s, what=f"{name} adopted")
        assert again.data[field] == before
        assert again.metadata.owner_references[0].uid == new_uid and again.metadata.owner_references[0].controller
    keyring, kek = (apis["core"].read_namespaced_secret(n, namespace) for n in ("gone-keyring", "gone-kek"))
    assert len(unwrapped_v1(keyring, kek)) == 32

    def reasons() -> set[str]:
        return {e.reason for e in apis["core"].list_namespaced_event(namespace).items
                if e.involved_object.uid == new_uid}

    # Kopf posts events from a background queue, after the handler that made the change has returned.
    wait_for(lambda: {"KeyringAdopted", "KEKAdopted"} <= reasons(), what="adoption events")
    assert "KEKCreated" not in reasons(), "the kept KEK is adopted, never replaced"
