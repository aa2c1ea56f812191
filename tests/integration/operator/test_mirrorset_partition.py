"""A network cut of the primary (split brain) against the real MirrorSet controller, the real API server and real
`chronoshard-node` processes, with the harness of ``test_mirrorset_controller.py``.

The primary node reaches the API server through one proxy (its kubeconfig names the proxy), and everything else
reaches the primary through another (its Pod object carries the proxy's IP: the mirror streams from it, the
operator probes and tells it its role through it), while a client writes straight to the node's own address: the
side of the cut that can still reach it. Cutting both proxies is the partition; the documented outcome is checked:
the primary stops acknowledging writes (sync mode: no mirror ack) and then refuses them by itself (`lease_lost`)
because it cannot renew its Lease, the operator waits for the Lease to expire, takes it over and promotes the
mirror, no acknowledged write is lost, and once the cut heals the old primary rewinds what it took during the cut
and follows the new primary with the same digest."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from chronoshard.operator.podcontract import NODE_PORT
from kubernetes import client

from tests.integration.operator.test_mirrorset_controller import TABLE, Cluster, _ip, _node, api, role, value, writable
from tests.integration.shardnode.procs import http, http_json
from tests.support.histories import Write, check, seq_of, value_of
from tests.support.tcpproxy import TcpProxy
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.without_operator]

__all__ = ["api"]  # the fixture, imported for this module's tests

KEYS = [f"k{i}" for i in range(4)]
SPEC = {"replication": {"mode": "sync", "syncTimeout": "2s"},
        "health": {"probeInterval": "1s", "failureThreshold": 2, "latencyThresholdMs": 5000},
        "failover": {"policy": "automatic", "leaseDuration": "6s", "switchoverTimeout": "30s"}}


class Writer(threading.Thread):
    """One client writing the keys in turn, sequentially (one writer per key), straight to one node's address;
    every attempt is recorded with its outcome and, when refused, the node's error code."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.writes: list[Write] = []
        self.errors: list[tuple[float, str]] = []  # (start, code) of every attempt not acknowledged
        self.stopped = threading.Event()

    def run(self) -> None:
        seq = 0
        while not self.stopped.is_set():
            seq += 1
            for key in KEYS:
                self._write(key, seq)

    def _write(self, key: str, seq: int) -> None:
        start = time.monotonic()
        try:
            status, raw = http("PUT", f"{self.url}/v1/tables/{TABLE}/blocks/{key}", value_of(key, seq), timeout=15)
            body = json.loads(raw or b"{}")
        except OSError as exc:  # no answer: unknown
            status, body = 0, {"error": type(exc).__name__}
        end = time.monotonic()
        if status == 200:
            self.writes.append(Write(key, seq, start, end, "ok", body.get("lsn")))
        else:
            self.writes.append(Write(key, seq, start, end, "unknown"))
            self.errors.append((start, str(body.get("error") or status)))
            self.stopped.wait(0.05)  # a client's pause before the next attempt, so a refusing node is not flooded

    def acknowledged(self) -> int:
        return sum(1 for w in self.writes if w.outcome == "ok")


def _proxied_kubeconfig(kubeconfig: Path, proxy: TcpProxy, to: Path) -> Path:
    """``kubeconfig`` with its server URL on the proxy (same host, so the API server's certificate still fits)."""
    doc = yaml.safe_load(kubeconfig.read_text())
    for entry in doc["clusters"]:
        entry["cluster"]["server"] = f"https://{proxy.host}:{proxy.port}"
    to.write_text(yaml.safe_dump(doc))
    to.chmod(0o600)
    return to


def _digest(url: str, at: int | None = None) -> dict[str, Any]:
    query = "" if at is None else f"?atLsn={at}&waitSeconds=30"
    status, body = http_json("GET", f"{url}/v1/digest{query}")
    assert status == 200, body
    return dict(body)


async def test_a_network_cut_primary_fences_itself_the_mirror_is_promoted_and_it_rejoins_after_the_heal(
        k8s_client, api, namespace, tmp_path, control_plane):
    kubeconfig = Path(control_plane.kubeconfig)
    c = Cluster(k8s_client, api, namespace, tmp_path, kubeconfig, SPEC)
    real_ip = c.ips["orders-a"]
    server = urlsplit(control_plane.server)
    apiserver = TcpProxy((str(server.hostname), int(server.port or 443))).start()
    while (proxy_ip := _ip()) in c.ips.values():
        pass
    node_proxy = TcpProxy((real_ip, NODE_PORT), proxy_ip, NODE_PORT).start()
    # The primary's node renews its Lease through the API-server proxy; its Pod shows the node proxy's IP.
    c.nodes["orders-a"] = _node(tmp_path, "orders-a", real_ip, tmp_path / "keyring",
                                _proxied_kubeconfig(kubeconfig, apiserver, tmp_path / "kubeconfig-a"))
    client.CoreV1Api(k8s_client).patch_namespaced_pod_status("orders-a-0", namespace, [  # JSON patch: replace the list
        {"op": "replace", "path": "/status/podIP", "value": proxy_ip},
        {"op": "replace", "path": "/status/podIPs", "value": [{"ip": proxy_ip}]}])
    direct = c.url("orders-a")  # the client's side of the cut
    writer = Writer(direct)
    try:
        c.start()
        await _run(c, writer, apiserver, node_proxy, proxy_ip, direct)
    finally:
        writer.stopped.set()
        writer.join(timeout=30)
        c.stop()
        apiserver.close()
        node_proxy.close()


async def _run(c: Cluster, writer: Writer, apiserver: TcpProxy, node_proxy: TcpProxy, proxy_ip: str,
               direct: str) -> None:
    first = await c.one_pass()
    assert first["term"] == 1
    b = role(c.url("orders-b"))
    assert (b["role"], b["source"]["url"]) == ("mirror", f"http://{proxy_ip}:{NODE_PORT}"), b  # through the proxy
    wait_for(lambda: writable(direct), what="the primary to acquire its Lease (through the API-server proxy)")
    await c.passes_until(lambda s: s["phase"] == "Replicating", "phase Replicating")

    writer.start()
    wait_for(lambda: writer.acknowledged() >= 20, 60, what="acknowledged writes before the cut")
    apiserver.cut()
    node_proxy.cut()
    cut_at = time.monotonic()

    done = await c.passes_until(lambda s: (s.get("lastOperation") or {}).get("outcome") is not None,
                                "the failover to finish", timeout=120)
    last = done["lastOperation"]
    assert (last["kind"], last["outcome"], last["term"]) == ("failover", "Succeeded", 2), last
    assert (done["term"], done["activeShardSet"]) == (2, f"{c.ns}/orders-b")
    for reason in ("FailoverStarted", "WaitingForLease", "Promoted", "FailedOver"):
        assert reason in c.reasons(), (reason, c.reasons())
    b = role(c.url("orders-b"))
    assert (b["role"], b["term"]) == ("primary", 2), b

    # The old primary, still answering the client, refuses by itself once its Lease could not be renewed.
    wait_for(lambda: any(code == "lease_lost" for _, code in writer.errors), 60,
             what="the cut-off primary to refuse writes with lease_lost")
    writer.stopped.set()
    writer.join(timeout=30)
    assert not writer.is_alive()
    after_cut = [w for w in writer.writes if w.start >= cut_at]
    assert after_cut and all(w.outcome == "unknown" for w in after_cut), after_cut  # no mirror ack: none acked
    first_refusal = min(start for start, code in writer.errors if code == "lease_lost")
    codes = {code for start, code in writer.errors if start >= cut_at}
    assert codes <= {"sync_timeout", "lease_lost"}, codes
    assert {code for start, code in writer.errors if start >= first_refusal} == {"lease_lost"}, writer.errors[-8:]
    a = role(direct)
    assert (a["role"], a["term"], a["writes"]["reason"]) == ("primary", 1, "lease_lost"), a

    # No acknowledged write is lost: the new primary holds each key's last acknowledged value or a later attempt.
    final = {k: seq_of(k, value(c.url("orders-b"), k)) for k in KEYS}
    report = check(writer.writes, [], final)
    assert report.ok and report.acknowledged >= 20, report.summary()

    # The cut heals: the operator reaches the old primary again and makes it follow; it rewinds what it took.
    apiserver.heal()
    node_proxy.heal()
    wait_for(lambda: writable(c.url("orders-b")), 60, what="the new primary to acquire its Lease")
    status, raw = http("PUT", f"{c.url('orders-b')}/v1/tables/{TABLE}/blocks/after", b"from b")
    assert status == 200, raw
    written = json.loads(raw)["lsn"]
    await c.passes_until(lambda s: _follows(direct, written), "the old primary to follow the new one", timeout=120)
    a = role(direct)
    assert (a["role"], a["term"], a["source"]["shardSet"]) == ("mirror", 2, f"{c.ns}/orders-b"), a
    assert value(direct, "after") == b"from b"
    # What it committed during the cut (answered sync_timeout: never acknowledged) was discarded by its rewind; a
    # write in flight at the cut may have reached the mirror before its ack was dropped, so it may be kept.
    timeouts = [start for start, code in writer.errors if code == "sync_timeout"]
    assert sum(1 for start in timeouts if start >= cut_at) <= len(a["discardedLsns"] or []) <= len(timeouts), (
        a["discardedLsns"], writer.errors[:4])
    assert {k: value(direct, k) for k in KEYS} == {k: value(c.url("orders-b"), k) for k in KEYS}
    primary = _digest(c.url("orders-b"))
    assert _digest(direct, primary["lsn"]) == primary


def _follows(url: str, lsn: int) -> bool:
    r = role(url)
    return r["role"] == "mirror" and r["term"] == 2 and r.get("state") == "streaming" and r["appliedLsn"] >= lsn
