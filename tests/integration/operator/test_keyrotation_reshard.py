"""A KeyRotation's rewrap and a Reshard's move exclude each other (docs/resharding.md): against the real API server,
the rotation's Rewrapping phase waits (WaitingForReshard) while a Reshard of its ShardSet is moving a partition, and
goes on once the move is done; a Reshard running a split, or a move still Pending, does not hold it back."""

from __future__ import annotations

from datetime import timedelta

import pytest
from chronoshard.operator import kube
from chronoshard.operator.keyrotation.controller import Rotation, Step, _rewrapping
from chronoshard.operator.keyrotation.plan import ProcessReport
from chronoshard.operator.spec.keyrotation import KeyRotationSpec
from kubernetes import client

from tests.support.shadowstub import GROUP, VERSION, create_custom

pytestmark = [pytest.mark.integration, pytest.mark.without_operator]


@pytest.fixture()
def api(k8s_client):
    previous = kube._api
    kube.set_api_client(k8s_client)
    yield client.CustomObjectsApi(k8s_client)
    kube.set_api_client(previous)


def _rotation(ns: str) -> Rotation:
    # Shard 0's node still has 5 blocks on version 1: the rewrap is not done.
    reports = [ProcessReport(0, "node", True, 5, 2, frozenset({1, 2}), {1: 5, 2: 3}),
               ProcessReport(0, "cache", True, 5, 2, frozenset({1, 2}))]
    st = Step({"phase": "Rewrapping", "toVersion": 2, "fromVersion": 1, "promotionTime": "2026-12-07T10:00:00Z"})
    return Rotation({"metadata": {"namespace": ns, "name": "rot"}}, KeyRotationSpec("orders", trigger="t",
                    transition_period=timedelta(0)), st, 1, {}, None, 1, 2, 1,  # type: ignore[arg-type]
                    reports=reports, target=5)


def _ready_reason(step: Step) -> str:
    return next(c["reason"] for c in step.status["conditions"] if c["type"] == "Ready")


def _set_status(api, ns: str, name: str, status: dict) -> None:
    api.patch_namespaced_custom_object_status(GROUP, VERSION, ns, "reshards", name, {"status": status})


async def test_the_rewrap_waits_for_a_moving_reshard(api, namespace):
    create_custom(api.api_client, namespace, "reshards", "grow", {
        "shardSetRef": {"name": "orders"},
        "steps": [{"split": {"partition": 0}}, {"move": {"partition": 2, "toShard": 1}}]}, "Reshard")
    # Running its split: no data moves, the rewrap goes on.
    _set_status(api, namespace, "grow", {"phase": "Running", "currentStep": 0,
                                         "steps": [{"index": 0, "type": "split", "phase": "CuttingOver"}]})
    assert _ready_reason(await _rewrapping(_rotation(namespace))) == "Rewrapping"
    # The move waiting (for this very rotation): still no hold, so the two never wait for each other.
    _set_status(api, namespace, "grow", {"phase": "Running", "currentStep": 1, "steps": [
        {"index": 0, "type": "split", "phase": "Completed"}, {"index": 1, "type": "move", "phase": "Pending"}]})
    assert _ready_reason(await _rewrapping(_rotation(namespace))) == "Rewrapping"
    # The move copying: the rewrap waits, naming the Reshard.
    _set_status(api, namespace, "grow", {"phase": "Running", "currentStep": 1, "steps": [
        {"index": 0, "type": "split", "phase": "Completed"}, {"index": 1, "type": "move", "phase": "Copying"}]})
    held = await _rewrapping(_rotation(namespace))
    cond = next(c for c in held.status["conditions"] if c["type"] == "Ready")
    assert cond["reason"] == "WaitingForReshard" and "grow" in cond["message"]
    assert held.status["phase"] == "Rewrapping"
    # Another ShardSet's move does not hold it.
    create_custom(api.api_client, namespace, "reshards", "other", {
        "shardSetRef": {"name": "billing"}, "steps": [{"move": {"partition": 0, "toShard": 1}}]}, "Reshard")
    _set_status(api, namespace, "grow", {"phase": "Completed", "currentStep": 2})
    _set_status(api, namespace, "other", {"phase": "Running", "currentStep": 0,
                                          "steps": [{"index": 0, "type": "move", "phase": "CatchingUp"}]})
    assert _ready_reason(await _rewrapping(_rotation(namespace))) == "Rewrapping"
