"""The MirrorSet controller with security on: two `chronoshard-node` processes serving HTTPS only (each ShardSet its
own CA, its pods' certificate from the operator's certificate code, security.json with the other member as a
`replica` identity and its CA in `peers-ca.crt`), each on a pod-like loopback IP at port 7400 behind a Pod object
whose node container has `--tls-dir`. The controller reaches them as it reaches real pods (operator/podtls.py: the
member's `<name>-ca` Secret, its own client certificate, the pod's DNS name), the mirror streams from the primary
as a replica, and a switchover by annotation moves the primary role with every acknowledged write kept."""

from __future__ import annotations

import json
import random
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chronoshard.operator import certs, kube, naming, podtls
from chronoshard.operator.mirrorset import controller
from chronoshard.operator.podcontract import NODE_PORT
from kubernetes import client

from tests.integration.client.secure_shard import SecureShard, security_json
from tests.support import tls_files
from tests.support.shadowstub import GROUP, VERSION, create_custom
from tests.support.waiting import wait_for, wait_for_async

pytestmark = [pytest.mark.integration, pytest.mark.without_operator]


class PodShard(SecureShard):
    """Shard 0 of ShardSet ``namespace/name``: its node only, HTTPS at ``ip``:7400, trusting ``peers``' CAs."""

    def __init__(self, root: Path, namespace: str, name: str, kubeconfig: Path, ip: str) -> None:
        super().__init__(root, namespace, name, kubeconfig)
        pair = certs.issue_shard_certificate(self.ca_pair, namespace, name, 1, [ip], tls_files.now())
        tls_files.write_tls_dir(self.tls, pair, self.ca_pair)
        self.ip, self.peers = ip, root / "replication"
        self.node_port, self.node_url = NODE_PORT, f"https://{ip}:{NODE_PORT}"
        self.pod_pair = pair

    def trust(self, peer: PodShard) -> None:
        """Accept ``peer``'s pods as replicas (its identity in security.json, its CA in peers-ca.crt)."""
        doc = {**security_json(self.namespace, self.name),
               "replicaIdentities": [certs.pod_identity(peer.namespace, peer.name)]}
        (self.root / "security.json").write_text(json.dumps(doc))
        tls_files.publish(self.peers, {"peers-ca.crt": peer.ca_pair.cert})

    def _flags(self) -> list[str]:
        return [*super()._flags(), "--replication-dir", str(self.peers)]

    def start_node(self) -> PodShard:
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        node = self._spawn([str(BIN), "--port", str(NODE_PORT), "--host", self.ip, "--data-dir", str(data),
                            "--keyring-dir", str(self.keyring), "--partition-map",
                            str(self.partitions / "map.json"), "--shard-index", "0"], "node.log")
        self.wait_ready(self.node_url, node)
        return self

    def pod_context(self) -> ssl.SSLContext:
        """A client presenting this ShardSet's own pod certificate (may write blocks), trusting its CA."""
        return podtls.client_context(self.ca_pair.cert, self.pod_pair)


BIN = Path(sys.executable).parent / "chronoshard-node"


def call(shard: PodShard, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    """A request to the node as one of its own pods."""
    req = urllib.request.Request(shard.node_url + path, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10, context=shard.pod_context()) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, {"raw": raw}


def role(shard: PodShard) -> dict[str, Any]:
    status, body = call(shard, "GET", "/v1/replication")
    assert status == 200, body
    return body


def _ip() -> str:
    return f"127.{random.randrange(1, 250)}.{random.randrange(1, 250)}.{random.randrange(2, 250)}"


@pytest.fixture()
def api(k8s_client):
    previous = kube._api
    kube.set_api_client(k8s_client)
    yield client.CustomObjectsApi(k8s_client)
    kube.set_api_client(previous)


@pytest.fixture()
def members(k8s_client, api, namespace, tmp_path, control_plane) -> Iterator[dict[str, PodShard]]:
    kubeconfig = Path(control_plane.kubeconfig)
    ips = {"orders-a": _ip(), "orders-b": _ip()}
    while ips["orders-b"] == ips["orders-a"]:
        ips["orders-b"] = _ip()
    shards = {n: PodShard(tmp_path / n, namespace, n, kubeconfig, ip) for n, ip in ips.items()}
    a, b = shards["orders-a"], shards["orders-b"]
    # One key material for both (the controller's key copy keeps members so); each its own CA.
    b.keyring = a.keyring
    a.trust(b)
    b.trust(a)
    core = client.CoreV1Api(k8s_client)
    for name, shard in shards.items():
        core.create_namespaced_secret(namespace, client.V1Secret(
            metadata=client.V1ObjectMeta(name=naming.ca_secret_name(name)),
            string_data={"ca.crt": shard.ca_pair.cert.decode(), "ca.key": shard.ca_pair.key.decode()}))
        create_custom(k8s_client, namespace, "shardsets", name, {"shards": 1}, "ShardSet")
        core.create_namespaced_pod(namespace, client.V1Pod(
            metadata=client.V1ObjectMeta(name=f"{name}-0", labels=naming.selector_labels(name)),
            spec=client.V1PodSpec(containers=[client.V1Container(
                name="node", image="x", command=["chronoshard-node", "--tls-dir", "/etc/chronoshard/tls"])])))
        core.patch_namespaced_pod_status(f"{name}-0", namespace, {"status": {
            "podIP": shard.ip, "podIPs": [{"ip": shard.ip}],
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
        shard.start_node()
    create_custom(k8s_client, namespace, "mirrorsets", "orders", {
        "sourceRef": {"name": "orders-a"}, "mirrors": [{"shardSetRef": {"name": "orders-b"}}],
        "health": {"probeInterval": "1s", "latencyThresholdMs": 5000},
        "failover": {"policy": "manual", "leaseDuration": "3s"}}, "MirrorSet")
    try:
        yield shards
    finally:
        for shard in shards.values():
            shard.stop()
        for name in shards:
            podtls.forget(namespace, name)


async def test_over_tls_the_mirror_streams_as_a_replica_and_a_switchover_keeps_every_write(api, namespace,
                                                                                           members):
    a, b = members["orders-a"], members["orders-b"]
    events: list[str] = []

    async def one_pass() -> dict[str, Any]:
        body = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "mirrorsets", "orders")
        status, evs, _ = await controller.step(body)
        controller.write_status(body, status)
        events.extend(reason for _, reason, _ in evs)
        return status

    first = await one_pass()
    assert first["term"] == 1 and (role(a)["role"], role(b)["role"]) == ("primary", "mirror"), events
    source = role(b)["source"]
    assert source["url"] == a.node_url and source["shardSet"] == f"{namespace}/orders-a"
    wait_for(lambda: (role(a).get("writes") or {}).get("accepting"), what="A to acquire its Lease")
    acked = {}
    for i in range(15):
        status, body = call(a, "PUT", f"/v1/tables/orders/blocks/k{i}", b"secret %d" % i)
        assert status == 200, body
        acked[f"k{i}"] = b"secret %d" % i
    last = role(a)["lastLsn"]
    wait_for(lambda: role(b).get("state") == "streaming" and role(b)["appliedLsn"] >= last,
             what="B to stream A's writes over TLS as a replica")

    async def replicating() -> dict[str, Any] | None:
        status = await one_pass()
        return status if status["phase"] == "Replicating" else None

    await wait_for_async(replicating, 30.0, interval=0.2, what="phase Replicating")

    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, "mirrorsets", "orders",
                                       {"metadata": {"annotations": {"chronoshard.io/switchover-to": "orders-b"}}})

    async def switched() -> dict[str, Any] | None:
        status = await one_pass()
        return status if (status.get("lastOperation") or {}).get("outcome") else None

    done = await wait_for_async(switched, 60.0, interval=0.2, what="the switchover")
    assert (done["lastOperation"]["outcome"], done["activeShardSet"], done["term"]) == (
        "Succeeded", f"{namespace}/orders-b", 2), (done["lastOperation"], events)
    assert (role(b)["role"], role(a)["role"]) == ("primary", "mirror")
    for key, value in acked.items():
        status, raw = call(b, "GET", f"/v1/tables/orders/blocks/{key}")
        assert (status, raw.get("raw")) == (200, value), (key, raw)
