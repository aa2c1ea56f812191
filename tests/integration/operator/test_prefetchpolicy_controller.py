"""The PrefetchPolicy controller (with the ShardSet controller) against a real kube-apiserver."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kubernetes import client

from tests.support.waiting import wait_for

GROUP, VERSION = "chronoshard.io", "v1alpha1"

pytestmark = pytest.mark.integration



@pytest.fixture()
def api(k8s_client):
    return {"core": client.CoreV1Api(k8s_client), "custom": client.CustomObjectsApi(k8s_client)}


def create_shardset(api, ns: str, name: str) -> None:
    api["custom"].create_namespaced_custom_object(GROUP, VERSION, ns, "shardsets", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ShardSet", "metadata": {"name": name},
        "spec": {"shards": 1, "cache": {"size": "64Mi"}, "tables": [{"name": "t"}]}})


def create_policy(api, ns: str, name: str, target: str, **spec: Any) -> None:
    api["custom"].create_namespaced_custom_object(GROUP, VERSION, ns, "prefetchpolicies", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "PrefetchPolicy", "metadata": {"name": name},
        "spec": {"shardSetRef": {"name": target}, **spec}})


def get_policy(api, ns: str, name: str) -> dict[str, Any]:
    return api["custom"].get_namespaced_custom_object(GROUP, VERSION, ns, "prefetchpolicies", name)


def config(api, ns: str, shardset: str, key: str) -> dict[str, Any] | None:
    try:
        cm = api["core"].read_namespaced_config_map(f"{shardset}-config", ns)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return json.loads((cm.data or {})[key])


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def test_policy_turns_prefetching_on_changes_it_and_deleting_turns_it_off(operator_runner, api, namespace):
    create_shardset(api, namespace, "alpha")
    wait_for(lambda: (config(api, namespace, "alpha", "predictor.json") or {}).get("enabled") is False,
             what="the ShardSet's config without prefetching")

    create_policy(api, namespace, "pf", "alpha", model="learned", horizon="30s", scoreThreshold=0.7,
                  budget={"bytesPerSecond": "1Mi", "requestsPerSecond": 50, "maxInflight": 4},
                  cacheBudget="16Mi", feedback={"window": "1m", "targetPrecision": 0.75})
    pred = wait_for(lambda: (c := config(api, namespace, "alpha", "predictor.json")) and c.get("enabled") and c,
                    what="prefetching on in predictor.json")
    assert pred["tables"] == ["t"] and pred["model"] == "learned" and pred["horizonSeconds"] == 30.0
    assert pred["scoreThreshold"] == 0.7
    assert pred["budget"] == {"requestsPerSecond": 50, "bytesPerSecond": 1048576}
    assert pred["feedback"] == {"enabled": True, "targetPrecision": 0.75, "windowSeconds": 60.0}
    cache = config(api, namespace, "alpha", "cache.json")
    assert cache is not None and cache["prefetchWorkers"] == 4 and cache["prefetchBudgetFraction"] == 0.25

    # The policy's status: the config is in place, so Active; there is no kubelet here, so no shard reports.
    pol = wait_for(lambda: (p := get_policy(api, namespace, "pf")).get("status", {}).get("phase") == "Active" and p,
                   what="phase Active")
    st = pol["status"]
    assert st["observedGeneration"] == pol["metadata"]["generation"]
    assert st["reporting"] == "0/1" and st["shardsExpected"] == 1 and st["shardsReporting"] == 0
    ready = condition(pol, "Ready")
    assert ready is not None and ready["status"] == "False" and ready["reason"] == "ShardsNotReporting"
    assert st["shards"][0]["reporting"] is False and st["shards"][0]["error"]

    api["custom"].patch_namespaced_custom_object(GROUP, VERSION, namespace, "prefetchpolicies", "pf",
                                                 {"spec": {"scoreThreshold": 0.9, "model": "successor"}})
    pred = wait_for(lambda: (c := config(api, namespace, "alpha", "predictor.json")) and
                    c.get("scoreThreshold") == 0.9 and c, what="the changed threshold in predictor.json")
    assert pred["model"] == "successor" and pred["enabled"] is True
    gen = get_policy(api, namespace, "pf")["metadata"]["generation"]
    wait_for(lambda: get_policy(api, namespace, "pf").get("status", {}).get("observedGeneration") == gen,
             what="the new generation observed")

    api["custom"].delete_namespaced_custom_object(GROUP, VERSION, namespace, "prefetchpolicies", "pf")
    pred = wait_for(lambda: (c := config(api, namespace, "alpha", "predictor.json")) and c.get("enabled") is False
                    and c, what="prefetching off after the policy is deleted")
    assert pred == {"tables": ["t"], "enabled": False}
    assert "prefetchWorkers" not in (config(api, namespace, "alpha", "cache.json") or {})


def test_policy_for_a_missing_shardset_names_it_and_recovers(operator_runner, api, namespace):
    create_policy(api, namespace, "early", "later")
    pol = wait_for(lambda: (p := get_policy(api, namespace, "early")) and condition(p, "Ready") and p,
                   what="a Ready condition")
    ready = condition(pol, "Ready")
    assert pol["status"]["phase"] == "Waiting"
    assert ready["status"] == "False" and ready["reason"] == "ShardSetNotFound" and "ShardSet later" in ready["message"]

    create_shardset(api, namespace, "later")
    # The ShardSet picks the waiting policy up at its first reconcile; the policy sees it at its next poll.
    pred = wait_for(lambda: (c := config(api, namespace, "later", "predictor.json")) and c.get("enabled") and c,
                    what="the new ShardSet's config with the policy")
    assert pred["model"] == "auto" and pred["horizonSeconds"] == 300.0
    wait_for(lambda: get_policy(api, namespace, "early").get("status", {}).get("phase") == "Active", timeout=30,
             what="phase Active once the ShardSet exists")


def test_two_policies_the_newer_conflicts_until_the_older_goes(operator_runner, api, namespace):
    create_shardset(api, namespace, "beta")
    create_policy(api, namespace, "first", "beta", scoreThreshold=0.6)
    wait_for(lambda: (config(api, namespace, "beta", "predictor.json") or {}).get("scoreThreshold") == 0.6,
             what="the first policy in predictor.json")
    time.sleep(1.1)  # creationTimestamp has one-second precision; make "second" strictly newer
    create_policy(api, namespace, "second", "beta", scoreThreshold=0.8)

    pol = wait_for(lambda: (p := get_policy(api, namespace, "second")).get("status", {}).get("phase") == "Conflict"
                   and p, what="the newer policy in Conflict")
    conflict = condition(pol, "Conflict")
    assert conflict is not None and conflict["status"] == "True" and "PrefetchPolicy first" in conflict["message"]
    # The policy in force still configures the ShardSet, and says so.
    assert (config(api, namespace, "beta", "predictor.json") or {}).get("scoreThreshold") == 0.6
    assert get_policy(api, namespace, "first")["status"]["phase"] in ("Active", "Waiting")
    assert condition(get_policy(api, namespace, "first"), "Conflict") is None

    api["custom"].delete_namespaced_custom_object(GROUP, VERSION, namespace, "prefetchpolicies", "first")
    wait_for(lambda: (config(api, namespace, "beta", "predictor.json") or {}).get("scoreThreshold") == 0.8,
             what="the second policy taking over predictor.json")
    pol = wait_for(lambda: (p := get_policy(api, namespace, "second")).get("status", {}).get("phase") == "Active"
                   and p, timeout=30, what="the second policy Active")
    cleared = condition(pol, "Conflict")
    assert cleared is not None and cleared["status"] == "False"
