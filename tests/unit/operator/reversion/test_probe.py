"""The operator's calls to the shards' shadows at port 7403, against real HTTP servers on loopback addresses (one
per shard pod, as pods have an IP each) that serve the contract's JSON (tests/support/shadowstub.py)."""

from __future__ import annotations

import asyncio
import random
from contextlib import AsyncExitStack

from chronoshard.operator.podcontract import SHADOW_PORT
from chronoshard.operator.reversion import probe

from tests.support.shadowstub import StubShadow, serve_at

REQUEST = {"name": "ns.rev", "time": "2026-11-30T09:00:00Z", "overwriteLater": False}


def _pod(ip: str | None) -> dict:
    return {"metadata": {"name": "orders-0", "namespace": "ns", "labels": {"app.kubernetes.io/instance": "orders"}},
            "spec": {"containers": [{"name": "shadow", "command": ["chronoshard-shadow"]}]},
            "status": {"podIP": ip} if ip else {}}


async def _shards(stack: AsyncExitStack, stubs: list[StubShadow]) -> dict[int, dict]:
    """Serve each stub at its own loopback address on the shadow's port; the pods name those addresses."""
    base = random.randrange(1, 250)
    pods = {}
    for i, stub in enumerate(stubs):
        ip = f"127.{base}.{random.randrange(1, 250)}.{i + 1}"
        await stack.enter_async_context(serve_at(stub.app(), ip, SHADOW_PORT))
        pods[i] = _pod(ip)
    return pods


def test_plan_get_run_delete_on_every_shard():
    stubs = [StubShadow(shard=0), StubShadow(shard=1)]
    stubs[0].write("orders", "a", b"old", time=1.0)
    stubs[0].write("orders", "a", b"new", time=2e9)
    stubs[1].write("orders", "b", b"x", time=2e9)

    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            pods = await _shards(stack, stubs)
            created = await probe.create_plans(pods, REQUEST)
            assert {s: (a.status, a.body["restore"], a.body["delete"]) for s, a in created.items()} == {
                0: (201, 1, 0), 1: (201, 0, 1)}
            again = await probe.create_plans(pods, REQUEST)
            assert all(a.status == 200 and a.body["digest"] == created[s].body["digest"] for s, a in again.items())
            other = await probe.create_plans(pods, {**REQUEST, "keys": ["a"]})
            assert other[0].status == 409 and other[0].describe() == "shard 0: HTTP 409 conflict: plan ns.rev exists " \
                                                                     "with another body"
            wrong = await probe.run_plans(pods, "ns.rev", {0: "0" * 64, 1: created[1].body["digest"]})
            assert wrong[0].status == 409 and wrong[0].body["error"] == "digest_mismatch"
            assert wrong[1].status == 202
            got = await probe.get_plans(pods, "ns.rev")
            assert (got[0].body["phase"], got[1].body["phase"]) == ("planned", "completed")
            deleted = await probe.delete_plans(pods, "ns.rev")
            assert all(a.ok for a in deleted.values())
            assert (await probe.get_plans(pods, "ns.rev"))[0].status == 404
        assert ("DELETE", "/v1/reversions/ns.rev") in stubs[1].requests

    asyncio.run(scenario())


def test_a_pod_without_ip_or_nobody_listening_is_reported_not_raised():
    async def scenario() -> None:
        ip = f"127.{random.randrange(1, 250)}.{random.randrange(1, 250)}.251"
        answers = await probe.get_plans({0: _pod(None), 1: _pod(ip)}, "ns.rev")
        assert answers[0].status is None and answers[0].describe() == "shard 0: pod has no IP yet"
        assert answers[1].status is None and answers[1].error == "ClientConnectorError" and not answers[1].ok

    asyncio.run(scenario())


def test_plan_names_are_percent_encoded_in_paths():
    assert probe.plan_path("ns.a/b") == "/v1/reversions/ns.a%2Fb"
