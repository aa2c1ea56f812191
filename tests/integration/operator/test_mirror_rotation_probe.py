"""A KeyRotation of a MirrorSet's active member waits for the mirror members' nodes too (#17): one controller pass
against a real kube-apiserver (ShardSets, MirrorSet, keyring, pods) and a real node serving a mirror's shard 0.

The probe reaches a pod at its IP and the node port 7400, so the node listens on a loopback address of its own
(127.0.0.0/8 is all loopback on Linux), as in tests/integration/operator/test_shadow_probes.py."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from chronoshard.operator import kube, naming
from chronoshard.operator.keyring import initial_keyring_data
from chronoshard.operator.keyrotation import controller
from chronoshard.operator.podcontract import NODE_PORT
from chronoshard.shardnode.node.server import NodeConfig
from chronoshard.shardnode.node.server import create_app as create_node
from kubernetes import client

from tests.support.kubelet_dir import write_keyring
from tests.support.servers import KEY1, KEY2, keyring_dir

pytestmark = [pytest.mark.integration, pytest.mark.without_operator]

GROUP, VERSION = "chronoshard.io", "v1alpha1"


@pytest.fixture()
def api(k8s_client) -> Iterator[client.ApiClient]:
    previous = kube._api
    kube.set_api_client(k8s_client)
    yield k8s_client
    kube.set_api_client(previous)


@contextlib.asynccontextmanager
async def listen(app: web.Application, host: str, port: int) -> AsyncIterator[None]:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        yield
    finally:
        await runner.cleanup()


def _objects(api: client.ApiClient, ns: str, mirror_ip: str) -> None:
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    for name in ("src", "mir", "alone"):
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, "shardsets", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "ShardSet", "metadata": {"name": name},
            "spec": {"shards": 1, "keyEncryption": {"provider": "none"}}})
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "mirrorsets", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "MirrorSet", "metadata": {"name": "orders"},
        "spec": {"sourceRef": {"name": "src"}, "mirrors": [{"shardSetRef": {"name": "mir"}}]}})
    for name in ("src", "alone"):
        core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name=f"{name}-keyring"),
                                                          data=initial_keyring_data("AES-256-GCM")))
    # The mirror's shard 0 pod as the API server shows it once scheduled: its node serves plain HTTP here.
    core.create_namespaced_pod(ns, client.V1Pod(
        metadata=client.V1ObjectMeta(name="mir-0", labels=naming.selector_labels("mir")),
        spec=client.V1PodSpec(containers=[client.V1Container(name="node", image="chronoshard",
                                                             command=["chronoshard-node"])])))
    core.patch_namespaced_pod_status("mir-0", ns, {"status": {"podIP": mirror_ip, "podIPs": [{"ip": mirror_ip}]}})


def _awaiting_load(ns: str, shardset: str) -> dict[str, Any]:
    return {"metadata": {"name": f"rot-{shardset}", "namespace": ns, "generation": 1, "uid": "u"},
            "spec": {"shardSetRef": {"name": shardset}, "trigger": "a"},
            "status": {"phase": "AwaitingLoad", "fromVersion": 1, "toVersion": 2, "reason": "manual",
                       "targetGeneration": 2}}


def _message(st: controller.Step) -> str:
    return next(c["message"] for c in st.status["conditions"] if c["type"] == "Ready")


async def test_active_members_rotation_waits_for_the_mirrors_node_to_load_the_new_version(api, namespace,
                                                                                          tmp_path: Path):
    ns = namespace
    ip = f"127.{random.randint(1, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    _objects(api, ns, ip)
    kdir = keyring_dir(tmp_path)  # generation 1, version 1 only
    cfg = NodeConfig(data_dir=tmp_path / "data", keyring_dir=kdir, keyring_poll_seconds=0.05)
    cfg.apply({"tables": ["orders"]})
    async with listen(create_node(cfg), ip, NODE_PORT):
        st = await controller.step(_awaiting_load(ns, "src"))
        assert st.status["phase"] == "AwaitingLoad"
        message = _message(st)
        # Its own shard has no pod here; the mirror's node has loaded generation 1 without version 2.
        assert "shard 0 node: no pod" in message
        assert f"{ns}/mir shard 0 node: has keyring generation 1, needs 2 with version 2" in message, message
        assert "cache" not in message.split(f"{ns}/mir", 1)[1]  # only the mirror's node is asked

        # The mirror's keyring copy reaches its node (kubelet swaps the mounted files): it no longer holds it up.
        write_keyring(kdir, 2, {1: ("primary", KEY1), 2: ("decrypt-only", KEY2)})
        st = await controller.step(_awaiting_load(ns, "src"))
        assert f"{ns}/mir" not in _message(st), _message(st)
        assert "shard 0 node: no pod" in _message(st)

        # A ShardSet in no MirrorSet waits for its own processes only.
        alone = _message(await controller.step(_awaiting_load(ns, "alone")))
        assert "mir" not in alone and "shard 0 node: no pod" in alone
