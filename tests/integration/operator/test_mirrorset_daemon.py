"""The MirrorSet controller as the operator runs it (the session's in-process Kopf operator, real kube-apiserver):
its daemon starts on a new MirrorSet and writes the first status, copies the active member's keys into the mirror's
Secrets, and a request annotation (which does not change the generation) wakes it. The member pods never run here
(no kubelet): every copy is reported unavailable, the manual policy does nothing about it."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.support.waiting import wait_for

GROUP, VERSION = "chronoshard.io", "v1alpha1"

pytestmark = pytest.mark.integration


def _create(apis, ns: str, plural: str, kind: str, name: str, spec: dict[str, Any]) -> None:
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, ns, plural, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec})


def _status(apis, ns: str) -> dict[str, Any]:
    return apis["custom"].get_namespaced_custom_object(GROUP, VERSION, ns, "mirrorsets", "orders").get("status") or {}


def _events(apis, ns: str) -> list[str]:
    return [f"{e.reason}: {e.message}" for e in apis["core"].list_namespaced_event(ns).items
            if e.involved_object.kind == "MirrorSet"]


def test_the_daemon_runs_the_first_pass_copies_keys_and_wakes_on_a_request(operator_runner, apis, namespace):
    ns = namespace
    for name in ("orders-a", "orders-b"):
        _create(apis, ns, "shardsets", "ShardSet", name, {"shards": 1})
    wait_for(lambda: all(_secret_data(apis, ns, f"{n}-keyring") for n in ("orders-a", "orders-b")),
             what="both keyrings")
    assert _secret_data(apis, ns, "orders-a-keyring") != _secret_data(apis, ns, "orders-b-keyring")
    _create(apis, ns, "mirrorsets", "MirrorSet", "orders", {
        "sourceRef": {"name": "orders-a"}, "mirrors": [{"shardSetRef": {"name": "orders-b"}}],
        "health": {"probeInterval": "1s", "failureThreshold": 1}, "failover": {"policy": "manual"}})

    status = wait_for(lambda: (lambda s: s if s.get("term") == 1 and s.get("shards") else None)(_status(apis, ns)),
                      what="the first status")
    assert (status["activeShardSet"], status["activeSource"], status["phase"]) == (
        f"{ns}/orders-a", "orders-a", "Degraded")
    copies = {c["shardSet"]: c for c in status["shards"][0]["copies"]}
    assert copies[f"{ns}/orders-a"]["health"] == "unavailable", copies
    wait_for(lambda: _secret_data(apis, ns, "orders-b-keyring") == _secret_data(apis, ns, "orders-a-keyring"),
             what="the active member's keyring copied into the mirror's")
    degraded = wait_for(lambda: next((c for c in _status(apis, ns).get("conditions") or []
                                      if c["type"] == "Degraded" and "failover policy is manual" in c["message"]),
                                     None), what="the manual policy's hint")
    assert "chronoshard.io/switchover-to" in degraded["message"]
    assert "operation" not in _status(apis, ns)

    apis["custom"].patch_namespaced_custom_object(GROUP, VERSION, ns, "mirrorsets", "orders", {
        "metadata": {"annotations": {"chronoshard.io/switchover-to": "not-a-member"}}})
    wait_for(lambda: _status(apis, ns).get("lastSwitchoverRequest") == "not-a-member", what="the request handled")
    wait_for(lambda: any(e.startswith("RequestRefused: chronoshard.io/switchover-to=not-a-member")
                         for e in _events(apis, ns)), what="the RequestRefused event")
    assert _status(apis, ns)["term"] == 1 and any(e.startswith("Initialized") for e in _events(apis, ns))


def _secret_data(apis, ns: str, name: str) -> dict[str, str] | None:
    try:
        return dict(apis["core"].read_namespaced_secret(name, ns).data or {})
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
