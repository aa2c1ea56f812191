"""The ShardSet controller's key-encryption key handling against a real kube-apiserver: provider none, the
user's kekSecretRef (missing, invalid, fixed), a keyring from before keyEncryption, and keyrings that do not fit
their KEK."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from chronoshard.shardnode.keys.provider import unwrap_key
from kubernetes import client

from tests.integration.operator.test_shardset_controller import (
    GROUP,
    PLURAL,
    VERSION,
    children_exist,
    degraded,
    get_ss,
    read_secret,
    shardset,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def test_provider_none_keeps_raw_keys_and_no_kek(operator_runner, apis, namespace):
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                   shardset("plain", 1, keyEncryption={"provider": "none"}))
    sts = wait_for(lambda: children_exist(apis, namespace, "plain"), what="children")
    secret = apis["core"].read_namespaced_secret("plain-keyring", namespace)
    assert set(secret.data) == {"keyring.json", "v1.key"} and len(base64.b64decode(secret.data["v1.key"])) == 32
    assert read_secret(apis, namespace, "plain-kek") is None
    assert "kek" not in {v.name for v in sts.spec.template.spec.volumes}
    assert all("--kek-dir" not in c.command for c in sts.spec.template.spec.containers)
    versions = wait_for(lambda: (get_ss(apis, namespace, "plain").get("status") or {}).get("keyVersions"),
                        what="status")
    assert versions == [{"id": 1, "state": "primary", "wrapped": False}]


def test_missing_then_invalid_then_fixed_kek_secret_ref(operator_runner, apis, namespace):
    apis["custom"].create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, shardset("byo", 1, keyEncryption={"kekSecretRef": {"name": "byo-key"}}))
    cond = wait_for(lambda: degraded(apis, namespace, "byo"), what="KEKMissing")
    assert cond["reason"] == "KEKMissing" and "byo-key" in cond["message"]
    assert "spec.keyEncryption.kekSecretRef.name" in cond["message"]
    # No keyring (nor KEK of the operator's own, nor pods) while the user's KEK is missing.
    assert read_secret(apis, namespace, "byo-keyring") is None and read_secret(apis, namespace, "byo-kek") is None
    with pytest.raises(client.ApiException):
        apis["apps"].read_namespaced_stateful_set("byo", namespace)

    short = b"only-sixteen-byt"
    apis["core"].create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="byo-key"), data={"kek.key": base64.b64encode(short).decode()}))
    cond = wait_for(lambda: (c := degraded(apis, namespace, "byo")) and c["reason"] == "KEKInvalid" and c,
                    timeout=30, what="KEKInvalid")
    assert "holds 16 bytes" in cond["message"]
    assert read_secret(apis, namespace, "byo-keyring") is None

    kek = bytes(range(100, 132))
    apis["core"].patch_namespaced_secret("byo-key", namespace, {"data": {"kek.key": base64.b64encode(kek).decode()}})
    keyring = wait_for(lambda: read_secret(apis, namespace, "byo-keyring"), timeout=30, what="keyring after the fix")
    assert len(unwrap_key(kek, base64.b64decode(keyring.data["v1.wrapped"]), 1)) == 32
    sts = wait_for(lambda: children_exist(apis, namespace, "byo"), what="statefulset after the fix")
    volumes = {v.name: v for v in sts.spec.template.spec.volumes}
    assert volumes["kek"].secret.secret_name == "byo-key"
    wait_for(lambda: degraded(apis, namespace, "byo") is None, what="Degraded cleared")
    user_secret = apis["core"].read_namespaced_secret("byo-key", namespace)
    assert not user_secret.metadata.owner_references, "the user's Secret is never adopted"
    events = apis["core"].list_namespaced_event(namespace).items
    assert {"KEKMissing", "KEKInvalid"} <= {e.reason for e in events if e.involved_object.name == "byo"}
    blob = " ".join(e.message or "" for e in events) + json.dumps(get_ss(apis, namespace, "byo")["status"])
    for raw in (short, kek):
        assert raw.hex() not in blob and base64.b64encode(raw).decode() not in blob and short.decode() not in blob


def _secret(apis, ns, name, data):
    apis["core"].create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name=name), data=data))


def test_an_existing_raw_keyring_keeps_its_form_under_the_default_provider(operator_runner, apis, namespace):
    from chronoshard.operator.keyring import initial_keyring_data

    # A ShardSet from before keyEncryption existed, re-created: its orphaned keyring is raw.
    raw = initial_keyring_data("AES-256-GCM")
    _secret(apis, namespace, "legacy-keyring", raw)
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, shardset("legacy", 1))
    wait_for(lambda: children_exist(apis, namespace, "legacy"), what="children")
    wait_for(lambda: (get_ss(apis, namespace, "legacy").get("status") or {}).get("keyVersion") == 1, what="status")
    assert apis["core"].read_namespaced_secret("legacy-keyring", namespace).data == raw
    assert read_secret(apis, namespace, "legacy-kek") is not None
    assert degraded(apis, namespace, "legacy") is None


@pytest.mark.parametrize("case", ["foreign-kek", "wrapped-but-none"])
def test_a_keyring_that_does_not_fit_the_kek_is_reported_and_blocks_the_rollout(operator_runner, apis, namespace,
                                                                                case):
    from chronoshard.operator.keyring import initial_keyring_data, new_kek_data

    kek = bytes(range(32))
    _secret(apis, namespace, "misfit-keyring", initial_keyring_data("AES-256-GCM", kek=kek))
    if case == "foreign-kek":
        _secret(apis, namespace, "other-kek", new_kek_data())
        key_encryption: dict[str, Any] = {"kekSecretRef": {"name": "other-kek"}}
        reason, words = "KEKMismatch", "do not unwrap under the KEK in Secret other-kek"
    else:
        key_encryption = {"provider": "none"}
        reason, words = "KeyringWrapped", "provider is none"
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                   shardset("misfit", 1, keyEncryption=key_encryption))
    cond = wait_for(lambda: degraded(apis, namespace, "misfit"), what=reason)
    assert cond["reason"] == reason and words in cond["message"] and "[1]" in cond["message"]
    assert kek.hex() not in cond["message"]
    with pytest.raises(client.ApiException) as err:
        apis["apps"].read_namespaced_stateful_set("misfit", namespace)
    assert err.value.status == 404
