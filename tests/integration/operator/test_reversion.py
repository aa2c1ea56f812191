"""The Reversion controller against the real kube-apiserver: plan on every shard, approval refused for a stale
digest, run on approval, auto mode, resume from any recorded phase, deletion of the per-shard plans.

Each pass reads the Reversion back from the API server and writes its status through the status subresource,
exactly as the daemon does, so a pass started from the stored status is what an operator restarted at that point
does. The shard pods' shadows are small real HTTP servers (tests/support/shadowstub.py) serving the contract's
JSON at each pod's IP on port 7403, which makes two-shard plans, stale plans and held runs easy to arrange; the
same flow with the real node and shadow processes is test_reversion_real_shadow.py.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest
from chronoshard.operator import kube
from chronoshard.operator.reversion import controller
from kubernetes import client

from tests.support.shadowstub import StubShadow, create_custom, stub_shardset
from tests.support.waiting import wait_for_async

pytestmark = [pytest.mark.integration, pytest.mark.without_operator]

GROUP, VERSION = "chronoshard.io", "v1alpha1"
POINT = "2026-11-30T09:00:00Z"
_POINT_S = datetime.fromisoformat(POINT.replace("Z", "+00:00")).timestamp()
BEFORE, AFTER = _POINT_S - 3600, _POINT_S + 3600  # an hour either side of POINT


@pytest.fixture()
def api(k8s_client):
    previous = kube._api
    kube.set_api_client(k8s_client)
    yield client.CustomObjectsApi(k8s_client)
    kube.set_api_client(previous)


def _custom(api, ns: str, plural: str, name: str, spec: dict[str, Any], kind: str) -> None:
    create_custom(api.api_client, ns, plural, name, spec, kind)


def _stubs() -> list[StubShadow]:
    """Shard 0 has a key changed after the point, shard 1 a key created after it."""
    s0, s1 = StubShadow(shard=0), StubShadow(shard=1)
    s0.write("orders", "a", b"good", BEFORE)
    s0.write("orders", "a", b"bad!", AFTER)
    s1.write("orders", "b", b"new", AFTER)
    return [s0, s1]


def _get(api, ns: str, name: str) -> dict[str, Any]:
    return api.get_namespaced_custom_object(GROUP, VERSION, ns, "reversions", name)


async def _pass(api, ns: str, name: str) -> controller.Step:
    """One pass from the stored object, its status written back (what the daemon does)."""
    body = await asyncio.to_thread(_get, api, ns, name)
    st = await controller.step(body)
    await asyncio.to_thread(controller.write_status, body, st.status)
    return st


async def _until(api, ns: str, name: str, phase: str, passes: int = 10) -> list[controller.Step]:
    steps = []
    for _ in range(passes):
        steps.append(await _pass(api, ns, name))
        if steps[-1].status.get("phase") == phase:
            return steps
    raise AssertionError(f"{name} did not reach {phase}: {steps[-1].status}")


def _gone(api, ns: str, name: str) -> bool:
    try:
        _get(api, ns, name)
    except client.ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def _events(steps: list[controller.Step]) -> list[str]:
    return [reason for st in steps for _, reason, _ in st.events]


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_plan_refuse_a_stale_digest_approve_and_run(k8s_client, api, namespace):
    stubs = _stubs()

    async def scenario() -> None:
        async with stub_shardset(k8s_client, namespace, stubs):
            _custom(api, namespace, "reversions", "undo", {"shardSetRef": {"name": "orders"}, "tables": ["orders"],
                                                           "pointInTime": POINT}, "Reversion")
            steps = await _until(api, namespace, "undo", "AwaitingApproval")
            assert _events(steps) == ["Planned"]
            status = _get(api, namespace, "undo")["status"]
            plan = status["plan"]
            assert (plan["keys"], plan["restore"], plan["delete"], plan["bytes"]) == (2, 1, 1, 4)
            shard_digests = [r["digest"] for r in plan["perShard"]]
            assert shard_digests == [stubs[0].plans[f"{namespace}.undo"]["plan"]["digest"],
                                     stubs[1].plans[f"{namespace}.undo"]["plan"]["digest"]]
            assert status["shortDigest"] == status["digest"][:12]
            # Nothing runs without approval, pass after pass.
            again = await _until(api, namespace, "undo", "AwaitingApproval")
            assert _events(again) == [] and all(p["phase"] == "planned" for s in stubs for p in s.plans.values())

            api.patch_namespaced_custom_object(GROUP, VERSION, namespace, "reversions", "undo",
                                               {"spec": {"approve": "0" * 64}})
            refused = [await _pass(api, namespace, "undo") for _ in range(3)]
            assert _events(refused) == ["ApprovalRefused"]  # once per stale value
            stored = _get(api, namespace, "undo")["status"]
            assert stored["phase"] == "AwaitingApproval"
            assert _condition(stored, "Approved")["reason"] == "DigestMismatch"
            assert not any(m == "POST" and p.endswith("/run") for s in stubs for m, p in s.requests)

            api.patch_namespaced_custom_object(GROUP, VERSION, namespace, "reversions", "undo",
                                               {"spec": {"approve": status["digest"]}})
            ran = await _until(api, namespace, "undo", "Completed")
            assert _events(ran) == ["Approved", "Completed"]
            final = _get(api, namespace, "undo")["status"]
            assert final["approvedDigest"] == status["digest"] and final["autoApproved"] is False
            assert final["progress"]["summary"] == "2/2" and final["progress"]["remaining"] == 0
            assert _condition(final, "Completed")["status"] == "True"
            assert [p["phase"] for s in stubs for p in s.plans.values()] == ["completed", "completed"]
            # A finished Reversion does nothing more.
            assert _events([await _pass(api, namespace, "undo")]) == []

    asyncio.run(scenario())


def test_auto_mode_runs_without_approval_within_max_blocks(k8s_client, api, namespace):
    stubs = _stubs()

    async def scenario() -> None:
        async with stub_shardset(k8s_client, namespace, stubs, mode="auto", max_blocks=2):
            _custom(api, namespace, "reversions", "auto", {"shardSetRef": {"name": "orders"},
                                                           "pointInTime": POINT}, "Reversion")
            steps = await _until(api, namespace, "auto", "Completed")
            assert _events(steps) == ["Planned", "Approved", "Completed"]
            assert _get(api, namespace, "auto")["status"]["autoApproved"] is True
            # A bigger one (3 keys > maxBlocks 2) waits for approval.
            stubs[1].write("orders", "c", b"new", AFTER)
            stubs[1].write("orders", "d", b"old", BEFORE)
            stubs[1].write("orders", "d", None, AFTER)
            _custom(api, namespace, "reversions", "big", {"shardSetRef": {"name": "orders"},
                                                          "pointInTime": POINT}, "Reversion")
            await _until(api, namespace, "big", "AwaitingApproval")
            waiting = await _pass(api, namespace, "big")
            assert waiting.status["phase"] == "AwaitingApproval"
            assert "maxBlocks 2" in _condition(waiting.status, "Approved")["message"]

    asyncio.run(scenario())


def test_a_pass_started_from_any_recorded_phase_carries_on(k8s_client, api, namespace):
    stubs = _stubs()
    for s in stubs:
        s.hold_runs = True

    async def scenario() -> None:
        async with stub_shardset(k8s_client, namespace, stubs):
            _custom(api, namespace, "reversions", "resume", {"shardSetRef": {"name": "orders"},
                                                             "pointInTime": POINT}, "Reversion")
            await _until(api, namespace, "resume", "AwaitingApproval")
            digest = _get(api, namespace, "resume")["status"]["digest"]
            api.patch_namespaced_custom_object(GROUP, VERSION, namespace, "reversions", "resume",
                                               {"spec": {"approve": digest}})
            await _until(api, namespace, "resume", "Running")
            running = await _pass(api, namespace, "resume")  # starts both runs; they stay running
            assert running.status["phase"] == "Running"
            assert running.status["progress"]["summary"] == "0/2"
            # "Restart" here: later passes only have the stored status. No plan is made again and no run is
            # started twice; the runs finish on the shadows and the next pass sees it.
            before = [list(s.requests) for s in stubs]
            assert (await _pass(api, namespace, "resume")).status["phase"] == "Running"
            for s in stubs:
                s.finish_runs()
            done = await _until(api, namespace, "resume", "Completed")
            assert _events(done) == ["Completed"]
            for s, earlier in zip(stubs, before, strict=True):
                later = s.requests[len(earlier):]
                assert all(m == "GET" for m, _ in later), later
                assert sum(1 for m, p in s.requests if m == "POST" and p.endswith("/run")) == 1

    asyncio.run(scenario())


def test_a_plan_left_by_a_deleted_reversion_is_replaced_and_deletion_removes_the_plans(k8s_client, api, namespace):
    stubs = _stubs()

    async def scenario() -> None:
        async with stub_shardset(k8s_client, namespace, stubs):
            _custom(api, namespace, "reversions", "again", {"shardSetRef": {"name": "orders"}, "keys": ["a"],
                                                            "pointInTime": POINT}, "Reversion")
            await _until(api, namespace, "again", "AwaitingApproval")
            # The object is deleted while no operator runs, or while its shards' shadows cannot be reached: their
            # plans stay (an operator that did run would have deleted what it reached; the stubs get theirs back
            # as unreachable shadows would keep them). Then it is made again with another spec.
            left = [dict(s.plans) for s in stubs]
            api.delete_namespaced_custom_object(GROUP, VERSION, namespace, "reversions", "again")
            await wait_for_async(lambda: _gone(api, namespace, "again"), timeout=30, what="the Reversion to go")
            for stub, plans in zip(stubs, left, strict=True):
                stub.plans.update(plans)
            assert all(p["request"]["keys"] == ["a"] for s in stubs for p in s.plans.values())
            _custom(api, namespace, "reversions", "again", {"shardSetRef": {"name": "orders"}, "keys": ["b"],
                                                            "pointInTime": POINT}, "Reversion")
            await _until(api, namespace, "again", "AwaitingApproval")
            plan = _get(api, namespace, "again")["status"]["plan"]
            assert (plan["keys"], plan["delete"]) == (1, 1)  # only b (created after the point) is in the plan
            assert all(p["request"]["keys"] == ["b"] for s in stubs for p in s.plans.values())
            # The delete handler's work: every shard's plan goes.
            body = _get(api, namespace, "again")
            await controller.reversion_deleted(name="again", namespace=namespace, spec=body["spec"])
            assert all(not s.plans for s in stubs)
            # A second delete (the plans are gone already) is fine too.
            await controller.reversion_deleted(name="again", namespace=namespace, spec=body["spec"])

    asyncio.run(scenario())


def test_without_shadow_policy_or_with_reversions_off(k8s_client, api, namespace):
    async def scenario() -> None:
        _custom(api, namespace, "shardsets", "orders", {"shards": 1}, "ShardSet")
        _custom(api, namespace, "reversions", "early", {"shardSetRef": {"name": "orders"}, "pointInTime": POINT},
                "Reversion")
        core = client.CoreV1Api(k8s_client)
        core.create_namespaced_pod(namespace, client.V1Pod(
            metadata=client.V1ObjectMeta(name="orders-0", labels={
                "app.kubernetes.io/name": "chronoshard", "app.kubernetes.io/instance": "orders",
                "app.kubernetes.io/component": "shard"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="shadow", image="x")])))
        st = await _pass(api, namespace, "early")
        assert st.status["phase"] == "Planning"
        assert _condition(st.status, "Planned")["reason"] == "NoShadowPolicy"
        _custom(api, namespace, "shadowpolicies", "off", {"shardSetRef": {"name": "orders"},
                                                          "reversion": {"mode": "off"}}, "ShadowPolicy")
        st = await _pass(api, namespace, "early")
        assert st.status["phase"] == "Failed" and _events([st]) == ["Failed"]
        assert _condition(st.status, "Completed")["reason"] == "ReversionsOff"

    asyncio.run(scenario())


def test_a_shadow_whose_capture_is_behind_the_point_is_waited_for(k8s_client, api, namespace):
    stubs = _stubs()
    stubs[1].captured_until = BEFORE

    async def scenario() -> None:
        async with stub_shardset(k8s_client, namespace, stubs):
            _custom(api, namespace, "reversions", "soon", {"shardSetRef": {"name": "orders"},
                                                           "pointInTime": POINT}, "Reversion")
            st = await _pass(api, namespace, "soon")
            assert st.status["phase"] == "Planning"
            assert _condition(st.status, "Planned")["reason"] == "ShadowBehind"
            assert "shard 1: HTTP 400 point_ahead" in _condition(st.status, "Planned")["message"]
            stubs[1].captured_until = None  # the capture caught up
            await _until(api, namespace, "soon", "AwaitingApproval")

    asyncio.run(scenario())
