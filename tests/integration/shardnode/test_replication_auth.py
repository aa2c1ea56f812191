"""Replication peers over real TLS (docs/security.md, "Replication peers"): a `chronoshard-node` process of
ShardSet A started with ``--replication-dir`` accepts the pod certificate of ShardSet B (another CA) on the
replication routes once B's CA is in A's ``peers-ca.crt`` and B's identity is in ``replicaIdentities``, and refuses
it on data writes and ADMIN routes; a certificate from B's CA that names anyone else (even A's pods or the operator)
is refused with 401. Certificates come from the operator's own certificate code.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from chronoshard.operator import certs
from chronoshard.shardnode.serving import tls
from kubernetes import client

from tests.integration.client.secure_shard import SecureShard, security_json
from tests.support import rbac, tls_files
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

NS_A, NS_B = "ns-a", "ns-b"


class PeeredShard(SecureShard):
    """A secure one-shard node whose security.json lists ``replicas`` and which reads peer CAs from ``peers``."""

    def __init__(self, root: Path, kubeconfig: Path, replicas: list[str], namespace: str = NS_A,
                 name: str = "orders-a") -> None:
        super().__init__(root, namespace, name, kubeconfig)
        self.peers = root / "replication"
        doc = {**security_json(namespace, name), "replicaIdentities": replicas}
        (root / "security.json").write_text(json.dumps(doc))

    def pod_context(self, trust: bytes | None = None) -> ssl.SSLContext:
        """A client presenting this ShardSet's pod certificate, trusting its CA (and ``trust``)."""
        pair = certs.issue_shard_certificate(self.ca_pair, self.namespace, self.name, 1, [], tls_files.now())
        return context_for(self.root, pair, self.ca_pair.cert + (trust or b""))

    def _flags(self) -> list[str]:
        return [*super()._flags(), "--replication-dir", str(self.peers)]


@pytest.fixture(scope="module")
def kubeconfig(control_plane, k8s_client, tmp_path_factory) -> Iterator[Path]:
    core, rb = client.CoreV1Api(k8s_client), client.RbacAuthorizationV1Api(k8s_client)
    ns = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    deleg = rbac.delegator(control_plane, core, rb, ns, tmp_path_factory.mktemp("peers"))
    yield deleg.kubeconfig
    rb.delete_cluster_role_binding(deleg.binding)
    core.delete_namespace(ns)


def context_for(root: Path, pair: certs.KeyPair, trust: bytes) -> ssl.SSLContext:
    """A client presenting ``pair`` and trusting the CA certificates in ``trust``."""
    name = uuid.uuid4().hex[:8]
    (root / f"{name}.crt").write_bytes(pair.cert)
    (root / f"{name}.key").write_bytes(pair.key)
    ctx = ssl.create_default_context(cadata=trust.decode())
    ctx.load_cert_chain(root / f"{name}.crt", root / f"{name}.key")
    return ctx


def call(url: str, ctx: ssl.SSLContext, method: str = "GET", body: bytes | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            raw = r.read()
            return r.status, json.loads(raw) if r.headers.get("Content-Type", "").startswith("application/json") \
                else {}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def handshake_refused(url: str, ctx: ssl.SSLContext) -> bool:
    try:
        call(url, ctx)
    except (ssl.SSLError, urllib.error.URLError, ConnectionError):
        return True
    return False


REPLICATION = ["/v1/changes?after=0", "/v1/status", "/v1/consumers", "/v1/replication", "/v1/digest", "/v1/health",
               "/v1/health/history"]


def test_a_peer_pod_certificate_is_a_replica_and_nothing_more(kubeconfig, tmp_path):
    ca_b = certs.new_ca(NS_B, "orders-b", tls_files.now())
    pod_b = certs.issue_shard_certificate(ca_b, NS_B, "orders-b", 1, [], tls_files.now())
    replica = certs.pod_identity(NS_B, "orders-b")
    shard = PeeredShard(tmp_path / "a", kubeconfig, [replica])
    try:
        shard.start(cache=False)
        url = shard.node_url
        peer = context_for(tmp_path, pod_b, shard.ca_pair.cert)
        # B's CA is not trusted yet: B's certificate fails the handshake.
        assert handshake_refused(url + "/v1/status", peer)
        tls_files.publish(shard.peers, {"peers-ca.crt": ca_b.cert})
        wait_for(lambda: not handshake_refused(url + "/v1/status", peer), what="A to trust B's CA")
        for path in REPLICATION:
            status, body = call(url + path, peer)
            assert status == 200, (path, body)
        assert call(url + "/v1/consumers/mirror.ns-b.orders-b", peer, "PUT", b"{}")[0] == 201
        # Data and ADMIN routes: the certificate is genuine, but a replica may not (403, no review).
        for method, path, body in (("PUT", "/v1/tables/t/blocks/k", b"x"), ("GET", "/v1/tables/t/blocks/k", None),
                                   ("GET", "/v1/keys", None), ("POST", "/v1/rewrap", b"{}"),
                                   ("PUT", "/v1/replication", b'{"term": 9, "role": "fenced"}'),
                                   ("POST", "/v1/verify", b"{}")):
            status, doc = call(url + path, peer, method, body)
            assert (status, doc.get("error")) == (403, "forbidden"), (method, path, doc)
        # A's own pod certificate still writes (its CA stays the one that names the pods).
        own = context_for(tmp_path, certs.issue_shard_certificate(shard.ca_pair, NS_A, "orders-a", 1, [],
                                                                  tls_files.now()), shard.ca_pair.cert)
        assert call(url + "/v1/tables/t/blocks/k", own, "PUT", b"x")[0] == 200
        # Frames (ciphertext, for a rejoining mirror's rewind) are replication routes too.
        assert call(url + "/v1/tables/t/frames/k", peer)[0] == 200
        status, doc = call(url + "/v1/tables/t/frames:batchGet", peer, "POST", b'{"keys": ["k"]}')
        assert status == 200 and doc["frames"][0]["found"]
        # B's CA issuing a certificate in A's pods' or the operator's name: never more than a stranger (401).
        for cn in (certs.pod_identity(NS_A, "orders-a"), "chronoshard:operator", "someone"):
            forged = context_for(tmp_path, certs.issue(ca_b, cn, tls_files.now(), certs.SERVING_LIFETIME),
                                 shard.ca_pair.cert)
            for method, path, body in (("GET", "/v1/changes?after=0", None), ("PUT", "/v1/tables/t/blocks/k", b"y"),
                                       ("POST", "/v1/rewrap", b"{}")):
                status, doc = call(url + path, forged, method, body)
                assert (status, doc.get("error")) == (401, "unauthenticated"), (cn, path, doc)
        assert "BEGIN" not in shard.logs()  # no certificate or key text in the logs
    finally:
        shard.stop()


def test_a_trusted_peer_ca_whose_pod_is_not_listed_is_refused(kubeconfig, tmp_path):
    ca_b = certs.new_ca(NS_B, "orders-b", tls_files.now())
    pod_b = certs.issue_shard_certificate(ca_b, NS_B, "orders-b", 1, [], tls_files.now())
    shard = PeeredShard(tmp_path / "a", kubeconfig, [certs.pod_identity(NS_B, "other")])
    tls_files.publish(shard.peers, {"peers-ca.crt": ca_b.cert})
    try:
        shard.start(cache=False)
        peer = context_for(tmp_path, pod_b, shard.ca_pair.cert)
        status, doc = call(shard.node_url + "/v1/changes?after=0", peer)
        assert (status, doc.get("error")) == (401, "unauthenticated")
        assert "no replica identity" in doc["message"]
    finally:
        shard.stop()


def test_the_mirror_dials_its_source_with_the_peer_bundle(tmp_path):
    """The client side: B's client context (its own TLS files plus A's CA in B's peers-ca.crt) verifies A's node
    certificate, which B's own CA alone does not."""
    ca_a, ca_b = tls_files.new_ca("orders-a"), tls_files.new_ca("orders-b")
    tls_b = tmp_path / "tls-b"
    tls_files.write_tls_dir(tls_b, tls_files.shard_pair(ca_b, name="orders-b"), ca_b)
    alone = tls.client_context(tls_b)
    repl = tmp_path / "repl-b"
    tls_files.publish(repl, {"peers-ca.crt": ca_a.cert})
    bundled = tls.client_context(tls_b, repl)
    tls_files.write_tls_dir(tmp_path / "tls-a", tls_files.shard_pair(ca_a, name="orders-a"), ca_a)
    server_a = tls.server_context(tmp_path / "tls-a")

    def handshake(ctx: ssl.SSLContext) -> bool:
        a, b = socket.socketpair()
        done: list[bool] = []

        def serve() -> None:
            try:
                with server_a.wrap_socket(a, server_side=True):
                    done.append(True)
            except (ssl.SSLError, OSError):
                done.append(False)

        t = threading.Thread(target=serve)
        t.start()
        try:
            with ctx.wrap_socket(b, server_hostname="localhost"):
                ok = True
        except ssl.SSLError:
            ok = False
        t.join(10)
        a.close()
        return ok

    assert not handshake(alone)
    assert handshake(bundled)


def test_a_mirror_of_another_shardset_streams_over_tls_as_a_replica(kubeconfig, tmp_path):
    """End to end: ShardSet B's node mirrors ShardSet A's node over TLS, each trusting the other's CA through its
    peers-ca.crt and listing the other's pod identity; a sync write on A is answered once B acknowledged it."""
    a = PeeredShard(tmp_path / "a", kubeconfig, [certs.pod_identity(NS_B, "orders-b")])
    b = PeeredShard(tmp_path / "b", kubeconfig, [certs.pod_identity(NS_A, "orders-a")], NS_B, "orders-b")
    tls_files.publish(a.peers, {"peers-ca.crt": b.ca_pair.cert})
    tls_files.publish(b.peers, {"peers-ca.crt": a.ca_pair.cert})
    slot = "mirror.ns-b.orders-b"
    try:
        a.start(cache=False)
        b.start(cache=False)
        op_a, op_b = a.operator_ssl_context(), b.operator_ssl_context()
        mirror = {"term": 1, "role": "mirror", "mode": "sync", "consumer": slot,
                  "source": {"url": a.node_url, "shardSet": f"{NS_A}/orders-a"}}
        assert call(b.node_url + "/v1/replication", op_b, "PUT", json.dumps(mirror).encode())[0] == 200
        wait_for(lambda: any(s["name"] == slot for s in call(a.node_url + "/v1/consumers", op_a)[1]["consumers"]),
                 what="B's slot on A (registered with B's pod certificate)")
        doc = {"term": 1, "role": "primary", "mode": "sync", "mirrors": [slot], "syncTimeoutSeconds": 30}
        assert call(a.node_url + "/v1/replication", op_a, "PUT", json.dumps(doc).encode())[0] == 200
        status, written = call(a.node_url + "/v1/tables/t/blocks/k", a.pod_context(), "PUT", b"replicated")
        assert status == 200, written
        state = call(b.node_url + "/v1/replication", op_b)[1]
        assert state["appliedLsn"] >= written["lsn"] and state["state"] == "streaming", state
        # A let B's pod in as a replica (and nothing was refused to it), with no certificate or key text logged.
        metrics = a.metrics(a.node_url)
        assert [line for line in metrics.splitlines() if 'reason="replica"' in line and 'result="allowed"' in line
                and not line.endswith(" 0.0")], metrics
        assert 'reason="replica_only"' not in metrics and 'reason="invalid"' not in metrics
        assert "BEGIN" not in a.logs() + b.logs()
    finally:
        b.stop()
        a.stop()
