"""The ShardSet's data-operation Lease (operator/datalock.py) against the real API server: one holder at a time,
conditional takes (of two passes that read the same Lease, one wins), take-over of a holder that ended, release by
the holder only - and the race it closes: a KeyRotation's rewrap waits for a Reshard that took the lock but has not
written its Copying status yet."""

from __future__ import annotations

from datetime import timedelta

import pytest
from chronoshard.operator import datalock, kube
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


def _holder(ns: str) -> str | None:
    lease = kube.get(datalock.API_VERSION, datalock.KIND, ns, datalock.lease_name("orders"))
    return ((lease or {}).get("spec") or {}).get("holderIdentity")


def _status(api, ns: str, plural: str, name: str, status: dict) -> None:
    api.patch_namespaced_custom_object_status(GROUP, VERSION, ns, plural, name, {"status": status})


def test_one_holder_at_a_time_and_release_by_the_holder_only(api, namespace):
    create_custom(api.api_client, namespace, "shardsets", "orders", {"shards": 2}, "ShardSet")
    assert datalock.acquire(namespace, "orders", "Reshard/a", lambda other: True) is None
    lease = kube.get(datalock.API_VERSION, datalock.KIND, namespace, datalock.lease_name("orders"))
    assert lease["metadata"]["ownerReferences"][0]["kind"] == "ShardSet"  # goes with the ShardSet
    assert datalock.acquire(namespace, "orders", "Reshard/a", lambda other: True) is None  # ours already
    assert datalock.acquire(namespace, "orders", "KeyRotation/r", lambda other: True) == "Reshard/a"
    assert _holder(namespace) == "Reshard/a"
    assert datalock.release(namespace, "orders", "KeyRotation/r") is False  # not the holder: nothing changes
    assert _holder(namespace) == "Reshard/a"
    assert datalock.release(namespace, "orders", "Reshard/a") is True
    assert _holder(namespace) is None
    assert datalock.acquire(namespace, "orders", "KeyRotation/r", lambda other: True) is None
    assert _holder(namespace) == "KeyRotation/r"


def test_of_two_passes_that_read_the_same_lease_one_wins(api, namespace):
    create_custom(api.api_client, namespace, "shardsets", "orders", {"shards": 2}, "ShardSet")
    assert datalock.acquire(namespace, "orders", "Reshard/old", lambda other: True) is None

    def meanwhile(other: str) -> bool:
        # While pass B judges the old holder (ended), pass C takes the lock: B's write carries a stale
        # resourceVersion and must lose.
        assert datalock.acquire(namespace, "orders", "KeyRotation/c", lambda o: False) is None
        return False

    assert datalock.acquire(namespace, "orders", "Reshard/b", meanwhile) == datalock.BUSY
    assert _holder(namespace) == "KeyRotation/c"


def test_a_holder_that_ended_is_taken_over(api, namespace):
    create_custom(api.api_client, namespace, "shardsets", "orders", {"shards": 2}, "ShardSet")
    create_custom(api.api_client, namespace, "reshards", "grow", {
        "shardSetRef": {"name": "orders"}, "steps": [{"move": {"partition": 0, "toShard": 1}}]}, "Reshard")
    _status(api, namespace, "reshards", "grow", {"phase": "Running", "currentStep": 0})
    assert datalock.take(namespace, "orders", "Reshard", "grow") is None
    assert datalock.take(namespace, "orders", "KeyRotation", "rot") == "Reshard/grow"  # it still runs
    _status(api, namespace, "reshards", "grow", {"phase": "Failed"})  # ended without giving the lock back
    assert datalock.take(namespace, "orders", "KeyRotation", "rot") is None
    assert _holder(namespace) == "KeyRotation/rot"
    # A holder of a kind this module does not know is never taken over.
    assert datalock.holder_still_holds(namespace, "Something/else") is True
    assert datalock.holder_still_holds(namespace, "KeyRotation/gone") is False  # no such object


async def test_the_rewrap_waits_for_a_reshard_holding_the_lock_before_its_status_says_copying(api, namespace):
    create_custom(api.api_client, namespace, "shardsets", "orders", {"shards": 2}, "ShardSet")
    create_custom(api.api_client, namespace, "reshards", "grow", {
        "shardSetRef": {"name": "orders"}, "steps": [{"move": {"partition": 0, "toShard": 1}}]}, "Reshard")
    # The Reshard's pass took the lock and is about to ask the target to copy: its status still says Pending.
    _status(api, namespace, "reshards", "grow", {"phase": "Running", "currentStep": 0,
                                                 "steps": [{"index": 0, "type": "move", "phase": "Pending"}]})
    assert datalock.take(namespace, "orders", "Reshard", "grow") is None
    reports = [ProcessReport(0, "node", True, 5, 2, frozenset({1, 2}), {1: 5, 2: 3}),
               ProcessReport(0, "cache", True, 5, 2, frozenset({1, 2}))]
    st = Step({"phase": "Rewrapping", "toVersion": 2, "fromVersion": 1, "promotionTime": "2026-12-07T10:00:00Z"})
    rotation = Rotation({"metadata": {"namespace": namespace, "name": "rot"}},
                        KeyRotationSpec("orders", trigger="t", transition_period=timedelta(0)), st, 1, {},
                        None, 1, 2, 1, reports=reports, target=5)  # type: ignore[arg-type]
    held = await _rewrapping(rotation)
    cond = next(c for c in held.status["conditions"] if c["type"] == "Ready")
    assert cond["reason"] == "WaitingForReshard" and "Reshard/grow" in cond["message"]
    # The move done (the Reshard gave the lock back at its cutover): the rewrap takes it and goes on.
    assert datalock.give_back(namespace, "orders", "Reshard", "grow") is True
    st2 = Step({"phase": "Rewrapping", "toVersion": 2, "fromVersion": 1, "promotionTime": "2026-12-07T10:00:00Z"})
    rotation2 = Rotation({"metadata": {"namespace": namespace, "name": "rot"}},
                         KeyRotationSpec("orders", trigger="t", transition_period=timedelta(0)), st2, 1, {},
                         None, 1, 2, 1, reports=reports, target=5)  # type: ignore[arg-type]
    went = await _rewrapping(rotation2)
    assert next(c for c in went.status["conditions"] if c["type"] == "Ready")["reason"] == "Rewrapping"
    assert _holder(namespace) == "KeyRotation/rot"
    assert went.status["dataLock"] == datalock.lease_name("orders")  # the status says what it holds
    # Every block rewrapped: the rotation gives the lock back as it enters its transition period.
    done_reports = [ProcessReport(0, "node", True, 5, 2, frozenset({1, 2}), {2: 8}),
                    ProcessReport(0, "cache", True, 5, 2, frozenset({1, 2}))]
    st3 = Step({**went.status})
    rotation3 = Rotation({"metadata": {"namespace": namespace, "name": "rot"}},
                         KeyRotationSpec("orders", trigger="t", transition_period=timedelta(0)), st3, 1, {},
                         None, 1, 2, 1, reports=done_reports, target=5)  # type: ignore[arg-type]
    after = await _rewrapping(rotation3)
    assert after.status["phase"] == "Transition" and "dataLock" not in after.status
    assert _holder(namespace) is None
