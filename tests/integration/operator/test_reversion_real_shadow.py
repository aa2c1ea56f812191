"""A Reversion end to end with the real processes: a real `chronoshard-node` and `chronoshard-shadow` (the shadow
listening at a pod-like loopback IP on port 7403, as in a shard pod), the real API server, and the controller's
passes. The plan is the shadow's own (its digest, its counts), the run goes through the node's conditional writes,
and afterwards the node holds the values of the point in time; the CLI's history and at read the same shadow."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from chronoshard.operator import kube
from chronoshard.operator.reversion import controller
from chronoshard.shardnode.client.cli import main as cli_main
from chronoshard.shardnode.keyspace.partitioning import initial_map
from kubernetes import client

from tests.integration.shardnode.procs import BIN, INSECURE, Proc, http, http_json, node
from tests.support.kubelet_dir import write_keyring
from tests.support.shadowstub import GROUP, SHADOW_PORT, VERSION, create_custom
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.without_operator]

TABLE = "orders"


@pytest.fixture()
def api(k8s_client):
    previous = kube._api
    kube.set_api_client(k8s_client)
    yield client.CustomObjectsApi(k8s_client)
    kube.set_api_client(previous)


def _shadow(tmp: Path, keyring: Path, node_url: str, ip: str) -> Proc:
    (tmp / "shadow.json").write_text(json.dumps({"tables": [TABLE]}))
    argv = [str(BIN / "chronoshard-shadow"), "--host", ip, "--port", str(SHADOW_PORT), "--node-url", node_url,
            "--data-dir", str(tmp / "data"), "--keyring-dir", str(keyring), "--settings", str(tmp / "shadow.json"),
            *INSECURE]
    proc = Proc(argv, SHADOW_PORT, tmp / "shadow.log")
    proc.url = f"http://{ip}:{SHADOW_PORT}"
    return proc


def _put(url: str, key: str, value: bytes | None) -> int:
    status, body = http("DELETE" if value is None else "PUT", f"{url}/v1/tables/{TABLE}/blocks/{key}", value)
    assert status == 200, body
    return int(json.loads(body)["lsn"])


def _caught_up(shadow_url: str, node_url: str) -> bool:
    last = http_json("GET", f"{node_url}/v1/changes?after=0&limit=1")[1]["lastLsn"]
    st = http_json("GET", f"{shadow_url}/v1/status")[1]
    return st["capture"]["state"] == "running" and st["capture"]["cursor"] >= last


def _cli(*argv: str) -> tuple[int, str, bytes]:
    out, bout = io.StringIO(), io.BytesIO()
    return cli_main(list(argv), out=out, stdin=io.BytesIO(), bout=bout), out.getvalue(), bout.getvalue()


def _pod(k8s_client: Any, ns: str, ip: str) -> None:
    core = client.CoreV1Api(k8s_client)
    core.create_namespaced_pod(ns, client.V1Pod(
        metadata=client.V1ObjectMeta(name="orders-0", labels={
            "app.kubernetes.io/name": "chronoshard", "app.kubernetes.io/instance": "orders",
            "app.kubernetes.io/component": "shard"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="shadow", image="x",
                                                             command=["chronoshard-shadow"])])))
    core.patch_namespaced_pod_status("orders-0", ns, {"status": {"podIP": ip, "podIPs": [{"ip": ip}]}})


def test_reversion_plans_on_the_real_shadow_and_the_node_ends_at_the_point(k8s_client, api, namespace, tmp_path):
    keyring = tmp_path / "keyring"
    write_keyring(keyring, 1, {1: ("primary", os.urandom(32))})
    ip = f"127.{random.randrange(1, 250)}.{random.randrange(1, 250)}.7"
    n = node(tmp_path, keyring).start()
    s = _shadow(tmp_path, keyring, n.url, ip).start()
    try:
        wait_for(lambda: http_json("GET", f"{s.url}/v1/status")[1]["capture"]["seeds"] == 1, what="the first seed")
        _put(n.url, "a", b"good")
        _put(n.url, "c", b"keep me")
        wait_for(lambda: _caught_up(s.url, n.url), what="the shadow to capture the first writes")
        time.sleep(0.05)  # the point must lie strictly between the two groups of writes (wall clock)
        point = time.time()
        time.sleep(0.05)
        _put(n.url, "a", b"bad!")
        _put(n.url, "b", b"should not exist")
        _put(n.url, "c", None)
        wait_for(lambda: _caught_up(s.url, n.url), what="the shadow to capture the bad writes")

        create_custom(k8s_client, namespace, "shardsets", "orders", {"shards": 1}, "ShardSet")
        create_custom(k8s_client, namespace, "shadowpolicies", "orders-shadow", {"shardSetRef": {"name": "orders"}},
                      "ShadowPolicy")
        _pod(k8s_client, namespace, ip)
        point_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(point)) + f".{int(point % 1 * 1e6):06d}Z"
        create_custom(k8s_client, namespace, "reversions", "undo", {"shardSetRef": {"name": "orders"},
                                                                     "tables": [TABLE], "pointInTime": point_text},
                      "Reversion")

        async def passes(until: str) -> dict[str, Any]:
            for _ in range(20):
                body = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "reversions", "undo")
                st = await controller.step(body)
                await asyncio.to_thread(controller.write_status, body, st.status)
                if st.status["phase"] == until:
                    return st.status
                if st.status["phase"] == "Running":
                    await asyncio.sleep(0.2)  # the shadow's run proceeds on its own between passes
            raise AssertionError(f"not {until}: {st.status}")

        planned = asyncio.run(passes("AwaitingApproval"))
        plan = planned["plan"]
        assert (plan["restore"], plan["create"], plan["delete"], plan["keys"]) == (1, 1, 1, 3), plan
        shard_plan = http_json("GET", f"{s.url}/v1/reversions/{namespace}.undo")[1]
        assert plan["perShard"][0]["digest"] == shard_plan["digest"] and shard_plan["phase"] == "planned"
        assert _values(n.url) == {"a": b"bad!", "b": b"should not exist"}  # nothing written before approval

        api.patch_namespaced_custom_object(GROUP, VERSION, namespace, "reversions", "undo",
                                           {"spec": {"approve": planned["digest"]}})
        done = asyncio.run(passes("Completed"))
        assert done["progress"]["done"] == 3 and done["progress"]["remaining"] == 0, done["progress"]
        assert _values(n.url) == {"a": b"good", "c": b"keep me"}

        # The CLI reads the same shadow (map: one shard).
        map_file = tmp_path / "map.json"
        map_file.write_text(initial_map(1).to_json())
        base = ("--map-file", str(map_file), "--shadow-endpoints", s.url)
        code, out, _ = _cli(*base, "-o", "json", "history", TABLE, "a")
        assert code == 0, out
        assert [v["op"] for v in json.loads(out)["versions"]][-3:] == ["put", "put", "put"]  # good, bad!, good
        code, _, raw = _cli(*base, "at", TABLE, "a", "--time", point_text, "--raw")
        assert (code, raw) == (0, b"good")
    finally:
        s.stop()
        n.stop()


def _values(node_url: str) -> dict[str, bytes]:
    import base64

    status, body = http_json("POST", f"{node_url}/v1/tables/{TABLE}/blocks:batchGet", {"keys": ["a", "b", "c"]})
    assert status == 200, body
    return {b["key"]: base64.b64decode(b["value"]) for b in body["blocks"] if b["found"]}
