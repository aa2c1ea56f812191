"""ShardSet ``spec.partitioning.rebalance`` with the whole operator running (the real API server): a scale-up adds
the empty shards and creates the owned Reshard ``<shardset>-rebalance-<epoch>`` whose steps the planner made; a
scale-down keeps the old shard count (ScaleDownWaitingForReshard) and creates the Reshard that empties the shards
being removed. The moves themselves wait for the shard pods, which this control plane never runs."""

from __future__ import annotations

from typing import Any

import pytest
from chronoshard.operator import reshardplan
from chronoshard.operator.spec.reshard import MoveStep, parse_reshard
from chronoshard.shardnode.keyspace.partitioning import initial_map, rescale
from kubernetes import client

from tests.support.waiting import wait_for

GROUP, VERSION = "chronoshard.io", "v1alpha1"

pytestmark = pytest.mark.integration


def _shardset(name: str, shards: int) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ShardSet", "metadata": {"name": name},
            "spec": {"shards": shards, "partitioning": {"rebalance": True}}}


def _get(apis, ns: str, plural: str, name: str) -> dict[str, Any] | None:
    try:
        return apis["custom"].get_namespaced_custom_object(GROUP, VERSION, ns, plural, name)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def test_scale_up_two_to_three_creates_the_rebalance_reshard(operator_runner, apis, namespace):
    ss = _shardset("grow", 2)
    ss["spec"]["partitioning"]["gracePeriod"] = "30s"
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, namespace, "shardsets", ss)
    wait_for(lambda: (_get(apis, namespace, "shardsets", "grow") or {}).get("status", {}).get("partitionMap"),
             what="first map")
    assert _get(apis, namespace, "reshards", "grow-rebalance-1") is None  # balanced from the start: nothing to do
    apis["custom"].patch_namespaced_custom_object(GROUP, VERSION, namespace, "shardsets", "grow",
                                                  {"spec": {"shards": 3}})
    reshard = wait_for(lambda: _get(apis, namespace, "reshards", "grow-rebalance-2"), what="rebalance Reshard")
    owner = reshard["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("ShardSet", "grow")
    spec = parse_reshard(reshard["spec"])
    assert reshard["spec"]["gracePeriod"] == "30s"  # the ShardSet's spec.partitioning.gracePeriod
    grown = rescale(initial_map(2), 3)
    assert list(spec.steps) == reshardplan.rebalance_steps(grown, 3)
    assert reshardplan.balanced(reshardplan.simulate(grown, list(spec.steps)), 3)
    assert any(isinstance(s, MoveStep) and s.to_shard == 2 for s in spec.steps)
    wait_for(lambda: apis["apps"].read_namespaced_stateful_set("grow", namespace).spec.replicas == 3,
             what="the shards added at once")


def test_scale_down_waits_for_the_reshard_that_empties_the_removed_shards(operator_runner, apis, namespace):
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, namespace, "shardsets", _shardset("shrink", 3))
    wait_for(lambda: (_get(apis, namespace, "shardsets", "shrink") or {}).get("status", {}).get("partitionMap"),
             what="first map")
    apis["custom"].patch_namespaced_custom_object(GROUP, VERSION, namespace, "shardsets", "shrink",
                                                  {"spec": {"shards": 2}})

    def waiting() -> dict[str, Any] | None:
        st = (_get(apis, namespace, "shardsets", "shrink") or {}).get("status") or {}
        return next((c for c in st.get("conditions", []) if c["reason"] == "ScaleDownWaitingForReshard"
                     and c["status"] == "True" and st.get("observedGeneration") == 2), None)

    cond = wait_for(waiting, what="ScaleDownWaitingForReshard")
    assert "3 shard(s)" in cond["message"]
    reshard = wait_for(lambda: _get(apis, namespace, "reshards", "shrink-rebalance-1"), what="rebalance Reshard")
    steps = list(parse_reshard(reshard["spec"]).steps)
    end = reshardplan.simulate(initial_map(3), steps)
    assert not end.partitions_of(2) and reshardplan.balanced(end, 2)
    assert apis["apps"].read_namespaced_stateful_set("shrink", namespace).spec.replicas == 3  # kept until done


def test_a_scale_waits_for_a_running_reshard(operator_runner, apis, namespace):
    """A Reshard pushes maps of the next epochs: a rescale meanwhile would make a second map of one epoch. The
    ShardSet keeps its shard count until the Reshard ends (here: deleted)."""
    ss = _shardset("busy", 2)
    ss["spec"].pop("partitioning")
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, namespace, "shardsets", ss)
    wait_for(lambda: (_get(apis, namespace, "shardsets", "busy") or {}).get("status", {}).get("partitionMap"),
             what="first map")
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, namespace, "reshards", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Reshard", "metadata": {"name": "busy-move"},
        "spec": {"shardSetRef": {"name": "busy"}, "steps": [{"move": {"partition": 0, "toShard": 1}}]}})
    # No pod ever gets an IP here: the move stays in its first phase, the Reshard Running.
    wait_for(lambda: ((_get(apis, namespace, "reshards", "busy-move") or {}).get("status") or {}).get("phase")
             == "Running", what="Reshard running")
    apis["custom"].patch_namespaced_custom_object(GROUP, VERSION, namespace, "shardsets", "busy",
                                                  {"spec": {"shards": 3}})

    def held() -> dict[str, Any] | None:
        st = (_get(apis, namespace, "shardsets", "busy") or {}).get("status") or {}
        return next((c for c in st.get("conditions", []) if c["reason"] == "ScaleWaitingForReshard"
                     and st.get("observedGeneration") == 2), None)

    assert "busy-move" in wait_for(held, what="ScaleWaitingForReshard")["message"]
    assert apis["apps"].read_namespaced_stateful_set("busy", namespace).spec.replicas == 2
    apis["custom"].delete_namespaced_custom_object(GROUP, VERSION, namespace, "reshards", "busy-move")
    wait_for(lambda: apis["apps"].read_namespaced_stateful_set("busy", namespace).spec.replicas == 3,
             what="the scale once the Reshard is gone")
    wait_for(lambda: (_get(apis, namespace, "shardsets", "busy") or {})["status"]["partitionMap"]["epoch"] == 2,
             what="the rescaled map in the status")
