"""The ShadowPolicy controller's anomaly side against the real kube-apiserver: status.anomalies bounded and newest
first, one AnomalyDetected event and one metric count per incident, a Reversion proposed once per closed incident
at or above severityThreshold (not under mode off, not below the threshold, not while open, not again after a
restart), and under mode auto the Reversion controller runs it without approval.

Each pass reads the policy back from the API server and writes its status through the status subresource, as the
daemon does. The shadows are tests/support/shadowstub.py's real HTTP servers at each pod's IP (the shadow's
anomaly detector is built at the same time as this side, to the same contract); the ShardSet controller is not
running, so the test writes the config ConfigMap with the policy's shadow.json itself.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import pytest
from chronoshard.operator import kube, naming
from chronoshard.operator.podcontract import SHADOW_CONFIG_FILE, shadow_config
from chronoshard.operator.reversion import controller as reversion_controller
from chronoshard.operator.shadowpolicy import anomalies, controller
from chronoshard.operator.spec.shadowpolicy import parse_shadowpolicy
from kubernetes import client
from prometheus_client import REGISTRY

from tests.support.shadowstub import StubShadow, stub_shardset

pytestmark = [pytest.mark.integration, pytest.mark.without_operator]

GROUP, VERSION = "chronoshard.io", "v1alpha1"
POLICY = "orders-shadow"
T0 = datetime.fromisoformat("2026-11-30T09:00:00+00:00").timestamp()
EVIL, APP = "system:serviceaccount:shop:evil", "system:serviceaccount:shop:app"


@pytest.fixture()
def api(k8s_client):
    previous = kube._api
    kube.set_api_client(k8s_client)
    yield client.CustomObjectsApi(k8s_client)
    kube.set_api_client(previous)


def _policy(api, ns: str) -> dict[str, Any]:
    return api.get_namespaced_custom_object(GROUP, VERSION, ns, "shadowpolicies", POLICY)


def _write_config(api, ns: str) -> None:
    """What the ShardSet controller does for the policy in force: shadow.json in <shardset>-config."""
    spec = parse_shadowpolicy(_policy(api, ns)["spec"])
    data = {SHADOW_CONFIG_FILE: json.dumps(shadow_config(spec, ns, spec.shardset))}
    client.CoreV1Api(api.api_client).create_namespaced_config_map(ns, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=naming.config_map_name(spec.shardset)), data=data))


async def _pass(api, ns: str, body: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """One pass from the stored policy (or ``body``), its status written back."""
    body = body or await asyncio.to_thread(_policy, api, ns)
    status, events = await controller.step(body)
    await asyncio.to_thread(controller.write_status, body, status)
    return status, events


def _reversions(api, ns: str) -> list[dict[str, Any]]:
    return api.list_namespaced_custom_object(GROUP, VERSION, ns, "reversions")["items"]


def _detected(ns: str, kind: str) -> float:
    return REGISTRY.get_sample_value("chronoshard_anomalies_detected_total",
                                     {"namespace": ns, "shadowpolicy": POLICY, "kind": kind}) or 0.0


def _reasons(events: list[tuple[str, str, str]]) -> list[str]:
    return [reason for _, reason, _ in events]


def _attack(stub: StubShadow, keys: list[str], start: float, identity: str = EVIL) -> None:
    """Good values an hour before ``start``, then ``identity`` overwrites them over 10 s from ``start``."""
    for i, k in enumerate(keys):
        stub.write("orders", k, b"good " + k.encode(), start - 3600)
        stub.write("orders", k, b"\x8f\x13\xee" * 20, start + i * 10 / max(1, len(keys)), identity)


def test_incidents_are_reported_once_and_a_closed_severe_one_gets_one_reversion(k8s_client, api, namespace):
    s0, s1 = StubShadow(shard=0), StubShadow(shard=1)
    _attack(s0, ["a", "b", "c"], T0)
    s0.write("orders", "b", b"fixed by the app", T0 + 60, APP)  # a later write by another identity: a conflict
    s0.add_incident("orders", "orders.1", T0, T0 + 10, EVIL, severity=0.9)
    _attack(s0, ["x"], T0 + 100)
    s0.add_incident("orders", "orders.2", T0 + 100, T0 + 110, EVIL, severity=0.2, kind="mass-overwrite")
    _attack(s1, ["m", "n"], T0 + 50)
    # The same id on another shard is another incident; still open.
    s1.add_incident("orders", "orders.1", T0 + 50, T0 + 60, EVIL, severity=0.95, state="open")
    before = {k: _detected(namespace, k) for k in ("encryption", "mass-overwrite")}

    async def scenario() -> None:
        async with stub_shardset(k8s_client, namespace, [s0, s1], anomaly={"severityThreshold": 0.5}):
            _write_config(api, namespace)
            stale = await asyncio.to_thread(_policy, api, namespace)
            status, events = await _pass(api, namespace, stale)
            rows = status["anomalies"]
            assert [(r["shard"], r["id"]) for r in rows] == [(0, "orders.2"), (1, "orders.1"), (0, "orders.1")]
            assert _reasons(events) == ["AnomalyDetected"] * 3 + ["ReversionProposed"]
            assert any(EVIL in m and "orders" in m and "3 key(s)" in m and "0.90" in m for _, _, m in events)
            by = {(r["shard"], r["id"]): r for r in rows}
            severe = by[(0, "orders.1")]
            name = anomalies.reversion_name(POLICY, 0, "orders.1")
            assert (severe["action"], severe["reversion"], severe["keys"]) == ("proposed", name, 3)
            assert severe["startTime"] == "2026-11-30T09:00:00Z" and severe["knownGoodTime"] == "2026-11-30T08:59:59Z"
            assert [d["feature"] for d in severe["drivers"]] == ["entropy_rise", "overwrite_rate", "identity_share"]
            assert (by[(0, "orders.2")]["action"], by[(1, "orders.1")]["action"]) == ("reported", "reported")
            assert "reversion" not in by[(0, "orders.2")] and "reversion" not in by[(1, "orders.1")]
            assert status["detector"]["states"] == {"trained": 2, "training": 0, "fallback": 0}
            assert _detected(namespace, "encryption") - before["encryption"] == 2
            assert _detected(namespace, "mass-overwrite") - before["mass-overwrite"] == 1

            (rev,) = _reversions(api, namespace)
            assert rev["metadata"]["name"] == name and len(name) <= 63
            assert not rev["metadata"].get("ownerReferences")  # deleting the policy keeps the record
            assert rev["metadata"]["labels"][anomalies.POLICY_LABEL] == POLICY
            assert rev["spec"]["incident"] == {"shard": 0, "table": "orders", "id": "orders.1"}
            assert rev["spec"]["tables"] == ["orders"]
            assert rev["spec"]["pointInTime"].startswith("2026-11-30T08:59:59.5")

            # Later passes, and a pass from the status before the first write (an operator that died between
            # creating the Reversion and writing the status): no event, no second Reversion.
            again, events = await _pass(api, namespace)
            assert events == [] and again["anomalies"] == rows
            _, replay = await _pass(api, namespace, stale)
            assert "AnomalyDetected" in _reasons(replay)  # that status never recorded them
            assert [r["metadata"]["name"] for r in _reversions(api, namespace)] == [name]
            await _pass(api, namespace)
            assert _detected(namespace, "encryption") - before["encryption"] == 4  # 2 + the replay's 2

            # Shard 1's incident closes: its own Reversion (same id, other shard, other name), once.
            s1.incidents[0]["state"] = "closed"
            closed, events = await _pass(api, namespace)
            assert _reasons(events) == ["ReversionProposed"]
            names = sorted(r["metadata"]["name"] for r in _reversions(api, namespace))
            assert names == sorted([name, anomalies.reversion_name(POLICY, 1, "orders.1")])
            assert (await _pass(api, namespace))[1] == []

            # The proposed Reversion plans exactly the incident's keys on shard 0 (b was rewritten by the app
            # after the incident: a conflict) and nothing on shard 1; it waits for approval under confirm.
            rev_steps = [await _reversion_pass(api, namespace, name) for _ in range(3)]
            assert rev_steps[-1]["phase"] == "AwaitingApproval"
            plan = rev_steps[-1]["plan"]
            assert (plan["keys"], plan["restore"], plan["conflicts"]) == (2, 2, 1)
            assert [p["restore"] for p in plan["perShard"]] == [2, 0]
            sent = s0.plans[f"{namespace}.{name}"]["request"]
            assert sent["incident"] == {"shard": 0, "table": "orders", "id": "orders.1"}

            # A shadow that does not answer keeps its rows; one from an older image (404) is skipped.
            s1.incidents = None
            kept, events = await _pass(api, namespace)
            assert events == [] and kept["anomalies"] == closed["anomalies"]
            # (The stubs serve no GET /v1/status, so the phase is the same Pending as before.)
            assert kept["detector"]["reporting"] == 1 and kept["phase"] == closed["phase"]

    asyncio.run(scenario())


async def _reversion_pass(api, ns: str, name: str) -> dict[str, Any]:
    body = await asyncio.to_thread(api.get_namespaced_custom_object, GROUP, VERSION, ns, "reversions", name)
    st = await reversion_controller.step(body)
    await asyncio.to_thread(reversion_controller.write_status, body, st.status)
    return st.status


def test_status_keeps_the_20_newest_incidents_newest_first(k8s_client, api, namespace):
    s0, s1 = StubShadow(shard=0), StubShadow(shard=1)
    for i in range(15):
        for stub in (s0, s1):
            _attack(stub, [f"k{i}"], T0 + 100 * i)
            stub.add_incident("orders", f"orders.{i}", T0 + 100 * i, T0 + 100 * i + 10, EVIL, severity=0.1,
                              detected=T0 + 100 * i + 20 + stub.shard)

    async def scenario() -> None:
        async with stub_shardset(k8s_client, namespace, [s0, s1]):
            _write_config(api, namespace)
            status, events = await _pass(api, namespace)
            rows = status["anomalies"]
            assert len(rows) == 20 and _reasons(events) == ["AnomalyDetected"] * 20
            assert [(r["shard"], r["id"]) for r in rows[:3]] == [(1, "orders.14"), (0, "orders.14"), (1, "orders.13")]
            times = [r["detectedTime"] for r in rows]
            assert times == sorted(times, reverse=True)
            assert _policy(api, namespace)["status"]["anomalies"] == rows  # the API server kept them as written
            assert _reversions(api, namespace) == []  # below the default severityThreshold 0.5

    asyncio.run(scenario())


def test_mode_off_only_reports(k8s_client, api, namespace):
    s0 = StubShadow(shard=0)
    _attack(s0, ["a"], T0)
    s0.add_incident("orders", "orders.1", T0, T0 + 10, EVIL, severity=1.0)

    async def scenario() -> None:
        async with stub_shardset(k8s_client, namespace, [s0], mode="off"):
            _write_config(api, namespace)
            status, events = await _pass(api, namespace)
            assert _reasons(events) == ["AnomalyDetected"]
            assert status["anomalies"][0]["action"] == "reported"
            assert _reversions(api, namespace) == []

    asyncio.run(scenario())


def test_auto_mode_proposes_and_the_reversion_runs_without_approval_within_max_blocks(k8s_client, api, namespace):
    s0, s1 = StubShadow(shard=0), StubShadow(shard=1)
    _attack(s0, ["a", "b"], T0)
    s0.write("orders", "z", b"unrelated, later", T0 + 30, APP)
    s0.add_incident("orders", "orders.7", T0, T0 + 10, EVIL, severity=0.8)

    async def scenario() -> None:
        async with stub_shardset(k8s_client, namespace, [s0, s1], mode="auto", max_blocks=2):
            _write_config(api, namespace)
            status, events = await _pass(api, namespace)
            assert _reasons(events) == ["AnomalyDetected", "ReversionProposed"]
            row = status["anomalies"][0]
            assert row["action"] == "reverting"
            for _ in range(6):
                rev = await _reversion_pass(api, namespace, row["reversion"])
                if rev["phase"] == "Completed":
                    break
            assert rev["phase"] == "Completed" and rev["autoApproved"] is True
            assert (rev["plan"]["keys"], rev["progress"]["done"]) == (2, 2)  # a and b; z is not the incident's

            # An incident of more keys than maxBlocks (3 > 2) is proposed the same way and waits for approval.
            _attack(s1, ["p", "q", "r"], T0 + 200)
            s1.add_incident("orders", "orders.7", T0 + 200, T0 + 210, EVIL, severity=0.8)
            status, events = await _pass(api, namespace)
            assert _reasons(events) == ["AnomalyDetected", "ReversionProposed"]
            big = status["anomalies"][0]
            assert (big["shard"], big["action"]) == (1, "reverting")
            for _ in range(4):
                rev = await _reversion_pass(api, namespace, big["reversion"])
            assert rev["phase"] == "AwaitingApproval" and rev["plan"]["keys"] == 3
            assert "maxBlocks 2" in next(c for c in rev["conditions"] if c["type"] == "Approved")["message"]

    asyncio.run(scenario())
