"""``AsyncClient.for_mirrorset`` through the real API server: the MirrorSet's status, its members' pods (each with
its own loopback IP, where a real `chronoshard-node` of that member listens) and the source's partition map; a
switchover done on the nodes and then written to the status moves the client's writes and reads. The status is
written here (the MirrorSet controller is tested with the controller)."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import Any

import pytest
from chronoshard.shardnode.client import AsyncClient, Unavailable
from chronoshard.shardnode.keyspace.partitioning import initial_map
from kubernetes import client

from tests.integration.shardnode.procs import BIN, INSECURE, Proc, free_port, http_json
from tests.support.kubelet_dir import write_keyring
from tests.support.waiting import wait_for

# The MirrorSet status is written here: no MirrorSet controller may run beside.
pytestmark = [pytest.mark.integration, pytest.mark.without_operator]

GROUP, VERSION = "chronoshard.io", "v1alpha1"


def member_node(tmp: Path, keyring: Path, ip: str, port: int) -> Proc:
    tmp.mkdir()
    argv = [str(BIN / "chronoshard-node"), "--host", ip, "--port", str(port), "--data-dir", str(tmp / "data"),
            "--keyring-dir", str(keyring), *INSECURE]
    proc = Proc(argv, port, tmp / "node.log")
    proc.url = f"http://{ip}:{port}"
    return proc.start()


def pod(core: client.CoreV1Api, ns: str, shardset: str, ip: str) -> None:
    labels = {"app.kubernetes.io/name": "chronoshard", "app.kubernetes.io/instance": shardset,
              "app.kubernetes.io/component": "shard"}
    core.create_namespaced_pod(ns, client.V1Pod(
        metadata=client.V1ObjectMeta(name=f"{shardset}-0", labels=labels),
        spec=client.V1PodSpec(containers=[client.V1Container(name="node", image="x")])))
    core.patch_namespaced_pod_status(f"{shardset}-0", ns, {"status": {"podIP": ip, "podIPs": [{"ip": ip}]}})


def write_status(api: client.CustomObjectsApi, ns: str, term: int, active: str, other: str) -> None:
    copies = [{"shardSet": active, "role": "primary", "health": "healthy", "appliedLSN": 0},
              {"shardSet": other, "role": "mirror", "health": "healthy", "appliedLSN": 0}]
    api.patch_namespaced_custom_object_status(GROUP, VERSION, ns, "mirrorsets", "orders", {"status": {
        "term": term, "activeShardSet": active, "activeSource": active.split("/")[1], "phase": "Replicating",
        "shards": [{"shard": 0, "primary": active, "copies": copies}]}})


def role(url: str, doc: dict[str, Any]) -> dict[str, Any]:
    status, body = http_json("PUT", url + "/v1/replication", doc)
    assert status == 200, body
    return body


def test_for_mirrorset_follows_the_status_and_the_nodes(k8s_client, namespace, tmp_path):
    core, api = client.CoreV1Api(k8s_client), client.CustomObjectsApi(k8s_client)
    a_ss, b_ss = f"{namespace}/orders-a", f"{namespace}/orders-b"
    keyring = tmp_path / "keyring"
    write_keyring(keyring, 1, {1: ("primary", os.urandom(32))})
    base, port = random.randrange(1, 250), free_port()
    ip_a, ip_b = f"127.{base}.7.1", f"127.{base}.7.2"
    a = member_node(tmp_path / "a", keyring, ip_a, port)
    b = member_node(tmp_path / "b", keyring, ip_b, port)
    try:
        role(a.url, {"term": 1, "role": "primary", "mode": "async", "mirrors": ["mirror.ns.b"]})
        role(b.url, {"term": 1, "role": "mirror", "mode": "async", "consumer": "mirror.ns.b", "divergeLsn": None,
                     "source": {"url": a.url, "shardSet": a_ss}})
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, "mirrorsets", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "MirrorSet", "metadata": {"name": "orders"},
            "spec": {"sourceRef": {"name": "orders-a"}, "mirrors": [{"shardSetRef": {"name": "orders-b"}}]}})
        core.create_namespaced_config_map(namespace, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="orders-a-partitions"), data={"map.json": initial_map(1).to_json()}))
        pod(core, namespace, "orders-a", ip_a)
        pod(core, namespace, "orders-b", ip_b)

        async def scenario() -> None:
            c = AsyncClient.for_mirrorset("orders", namespace, api_client=k8s_client, port=port, scheme="http",
                                          read_your_writes=True)
            async with c:
                with pytest.raises(Unavailable, match="names no activeShardSet"):
                    await c.put("t", "k", b"v0")  # a MirrorSet the controller has not reported on yet
                write_status(api, namespace, 1, a_ss, b_ss)
                assert c.mirror_routing is not None
                await c.mirror_routing.refresh()
                first = await c.put("t", "k", b"v1")
                assert await c.get("t", "k") == b"v1"
                # The switchover on the nodes, then in the status.
                token = role(a.url, {"term": 2, "role": "fenced", "primaryShardSet": b_ss})["lastLsn"]
                assert token >= first["lsn"]
                wait_for(lambda: http_json("GET", b.url + "/v1/replication")[1]["appliedLsn"] >= token,
                         what="B to reach the demotion token")
                role(b.url, {"term": 2, "role": "primary", "mode": "async", "mirrors": ["mirror.ns.a"]})
                write_status(api, namespace, 2, b_ss, a_ss)
                await c.put("t", "k", b"v2")  # A refuses (fenced), the status names B
                assert await c.get("t", "k") == b"v2"
                assert c.mirror_routing.current is not None and c.mirror_routing.current.term == 2

        asyncio.run(scenario())
    finally:
        b.stop()
        a.stop()
