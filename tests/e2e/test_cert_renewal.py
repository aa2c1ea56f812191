"""e2e: the pods' certificate is renewed under load and no request fails (issue 13, "a certificate renewed under
load gives zero failed requests"; docs/security.md, "Renewal" and "Reload").

A ShardSet of two shards on the session's local cluster (operator + node agent). A Python client found through
Kubernetes (``Client.for_shardset``) with a TokenRequest token of a ServiceAccount bound to the data Role writes
and reads in a bounded loop. Meanwhile the test makes the operator renew Secret ``NAME-tls``: it replaces the
Secret's ``tls.key`` with an unrelated key, which ``tlsassets._renewal`` judges "its key does not match" (the
Secret is never absent, so the node agent always has a payload to mount; the pods' reloader refuses the broken
pair and keeps the one in force until the operator's new pair arrives). Then every server of every pod (node
7400, cache 7401, predictor 7402) presents the new certificate on a new TLS connection, no pod was restarted
(same uid, container IDs and restart counts), no request failed and every read returned the acknowledged value.
"""

from __future__ import annotations

import base64
import json
import random
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from chronoshard.shardnode.client import Client
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.waiting import wait_for

from .conftest import LocalCluster, data_client_args, is_ready

pytestmark = pytest.mark.e2e

NAME, TABLE, SHARDS = "renew", "orders", 2
PORTS = {"node": 7400, "cache": 7401, "predictor": 7402}
KEYS = 100
LOAD_SECONDS = 60  # bound of the load loop, even if the test fails before stopping it
LOAD_OPS = 20_000


@dataclass
class Load:
    """One client's bounded loop: a write of a new value, then a read of an acknowledged key, and so on."""

    client: Client
    keys: list[str]
    acked: dict[str, bytes] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    writes: int = 0
    reads: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def preload(self) -> None:
        for k in self.keys:
            v = f"{k}:initial".encode() * 8
            self.client.put(TABLE, k, v)
            self.acked[k] = v

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="renewal-load", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        rng = random.Random(13)
        deadline = time.monotonic() + LOAD_SECONDS
        while not self._stop.is_set() and time.monotonic() < deadline and self.writes + self.reads < LOAD_OPS:
            key = rng.choice(self.keys)
            value = f"{key}:{self.writes}:{rng.random()}".encode() * rng.randint(1, 16)
            try:
                self.client.put(TABLE, key, value)
                self.acked[key] = value
                self.writes += 1
            except Exception as exc:  # every failure is the test's finding, with its time and cause
                self.failures.append(f"{time.strftime('%H:%M:%S')} put {key}: {type(exc).__name__}: {exc}")
            probe = rng.choice(self.keys)
            try:
                got = self.client.get(TABLE, probe)
                self.reads += 1
                if got != self.acked[probe]:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} get {probe}: not the acknowledged value")
            except Exception as exc:
                self.failures.append(f"{time.strftime('%H:%M:%S')} get {probe}: {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)


def shard_pods(cluster: LocalCluster, ns: str) -> list[dict[str, Any]]:
    return sorted(cluster.pods(ns, f"app.kubernetes.io/instance={NAME}"), key=lambda p: p["metadata"]["name"])


def identity(pod: dict[str, Any]) -> tuple[str, str, tuple[tuple[str, str, int], ...]]:
    """What a restart or a replacement changes: the pod's uid, its containers' IDs and restart counts."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return (pod["metadata"]["uid"], pod["metadata"]["name"],
            tuple(sorted((c["name"], c.get("containerID", ""), c.get("restartCount", 0)) for c in statuses)))


def secret_serial(cluster: LocalCluster, ns: str) -> int:
    secret = cluster.get("secret", f"{NAME}-tls", ns)
    assert secret is not None, f"Secret {ns}/{NAME}-tls"
    return x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"])).serial_number


def presented_serial(ip: str, port: int, ctx: ssl.SSLContext) -> int | None:
    """The serial of the certificate a server presents on a new TLS connection (None if it cannot be reached)."""
    try:
        with socket.create_connection((ip, port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    except OSError:
        return None
    return x509.load_der_x509_certificate(der).serial_number if der else None


def presented(pods: list[dict[str, Any]], ctx: ssl.SSLContext) -> dict[str, int | None]:
    return {f"{p['metadata']['name']}:{server}": presented_serial(p["status"]["podIP"], port, ctx)
            for p in pods for server, port in PORTS.items()}


def unrelated_key() -> str:
    """A P-256 private key that matches no certificate (base64 of its PEM, as Secret data)."""
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return base64.b64encode(pem).decode()


@pytest.fixture()
def shardset(local_cluster: LocalCluster, e2e_namespace: str) -> Iterator[str]:
    ns = e2e_namespace
    local_cluster.apply({"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShardSet",
                         "metadata": {"name": NAME, "namespace": ns},
                         "spec": {"shards": SHARDS, "tables": [{"name": TABLE}], "cache": {"size": "8Mi"}}})
    wait_for(lambda: len([p for p in shard_pods(local_cluster, ns) if is_ready(p)]) == SHARDS,
             timeout=180, interval=0.5, what="the ShardSet's pods Ready")
    wait_for(lambda: local_cluster.get("configmap", f"{NAME}-ca", ns), timeout=30, interval=0.5,
             what=f"ConfigMap {NAME}-ca")
    yield ns


def test_certificate_renewed_under_load_without_a_failed_request(local_cluster: LocalCluster,
                                                                 shardset: str) -> None:
    ns = shardset
    ca = local_cluster.get("configmap", f"{NAME}-ca", ns)["data"]["ca.crt"]
    ctx = ssl.create_default_context(cadata=ca)
    ctx.check_hostname = False  # reached by IP; the chain is verified against the ShardSet's CA

    pods = shard_pods(local_cluster, ns)
    before = [identity(p) for p in pods]
    old_serial = secret_serial(local_cluster, ns)
    wait_for(lambda: set(presented(pods, ctx).values()) == {old_serial}, timeout=30, interval=0.5,
             what="every server presents the current certificate")

    args = data_client_args(local_cluster, ns, NAME, [TABLE])
    client = Client.for_shardset(NAME, ns, kubeconfig=str(local_cluster.kubeconfig), timeout=10, **args)
    load = Load(client, [f"k{i:04d}" for i in range(KEYS)])
    try:
        load.preload()
        load.start()
        wait_for(lambda: load.writes >= 30 or not load.running, timeout=30, interval=0.1,
                 what="the load running")

        # The renewal: a tls.key that does not match tls.crt, which the operator re-issues at once (a watched
        # child changed) or on its next pass (at least every 30 s).
        local_cluster.kubectl("patch", "secret", f"{NAME}-tls", "-n", ns, "--type=merge",
                              "-p", json.dumps({"data": {"tls.key": unrelated_key()}}))
        new_serial = wait_for(lambda: (s := secret_serial(local_cluster, ns)) != old_serial and s, timeout=45,
                              interval=0.5, what=f"the operator re-issued Secret {NAME}-tls")
        seen = wait_for(lambda: (got := presented(pods, ctx)) and set(got.values()) == {new_serial} and got,
                        timeout=45, interval=0.5, what="every server presents the new certificate")
        writes_at_renewal = load.writes
        assert load.running, "the load ended before every server presented the new certificate"
        wait_for(lambda: load.writes >= writes_at_renewal + 30 or not load.running, timeout=30, interval=0.1,
                 what="more load on the new certificate")
    finally:
        load.stop()

    try:
        assert load.failures == [], f"{len(load.failures)} failed requests around the renewal:\n" + "\n".join(
            load.failures[:30])
        print(f"renewal: serial {old_serial:x} -> {new_serial:x} on {len(seen)} servers; {load.writes} writes, "
              f"{load.reads} reads, {writes_at_renewal} writes when every server presented the new one")
        assert load.writes >= writes_at_renewal + 30 and load.reads >= 60, (load.writes, load.reads)
        assert client.batch_get(TABLE, load.keys) == load.acked  # every acknowledged write reads back
    finally:
        client.close()

    after = shard_pods(local_cluster, ns)
    assert [identity(p) for p in after] == before, "no pod was restarted or replaced"
    assert all(is_ready(p) for p in after)
    events = json.loads(local_cluster.kubectl("get", "events", "-n", ns, "--field-selector",
                                              "reason=CertificateRenewed", "-o", "json").stdout)["items"]
    assert any("its key does not match" in e.get("message", "") for e in events), [e.get("message") for e in events]
