"""A move between two real `chronoshard-node` processes of one ShardSet with security on (docs/resharding.md,
docs/security.md): TLS with the ShardSet's CA, authentication (the pods' certificate, the operator's), reviews against
the real API server. The operator's certificate drives the move; the target reaches the source with its own pod
certificate, as a mirror's replicator does, and ends with the source's digest at the same LSN. A target whose
certificate comes from another CA is refused by the source's TLS, keeps retrying and reports it without secrets."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chronoshard.operator import certs
from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap
from kubernetes import client

from tests.integration.client.secure_shard import security_json
from tests.integration.shardnode.procs import BIN, free_port
from tests.support import rbac, tls_files
from tests.support.kubelet_dir import write_keyring
from tests.support.stores import open_store, ring
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

NS, NAME = "shop", "orders"
HALF, TOP = 1 << 63, (1 << 64) - 1
KEYSPACE = "8000000000000000-ffffffffffffffff"


@pytest.fixture(scope="module")
def kubeconfig(control_plane, k8s_client, tmp_path_factory) -> Iterator[Path]:
    core, rb = client.CoreV1Api(k8s_client), client.RbacAuthorizationV1Api(k8s_client)
    ns = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    deleg = rbac.delegator(control_plane, core, rb, ns, tmp_path_factory.mktemp("moves"))
    yield deleg.kubeconfig
    rb.delete_cluster_role_binding(deleg.binding)
    core.delete_namespace(ns)


def context(root: Path, pair: certs.KeyPair, ca: certs.KeyPair) -> ssl.SSLContext:
    """A client presenting ``pair`` and trusting ``ca``."""
    name = uuid.uuid4().hex[:8]
    (root / f"{name}.crt").write_bytes(pair.cert)
    (root / f"{name}.key").write_bytes(pair.key)
    ctx = ssl.create_default_context(cadata=ca.cert.decode())
    ctx.load_cert_chain(root / f"{name}.crt", root / f"{name}.key")
    return ctx


def call(url: str, ctx: ssl.SSLContext, method: str = "GET", doc: Any = None, body: bytes | None = None,
         ) -> tuple[int, Any]:
    data = json.dumps(doc).encode() if doc is not None else body
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


class TlsNode:
    """One node of ShardSet shop/orders (shard ``index`` of 2) with --tls-dir and --security-config."""

    def __init__(self, root: Path, index: int, ca: certs.KeyPair, keyring: Path, kubeconfig: Path,
                 server_ca: certs.KeyPair | None = None) -> None:
        self.root, self.index = root, index
        root.mkdir(parents=True)
        pair = certs.issue_shard_certificate(ca, NS, NAME, 2, ["127.0.0.1"], tls_files.now())
        tls_files.write_tls_dir(root / "tls", pair, server_ca or ca)
        self.key_pem = pair.key
        (root / "security.json").write_text(json.dumps(security_json(NS, NAME)))
        pmap = PartitionMap(1, 2, (Partition(0, 0, HALF - 1, 0), Partition(1, HALF, TOP, 0)))
        (root / "map.json").write_text(pmap.to_json())
        (root / "data").mkdir()
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.argv = [str(BIN / "chronoshard-node"), "--host", "127.0.0.1", "--port", str(self.port),
                     "--data-dir", str(root / "data"), "--keyring-dir", str(keyring),
                     "--partition-map", str(root / "map.json"), "--shard-index", str(index),
                     "--tls-dir", str(root / "tls"), "--security-config", str(root / "security.json")]
        self.env = dict(os.environ, KUBECONFIG=str(kubeconfig))
        self.env.pop("KUBERNETES_SERVICE_HOST", None)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ctx: ssl.SSLContext) -> TlsNode:
        with open(self.root / "node.log", "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env)

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()[-3000:]
            try:
                return call(self.url + "/readyz", ctx)[0] == 200
            except (OSError, urllib.error.URLError):
                return False

        wait_for(ready, what=f"{self.url}/readyz")
        return self

    def log(self) -> str:
        return (self.root / "node.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def prefill(data_dir: Path, n: int) -> None:
    from chronoshard.shardnode.node.store import put_in_txn

    store, _ = open_store(data_dir, ring(1, (1,)))
    try:
        def job(c: Any) -> None:
            for i in range(n):
                put_in_txn(c, store.current_keyring(), "t", f"pre{i}", os.urandom(300))
        store.submit(job).result()
    finally:
        store.close()


def test_the_target_pulls_with_its_pod_certificate(kubeconfig, tmp_path):
    keyring = tmp_path / "keyring"
    write_keyring(keyring, 1, {1: ("primary", bytes([1]) * 32)})
    ca = certs.new_ca(NS, NAME, tls_files.now())
    operator = context(tmp_path, certs.issue_operator_certificate(ca, tls_files.now()), ca)
    pod = context(tmp_path, certs.issue_shard_certificate(ca, NS, NAME, 2, [], tls_files.now()), ca)
    src = TlsNode(tmp_path / "src", 0, ca, keyring, kubeconfig)
    dst = TlsNode(tmp_path / "dst", 1, ca, keyring, kubeconfig)
    prefill(tmp_path / "src" / "data", 500)
    src.start(operator)
    dst.start(operator)
    try:
        doc = {"source": {"url": src.url, "shard": 0}, "partition": 1, "ranges": [KEYSPACE.split("-")]}
        status, body = call(f"{dst.url}/v1/moves/m1", operator, "PUT", doc)
        assert status == 201, body
        for i in range(20):  # writes while the move runs, as the pods write (the cache's identity)
            assert call(f"{src.url}/v1/tables/t/blocks/late{i}", pod, "PUT", body=b"v")[0] == 200
        status, last = call(f"{src.url}/v1/status", operator)
        want = last["lastLsn"]
        wait_for(lambda: (call(f"{dst.url}/v1/moves/m1", operator)[1]["sourceLsn"] or 0) >= want,
                 what="the target to catch up")
        status, d_src = call(f"{src.url}/v1/ranges/digest?keyspace={KEYSPACE}", operator)
        assert status == 200 and d_src["blocks"] > 200
        status, d_dst = call(f"{dst.url}/v1/moves/m1/digest?sourceLsn={d_src['lsn']}", operator)
        assert status == 200, d_dst
        assert (d_dst["digest"], d_dst["blocks"]) == (d_src["digest"], d_src["blocks"])
        # Without a certificate the routes are closed: 401 on both sides.
        anonymous = ssl.create_default_context(cadata=ca.cert.decode())
        assert call(f"{dst.url}/v1/moves", anonymous)[0] == 401
        assert call(f"{src.url}/v1/ranges/digest?keyspace={KEYSPACE}", anonymous)[0] == 401
        status, closed = call(f"{dst.url}/v1/moves/m1?discard=true", operator, "DELETE")
        assert status == 200 and closed["slotDropped"] and closed["discardedBlocks"] == d_src["blocks"]
        assert call(f"{src.url}/v1/consumers/move.m1", operator)[0] == 404
    finally:
        dst.stop()
        src.stop()
    for node in (src, dst):
        assert node.key_pem.decode().splitlines()[1] not in node.log()


def test_a_target_the_source_does_not_trust_keeps_retrying(kubeconfig, tmp_path):
    keyring = tmp_path / "keyring"
    write_keyring(keyring, 1, {1: ("primary", bytes([1]) * 32)})
    ca = certs.new_ca(NS, NAME, tls_files.now())
    stranger_ca = certs.new_ca(NS, NAME, tls_files.now())  # same names, another CA: not the ShardSet's
    operator = context(tmp_path, certs.issue_operator_certificate(ca, tls_files.now()), ca)
    src = TlsNode(tmp_path / "src", 0, ca, keyring, kubeconfig)
    # The target serves with the ShardSet's CA in its trust but presents a certificate of the other CA.
    dst = TlsNode(tmp_path / "dst", 1, stranger_ca, keyring, kubeconfig, server_ca=ca)
    src.start(operator)
    # Its clients present the ShardSet's operator certificate (its ca.crt is the ShardSet's) and check its
    # serving certificate against the other CA.
    dst_operator = context(tmp_path, certs.issue_operator_certificate(ca, tls_files.now()), stranger_ca)
    dst.start(dst_operator)
    try:
        doc = {"source": {"url": src.url, "shard": 0}, "partition": 1, "ranges": [KEYSPACE.split("-")]}
        assert call(f"{dst.url}/v1/moves/m1", dst_operator, "PUT", doc)[0] == 201
        m = wait_for(lambda: (lambda b: b if b["error"] else None)(call(f"{dst.url}/v1/moves/m1", dst_operator)[1]),
                     what="the target to report the refusal")
        assert m["phase"] == "copying" and m["copiedBlocks"] == 0
        assert m["error"].startswith("source answered")  # the status only, never a body or a credential
        assert call(f"{src.url}/v1/consumers/move.m1", operator)[0] == 404  # nothing registered on the source
    finally:
        dst.stop()
        src.stop()
