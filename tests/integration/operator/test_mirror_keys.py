"""Keys in step across a MirrorSet (#17) against a real kube-apiserver: the active member's keyring and KEK data are
copied into the other members' Secrets (only when different, their metadata kept, never logged), and a KeyRotation
of a mirror is refused while the active member's proceeds."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest
from chronoshard.operator.keyring import new_kek_data, parse_kek, versions_not_unwrapping
from chronoshard.operator.mirrorset.assets import copy_keys
from kubernetes import client

from tests.support.waiting import wait_for

GROUP, VERSION = "chronoshard.io", "v1alpha1"

pytestmark = pytest.mark.integration


def _shardset(apis, ns: str, name: str, **spec: Any) -> None:
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, ns, "shardsets", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ShardSet", "metadata": {"name": name},
        "spec": {"shards": 1, **spec}})


def _secret(apis, ns: str, name: str) -> client.V1Secret | None:
    try:
        return apis["core"].read_namespaced_secret(name, ns)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _keys_made(apis, ns: str, *names: str) -> bool:
    return all(_secret(apis, ns, f"{n}-keyring") is not None for n in names)


def test_active_members_keys_are_copied_only_when_different_and_never_logged(operator_runner, apis, namespace,
                                                                             caplog):
    ns = namespace
    user_kek = new_kek_data()
    apis["core"].create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="user-kek"),
                                                              data=user_kek))
    _shardset(apis, ns, "src")
    _shardset(apis, ns, "mir")
    _shardset(apis, ns, "plain", keyEncryption={"provider": "none"})
    _shardset(apis, ns, "own", keyEncryption={"kekSecretRef": {"name": "user-kek"}})
    wait_for(lambda: _keys_made(apis, ns, "src", "mir", "plain", "own"), what="the four keyrings")
    src_keyring, src_kek = _secret(apis, ns, "src-keyring"), _secret(apis, ns, "src-kek")
    mir_before = {n: _secret(apis, ns, n) for n in ("mir-keyring", "mir-kek")}
    plain_before, own_before = _secret(apis, ns, "plain-keyring"), _secret(apis, ns, "own-keyring")
    assert mir_before["mir-keyring"].data != src_keyring.data

    caplog.set_level(logging.DEBUG)
    sync = copy_keys((ns, "src"), [(ns, "mir"), (ns, "plain"), (ns, "own")])
    # The KEK first (a keyring must not be mounted before the KEK it is wrapped under), then the keyring.
    assert sync.copied == [f"{ns}/mir-kek", f"{ns}/mir-keyring"]
    for name, source in (("mir-keyring", src_keyring), ("mir-kek", src_kek)):
        now = _secret(apis, ns, name)
        assert now.data == source.data
        before = mir_before[name].metadata
        # Its own metadata stays: owner (the mir ShardSet), labels, name.
        assert [r.uid for r in now.metadata.owner_references] == [r.uid for r in before.owner_references]
        assert now.metadata.labels == before.labels
    # The copied keyring unwraps under the copied KEK: mir's pods can read what src sealed.
    mir_kek = parse_kek(_secret(apis, ns, "mir-kek").data, "mir-kek")
    assert versions_not_unwrapping(_secret(apis, ns, "mir-keyring").data, mir_kek) == []

    # A member without a KEK, and one whose own (user's) KEK Secret differs, are left as they were, and said so.
    assert _secret(apis, ns, "plain-keyring").data == plain_before.data
    assert _secret(apis, ns, "own-keyring").data == own_before.data
    assert _secret(apis, ns, "user-kek").data == user_kek
    assert any("plain" in p and "provider is none" in p for p in sync.problems), sync.problems
    assert any("own" in p and "user-kek" in p and "differs" in p for p in sync.problems), sync.problems

    # Nothing to do the second time.
    again = copy_keys((ns, "src"), [(ns, "mir")])
    assert (again.copied, again.problems) == ([], [])

    # No key material anywhere in what the copy said or logged.
    secrets = [*src_keyring.data.values(), *src_kek.data.values(), *user_kek.values()]
    raw = [base64.b64decode(v) for v in src_kek.data.values()]
    said = " ".join(sync.problems + sync.copied) + caplog.text
    assert not any(s in said for s in secrets)
    assert not any(r.hex() in said for r in raw)


def test_a_mirrors_own_kek_secret_equal_to_the_active_ones_gets_the_keyring(operator_runner, apis, namespace):
    ns = namespace
    _shardset(apis, ns, "src")
    wait_for(lambda: _secret(apis, ns, "src-kek"), what="src's KEK")
    apis["core"].create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="same-kek"),
                                                              data=_secret(apis, ns, "src-kek").data))
    _shardset(apis, ns, "own", keyEncryption={"kekSecretRef": {"name": "same-kek"}})
    wait_for(lambda: _keys_made(apis, ns, "own"), what="own's keyring")
    sync = copy_keys((ns, "src"), [(ns, "own")])
    assert (sync.copied, sync.problems) == ([f"{ns}/own-keyring"], [])
    assert _secret(apis, ns, "own-keyring").data == _secret(apis, ns, "src-keyring").data


def _rotation(apis, ns: str, name: str, shardset: str) -> None:
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, ns, "keyrotations", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "KeyRotation", "metadata": {"name": name},
        "spec": {"shardSetRef": {"name": shardset}, "trigger": "now"}})


def _ready(apis, ns: str, name: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    obj = apis["custom"].get_namespaced_custom_object(GROUP, VERSION, ns, "keyrotations", name)
    status = obj.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)
    return (status, ready) if ready is not None else None


def test_keyrotation_of_a_mirror_is_refused_and_the_active_members_runs(operator_runner, apis, namespace):
    ns = namespace
    _shardset(apis, ns, "src")
    _shardset(apis, ns, "mir")
    wait_for(lambda: _keys_made(apis, ns, "src", "mir"), what="the keyrings")
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, ns, "mirrorsets", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "MirrorSet", "metadata": {"name": "orders"},
        "spec": {"sourceRef": {"name": "src"}, "mirrors": [{"shardSetRef": {"name": "mir"}}]}})
    _rotation(apis, ns, "rot-mir", "mir")
    _rotation(apis, ns, "rot-src", "src")

    def refused() -> Any:
        got = _ready(apis, ns, "rot-mir")
        return got if got is not None and got[1]["reason"] == "MirrorFollowsSource" else None

    status, ready = wait_for(refused, what="the mirror's rotation refused")
    assert ready["status"] == "False" and status["phase"] == "Waiting"
    assert f"MirrorSet {ns}/orders" in ready["message"] and f"{ns}/src" in ready["message"]
    assert "toVersion" not in status
    assert "rotation-lock" not in str(_secret(apis, ns, "mir-keyring").metadata.annotations or {})

    def started() -> Any:
        got = _ready(apis, ns, "rot-src")
        return got if got is not None and got[0].get("phase") not in (None, "Pending", "Waiting") else None

    status, ready = wait_for(started, what="the active member's rotation started")
    assert ready["reason"] != "MirrorFollowsSource" and status["toVersion"] == 2
