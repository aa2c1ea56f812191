"""``chronoshard anomalies`` against the real API server: the incidents a ShadowPolicy controller pass wrote into the
policy's status (the shards' shadows stood in for by tests/support/shadowstub.py), with what the policy did."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import datetime

import pytest
from chronoshard.operator import kube, naming
from chronoshard.operator.podcontract import SHADOW_CONFIG_FILE, shadow_config
from chronoshard.operator.shadowpolicy import controller
from chronoshard.operator.spec.shadowpolicy import parse_shadowpolicy
from chronoshard.shardnode.client.cli import main
from kubernetes import client

from tests.support.shadowstub import GROUP, VERSION, StubShadow, stub_shardset

pytestmark = [pytest.mark.integration, pytest.mark.without_operator]

T0 = datetime.fromisoformat("2026-11-30T09:00:00+00:00").timestamp()
EVIL = "system:serviceaccount:shop:evil"


@pytest.fixture()
def api(k8s_client):
    previous = kube._api
    kube.set_api_client(k8s_client)
    yield client.CustomObjectsApi(k8s_client)
    kube.set_api_client(previous)


def test_anomalies_lists_the_policys_incidents_and_their_reversions(k8s_client, control_plane, api, namespace):
    s0, s1 = StubShadow(shard=0), StubShadow(shard=1)
    for k in ("a", "b"):
        s0.write("orders", k, b"good", T0 - 60)
        s0.write("orders", k, b"\x00\xff" * 8, T0 + 1, EVIL)
        s1.write("items", k, b"good", T0 - 60)
        s1.write("items", k, None, T0 + 101, EVIL)
    s0.add_incident("orders", "orders.1", T0, T0 + 5, EVIL, severity=0.9)
    s1.add_incident("items", "items.1", T0 + 100, T0 + 105, EVIL, severity=0.3, kind="mass-delete")

    def cli(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        code = main(["--kubeconfig", str(control_plane.kubeconfig), "-n", namespace, *argv], out=out)
        return code, out.getvalue()

    async def scenario() -> None:
        async with stub_shardset(k8s_client, namespace, [s0, s1]):
            policy = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "shadowpolicies", "orders-shadow")
            spec = parse_shadowpolicy(policy["spec"])
            client.CoreV1Api(k8s_client).create_namespaced_config_map(namespace, client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=naming.config_map_name("orders")),
                data={SHADOW_CONFIG_FILE: json.dumps(shadow_config(spec, namespace, "orders"))}))
            status, _ = await controller.step(policy)
            await asyncio.to_thread(controller.write_status, policy, status)

            code, out = await asyncio.to_thread(cli, "anomalies")
            assert code == 0, out
            lines = out.splitlines()
            assert lines[0].split()[:4] == ["SHARD", "ID", "TABLE", "STATE"]
            assert [ln.split()[1] for ln in lines[1:]] == ["items.1", "orders.1"]  # newest first
            orders = lines[2].split()
            assert orders[-2] == "proposed" and orders[-1].startswith("orders-shadow-s0-") and EVIL in orders
            code, out = await asyncio.to_thread(cli, "-o", "json", "anomalies", "--table", "items")
            (row,) = json.loads(out)
            assert (row["policy"], row["kind"], row["action"], row["keys"]) == ("orders-shadow", "mass-delete",
                                                                                "reported", 2)
            code, out = await asyncio.to_thread(cli, "-s", "nothing-here", "anomalies")
            assert (code, out) == (0, "no anomaly incidents\n")

    asyncio.run(scenario())
