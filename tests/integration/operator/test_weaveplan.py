"""The WeavePlan controller with the ShardSet controller against a real kube-apiserver: the plan adds the weaver
container and weave.json, a spec change reaches weave.json, the plan's status says no weaver reports (no kubelet
here) and that its ShardSet is missing before it exists; a second plan for the same ShardSet conflicts; deleting
the plan removes the weaver."""

from __future__ import annotations

import json
from typing import Any

import pytest
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


def plan(api, ns: str, name: str) -> dict[str, Any]:
    return api["custom"].get_namespaced_custom_object(GROUP, VERSION, ns, "weaveplans", name)


def condition(obj: dict[str, Any], type_: str) -> tuple[str, str] | None:
    c = next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)
    return (c["status"], c["reason"]) if c else None


def weave_json(api, ns: str, shardset: str) -> dict[str, Any] | None:
    try:
        raw = (api["core"].read_namespaced_config_map(f"{shardset}-config", ns).data or {}).get("weave.json")
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return json.loads(raw) if raw else None


def containers(api, ns: str, shardset: str) -> dict[str, Any]:
    try:
        sts = api["apps"].read_namespaced_stateful_set(shardset, ns)
    except client.ApiException as exc:
        if exc.status == 404:
            return {}
        raise
    return {c.name: c for c in sts.spec.template.spec.containers}


def test_plan_adds_the_weaver_and_deleting_it_removes_it(operator_runner, api, namespace):
    create(api, namespace, "weaveplans", "WeavePlan", "growth",
           {"shardSetRef": {"name": "alpha"}, "mode": "split", "interval": "10m", "sampleInterval": "30s"})
    wait_for(lambda: condition(plan(api, namespace, "growth"), "Ready") == ("False", "ShardSetMissing"),
             what="ShardSetMissing before the ShardSet exists")
    assert plan(api, namespace, "growth")["status"]["phase"] == "Pending"

    create(api, namespace, "shardsets", "ShardSet", "alpha", {"shards": 2, "tables": [{"name": "t"}]})
    wait_for(lambda: list(containers(api, namespace, "alpha")) == ["node", "cache", "predictor", "weaver"],
             what="the weaver container in the StatefulSet")
    weaver = containers(api, namespace, "alpha")["weaver"]
    assert weaver.command[0] == "chronoshard-weaver" and weaver.ports[0].container_port == 7404
    assert "--settings" in weaver.command and "/etc/chronoshard/config/weave.json" in weaver.command
    doc = weave_json(api, namespace, "alpha")
    assert doc is not None and doc["plan"] == f"{namespace}/growth" and doc["mode"] == "split"
    assert (doc["intervalSeconds"], doc["sampleIntervalSeconds"], doc["model"]) == (600, 30, "auto")
    ports = {p.name: p.port for p in api["core"].read_namespaced_service("alpha-headless", namespace).spec.ports}
    assert ports["weaver"] == 7404

    # No kubelet runs the pods here: the plan says its weavers do not report.
    wait_for(lambda: condition(plan(api, namespace, "growth"), "Ready") == ("False", "WeaversNotReporting"),
             what="WeaversNotReporting")
    st = plan(api, namespace, "growth")["status"]
    assert st["phase"] == "Pending" and st["shardsReporting"] == 0 and st["observedGeneration"] == 1

    # A second plan for the same ShardSet conflicts; the first stays in force.
    create(api, namespace, "weaveplans", "WeavePlan", "later", {"shardSetRef": {"name": "alpha"}})
    wait_for(lambda: condition(plan(api, namespace, "later"), "Ready") == ("False", "AnotherPlanInForce"),
             what="the younger plan conflicting")

    # A change of the plan reaches weave.json without touching the pod template.
    before = api["apps"].read_namespaced_stateful_set("alpha", namespace).spec.template.to_dict()
    api["custom"].patch_namespaced_custom_object(GROUP, VERSION, namespace, "weaveplans", "growth",
                                                 {"spec": {"confidenceThreshold": 0.9, "mode": "weave"}})
    wait_for(lambda: (weave_json(api, namespace, "alpha") or {}).get("confidenceThreshold") == 0.9,
             what="the new threshold in weave.json")
    assert (weave_json(api, namespace, "alpha") or {})["mode"] == "weave"
    assert api["apps"].read_namespaced_stateful_set("alpha", namespace).spec.template.to_dict() == before

    api["custom"].delete_namespaced_custom_object(GROUP, VERSION, namespace, "weaveplans", "later")
    api["custom"].delete_namespaced_custom_object(GROUP, VERSION, namespace, "weaveplans", "growth")
    wait_for(lambda: list(containers(api, namespace, "alpha")) == ["node", "cache", "predictor"],
             what="the weaver gone after the plan is deleted")
    wait_for(lambda: weave_json(api, namespace, "alpha") is None, what="weave.json gone")
