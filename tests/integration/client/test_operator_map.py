"""End to end with the operator: its partition ConfigMap drives real shard processes and the client.

The operator (in-process, real kube-apiserver) creates the ShardSet's ``<name>-partitions`` ConfigMap;
its ``map.json`` is published into the nodes' mounted volume as kubelet would; the client reads the
map from the ConfigMap, writes through real ``chronoshard-node`` processes, and follows a scale-up.
"""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from chronoshard.shardnode.client import AsyncClient, ConfigMapMap
from chronoshard.shardnode.client.cli import main
from chronoshard.shardnode.keyspace.partitioning import PartitionMap, initial_map
from kubernetes import client

from tests.support.waiting import wait_for

from .checks import TABLE, bounded, check_placement, wait_epoch
from .shards import ShardNodes

pytestmark = pytest.mark.integration
GROUP, VERSION = "chronoshard.io", "v1alpha1"



def config_map_map(core: client.CoreV1Api, ns: str, name: str) -> PartitionMap | None:
    try:
        cm = core.read_namespaced_config_map(f"{name}-partitions", ns)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    text = (cm.data or {}).get("map.json")
    return PartitionMap.from_json(text) if text else None


async def test_client_follows_the_operators_map(operator_runner, control_plane, k8s_client, namespace,
                                                tmp_path):
    core = client.CoreV1Api(k8s_client)
    custom = client.CustomObjectsApi(k8s_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "shardsets", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ShardSet", "metadata": {"name": "routes"},
        "spec": {"shards": 3}})
    m1 = wait_for(lambda: config_map_map(core, namespace, "routes"), timeout=45, what="partition ConfigMap")
    assert m1 == initial_map(3)

    nodes = ShardNodes(tmp_path, m1)  # the kubelet mount of that ConfigMap
    try:
        async with AsyncClient(ConfigMapMap("routes", namespace, api_client=k8s_client), nodes.urls) as c:
            keys = [f"r{i}" for i in range(600)]
            await bounded(c.put(TABLE, k, k.encode()) for k in keys)
            await check_placement(nodes.urls, m1, keys)

            # Scale up: the operator keeps every partition where it is and bumps the epoch.
            custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "shardsets", "routes",
                                                  {"spec": {"shards": 4}})
            m2 = wait_for(lambda: (m := config_map_map(core, namespace, "routes")) and m.epoch == 2 and m,
                          timeout=45, what="epoch 2")
            assert m2.shards == 4 and m2.partitions == m1.partitions
            nodes.publish_map(m2)  # kubelet syncs the volume
            nodes.add()
            await wait_epoch(nodes.urls, 2)
            await c.put("t", "after-scale", b"x")  # refused under epoch 1 once, then routed by epoch 2
            assert (await c.partition_map()).epoch == 2 and c.map_refreshes == 2
            assert (await c.get("t", "after-scale")) == b"x"
    finally:
        nodes.stop()

    out = io.StringIO()
    argv = ["--kubeconfig", str(control_plane.kubeconfig), "-n", namespace, "-o", "json", "status", "routes"]
    # The CLI runs its own event loop, so it runs in a thread here.
    code = await asyncio.to_thread(main, argv, out=out, stdin=io.BytesIO(), bout=io.BytesIO())
    assert code == 0
    st = json.loads(out.getvalue())
    assert st["shards"]["desired"] == 4 and st["partitionEpoch"] == 2 and st["keyVersion"] == 1
