"""The KeyRotation controller's key distribution step against a real kube-apiserver: a wrapped keyring grows by a
wrapped version (under the ShardSet's KEK), a raw one by a raw version, and a missing KEK changes nothing."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest
from chronoshard.operator import kube
from chronoshard.operator.keyring import initial_keyring_data, new_kek_data
from chronoshard.operator.keyrotation import controller
from chronoshard.shardnode.keys.provider import unwrap_key
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.integration

GROUP, VERSION = "chronoshard.io", "v1alpha1"


@pytest.fixture()
def core(k8s_client):
    # Put back whatever client was set: the session's in-process operator (operator_runner) may be using it.
    previous = kube._api
    kube.set_api_client(k8s_client)
    yield client.CoreV1Api(k8s_client)
    kube.set_api_client(previous)


def _setup(k8s_client, core, ns: str, name: str, key_encryption: dict[str, Any], keyring: dict[str, str],
           kek: dict[str, str] | None, kek_name: str) -> None:
    # Secrets before the ShardSet: if the session's operator is running it adopts them instead of making its own.
    core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name=f"{name}-keyring"),
                                                      data=keyring))
    if kek is not None:
        core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name=kek_name), data=kek))
    client.CustomObjectsApi(k8s_client).create_namespaced_custom_object(GROUP, VERSION, ns, "shardsets", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ShardSet", "metadata": {"name": name},
        "spec": {"shards": 1, "keyEncryption": key_encryption}})


def _step(obj: dict[str, Any]) -> Any:
    """One controller step, retried on a 409 as the controller's loop does (a running operator may adopt the
    keyring Secret at the same moment, which moves its resourceVersion under our precondition)."""
    for _ in range(20):
        try:
            return asyncio.run(controller.step(obj))
        except ApiException as exc:
            if exc.status != 409:
                raise
            time.sleep(0.5)
    raise AssertionError("the keyring Secret kept changing under the step")


def _distributing(ns: str, shardset: str) -> dict[str, Any]:
    return {"metadata": {"name": "rot", "namespace": ns, "generation": 1, "uid": "u"},
            "spec": {"shardSetRef": {"name": shardset}, "trigger": "a"},
            "status": {"phase": "Distributing", "fromVersion": 1, "toVersion": 2, "reason": "manual"}}


@pytest.mark.parametrize("own_secret", [False, True], ids=["operator-kek", "kek-secret-ref"])
def test_wrapped_keyring_gains_a_wrapped_version_under_the_shardsets_kek(k8s_client, core, namespace, own_secret):
    kek_data = new_kek_data()
    kek = base64.b64decode(kek_data["kek.key"])
    kek_name = "mine" if own_secret else "ks-kek"
    _setup(k8s_client, core, namespace, "ks", {"kekSecretRef": {"name": "mine"}} if own_secret else {},
           initial_keyring_data("AES-256-GCM", kek=kek), kek_data, kek_name)
    st = _step(_distributing(namespace, "ks"))
    assert st.status["phase"] == "AwaitingLoad"
    data = core.read_namespaced_secret("ks-keyring", namespace).data
    assert set(data) == {"keyring.json", "v1.wrapped", "v2.wrapped"}
    v1 = unwrap_key(kek, base64.b64decode(data["v1.wrapped"]), 1)
    v2 = unwrap_key(kek, base64.b64decode(data["v2.wrapped"]), 2)
    assert len(v2) == 32 and v2 != v1
    assert [v["id"] for v in json.loads(base64.b64decode(data["keyring.json"]))["versions"]] == [1, 2]


def test_raw_keyring_gains_a_raw_version_without_reading_any_kek(k8s_client, core, namespace):
    # An older ShardSet: its keyring was made raw; the (defaulted) embedded provider does not change that.
    _setup(k8s_client, core, namespace, "old", {}, initial_keyring_data("AES-256-GCM"), None, "old-kek")
    st = _step(_distributing(namespace, "old"))
    assert st.status["phase"] == "AwaitingLoad"
    data = core.read_namespaced_secret("old-keyring", namespace).data
    assert set(data) == {"keyring.json", "v1.key", "v2.key"} and len(base64.b64decode(data["v2.key"])) == 32


@pytest.mark.parametrize("problem", ["missing", "foreign"])
def test_missing_or_foreign_kek_pauses_the_rotation_and_changes_nothing(k8s_client, core, namespace, problem):
    kek = bytes(range(32))
    other = new_kek_data() if problem == "foreign" else None
    # Named by kekSecretRef, so a running operator never creates it (it would make <name>-kek for the default).
    _setup(k8s_client, core, namespace, "nk", {"kekSecretRef": {"name": "nk-kek"}},
           initial_keyring_data("AES-256-GCM", kek=kek), other, "nk-kek")
    # Key material and manifest, not resourceVersion: a running operator may label/adopt the Secret meanwhile.
    before = core.read_namespaced_secret("nk-keyring", namespace).data
    st = _step(_distributing(namespace, "nk"))
    assert st.status["phase"] == "Distributing"
    ready = next(c for c in st.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "KEKUnavailable"
    assert ("nk-kek does not exist" if problem == "missing" else "do not unwrap") in ready["message"]
    assert core.read_namespaced_secret("nk-keyring", namespace).data == before
    secrets = [kek] + ([base64.b64decode(other["kek.key"])] if other else [])
    assert not any(k.hex() in ready["message"] or base64.b64encode(k).decode() in ready["message"] for k in secrets)
