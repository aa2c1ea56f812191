"""Real `chronoshard-node`, `chronoshard-shadow` and `chronoshard-weaver` processes of one shard with security on
(TLS with the ShardSet's CA, the pods' certificate, reviews against the real API server): blocks written to two
partitions; the node counts each partition's reads and writes; the shadow snapshots every second; the weaver samples,
forecasts (a 1-byte size threshold: both partitions are over it), weaves full then differential points, and the
state of each half at a woven point equals the shadow's own state at that point's LSN, filtered to the half (keys,
LSNs, key versions and plaintext values). A restarted weaver has lost nothing; /v1/keys counts the woven rows per
key version; a rewrap to a version none of them has drops them all and a rewrap back rebuilds; a caller without
credentials is refused."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chronoshard.operator import certs
from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap, keyspace_id, parse_id
from kubernetes import client

from tests.integration.client.secure_shard import security_json
from tests.integration.shardnode.procs import BIN, free_port
from tests.support import rbac, tls_files
from tests.support.kubelet_dir import write_keyring
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

NS, NAME = "shop", "orders"
HALF, TOP = 1 << 63, (1 << 64) - 1
PMAP = PartitionMap(1, 1, (Partition(0, 0, HALF - 1, 0), Partition(1, HALF, TOP, 0)))
WEAVE = {"plan": f"{NS}/growth", "mode": "weave", "predictionWindowSeconds": 30, "confidenceThreshold": 0.75,
         "split": {"sizeBytes": 1, "loadRps": 1e9, "sustainedSeconds": 600}, "intervalSeconds": 1.5,
         "sampleIntervalSeconds": 0.25, "retention": {"maxSnapshots": 4, "maxAgeSeconds": 3600}}
SETTINGS = {"shadow": "shadow.json", "weaver": "weave.json"}
SHADOW = {"snapshot": {"intervalSeconds": 1, "granularity": "differential", "fullEvery": 5}}


@pytest.fixture(scope="module")
def kubeconfig(control_plane, k8s_client, tmp_path_factory) -> Iterator[Path]:
    core, rb = client.CoreV1Api(k8s_client), client.RbacAuthorizationV1Api(k8s_client)
    ns = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    deleg = rbac.delegator(control_plane, core, rb, ns, tmp_path_factory.mktemp("weave"))
    yield deleg.kubeconfig
    rb.delete_cluster_role_binding(deleg.binding)
    core.delete_namespace(ns)


def context(root: Path, pair: certs.KeyPair | None, ca: certs.KeyPair) -> ssl.SSLContext:
    """A client trusting ``ca``, presenting ``pair`` (None: no certificate)."""
    ctx = ssl.create_default_context(cadata=ca.cert.decode())
    if pair is not None:
        name = uuid.uuid4().hex[:8]
        (root / f"{name}.crt").write_bytes(pair.cert)
        (root / f"{name}.key").write_bytes(pair.key)
        ctx.load_cert_chain(root / f"{name}.crt", root / f"{name}.key")
    return ctx


def call(url: str, ctx: ssl.SSLContext, method: str = "GET", doc: Any = None, body: bytes | None = None,
         ) -> tuple[int, Any]:
    data = json.dumps(doc).encode() if doc is not None else body
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=20, context=ctx) as r:
            raw = r.read()
            return r.status, json.loads(raw) if r.headers.get_content_type() == "application/json" else raw
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


class Shard:
    """Node, shadow and weaver of shard 0 of ShardSet shop/orders, one data volume, one TLS directory."""

    def __init__(self, root: Path, kubeconfig: Path) -> None:
        self.root = root
        self.ca = certs.new_ca(NS, NAME, tls_files.now())
        pair = certs.issue_shard_certificate(self.ca, NS, NAME, 1, ["127.0.0.1"], tls_files.now())
        self.key_pem = pair.key
        tls_files.write_tls_dir(root / "tls", pair, self.ca)
        self.keyring = root / "keyring"
        write_keyring(self.keyring, 1, {1: ("primary", bytes([7]) * 32)})
        (root / "security.json").write_text(json.dumps(security_json(NS, NAME)))
        (root / "map.json").write_text(PMAP.to_json())
        (root / "shadow.json").write_text(json.dumps(SHADOW))
        (root / "weave.json").write_text(json.dumps(WEAVE))
        self.volume = root / "volume"
        self.volume.mkdir()
        self.env = dict(os.environ, KUBECONFIG=str(kubeconfig))
        self.env.pop("KUBERNETES_SERVICE_HOST", None)
        self.pod = context(root, certs.issue_shard_certificate(self.ca, NS, NAME, 1, [], tls_files.now()), self.ca)
        self.operator = context(root, certs.issue_operator_certificate(self.ca, tls_files.now()), self.ca)
        self.anonymous = context(root, None, self.ca)
        self.ports = {name: free_port() for name in ("node", "shadow", "weaver")}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def url(self, name: str) -> str:
        return f"https://127.0.0.1:{self.ports[name]}"

    def argv(self, name: str) -> list[str]:
        common = ["--host", "127.0.0.1", "--port", str(self.ports[name]), "--keyring-dir", str(self.keyring),
                  "--partition-map", str(self.root / "map.json"), "--shard-index", "0",
                  "--tls-dir", str(self.root / "tls"), "--security-config", str(self.root / "security.json")]
        if name == "node":
            return [str(BIN / "chronoshard-node"), *common, "--data-dir", str(self.volume / "node")]
        return [str(BIN / f"chronoshard-{name}"), *common, "--node-url", self.url("node"),
                "--data-dir", str(self.volume), "--settings", str(self.root / SETTINGS[name])]

    def start(self, name: str) -> None:
        with open(self.root / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(self.argv(name), stdout=log, stderr=subprocess.STDOUT, env=self.env)

        def ready() -> bool:
            assert self.procs[name].poll() is None, self.log(name)[-3000:]
            try:
                return call(self.url(name) + "/readyz", self.operator)[0] == 200
            except (OSError, urllib.error.URLError):
                return False

        wait_for(ready, what=f"{name} /readyz")

    def stop(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def weaver(self, path: str) -> Any:
        status, body = call(self.url("weaver") + path, self.pod)
        assert status == 200, (path, status, body, self.log("weaver")[-3000:])
        return body


class Ticker(threading.Thread):
    """Writes one key of table ``ticks`` every 0.2 s, so the shadow's snapshot boundaries keep passing."""

    def __init__(self, shard: Shard) -> None:
        super().__init__(daemon=True)
        self.shard, self.halt = shard, threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.wait(0.2):
            call(f"{self.shard.url('node')}/v1/tables/ticks/blocks/t{i % 5}", self.shard.pod, "PUT", body=b"tick")
            i += 1


def put(shard: Shard, table: str, key: str, value: bytes | None) -> None:
    method = "DELETE" if value is None else "PUT"
    status, body = call(f"{shard.url('node')}/v1/tables/{table}/blocks/{key}", shard.pod, method, body=value)
    assert status == 200, body


def half_state_from_shadow(shard: Shard, lsn: int, lo: int, hi: int) -> dict[tuple[str, str], tuple[int, bytes]]:
    """The shadow's own state at ``lsn`` of every table, the keys in keyspace range ``lo..hi``."""
    out: dict[tuple[str, str], tuple[int, bytes]] = {}
    for table in ("orders", "ticks"):
        status, body = call(f"{shard.url('shadow')}/v1/tables/{table}/state?lsn={lsn}&limit=1000&values=true",
                            shard.pod)
        assert status == 200 and body["next"] is None, body
        for e in body["entries"]:
            if lo <= keyspace_id(table, e["key"]) <= hi:
                out[(table, e["key"])] = (e["lsn"], base64.b64decode(e["value"]))
    return out


def woven_state(shard: Shard, point_id: int) -> dict[tuple[str, str], tuple[int, bytes]]:
    body = shard.weaver(f"/v1/woven/{point_id}/state?limit=1000&values=true")
    assert body["next"] is None
    return {(e["table"], e["key"]): (e["lsn"], base64.b64decode(e["value"])) for e in body["entries"]}


def points_of(shard: Shard, partition: int) -> list[dict[str, Any]]:
    return list(shard.weaver(f"/v1/woven?partition={partition}&confidenceThreshold=0.75")["woven"])


def root_kind(shard: Shard, point_id: int) -> str | None:
    """The kind of the first point of a woven point's chain (None if a retention pass moved it meanwhile)."""
    while True:
        status, p = call(f"{shard.url('weaver')}/v1/woven/{point_id}", shard.pod)
        if status != 200:
            return None
        if p["base"] is None:
            return str(p["kind"])
        point_id = p["base"]


def stored_points(shard: Shard) -> list[dict[str, Any]]:
    """Every point in weave.sqlite3, read with SQLite itself (the weaver is stopped), as the API names fields."""
    conn = sqlite3.connect(f"file:{shard.volume / 'weave.sqlite3'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT id, weave, half, point_time, lsn, kind, base, rows, bytes FROM woven").fetchall()
    finally:
        conn.close()
    assert rows
    names = ("id", "weave", "half", "pointTime", "lsn", "kind", "base", "rows", "bytes")
    return [dict(zip(names, r, strict=True)) for r in rows]


def check_halves_equal_the_shadow(shard: Shard, partition: int) -> int:
    """Every half's newest woven point equals the shadow's state at its LSN; returns the points' LSN."""
    newest = points_of(shard, partition)
    assert {p["half"] for p in newest} == {"lower", "upper"}
    assert len({p["lsn"] for p in newest}) == 1, "both halves are woven at the same point"
    for p in newest:
        lo, hi = (parse_id(x) for x in p["range"])
        want = half_state_from_shadow(shard, p["lsn"], lo, hi)
        assert want, "each half holds keys"
        assert woven_state(shard, p["id"]) == want
    return int(newest[0]["lsn"])


def test_the_weaver_weaves_the_halves_the_shadow_holds(kubeconfig, tmp_path):
    shard = Shard(tmp_path, kubeconfig)
    ticker = Ticker(shard)
    try:
        shard.start("node")
        shard.start("shadow")
        values = {f"k{i:03}": os.urandom(40 + i) for i in range(120)}
        for key, value in values.items():
            put(shard, "orders", key, value)
        for key in list(values)[:30]:  # reads, counted per partition too
            status, got = call(f"{shard.url('node')}/v1/tables/orders/blocks/{key}", shard.pod)
            assert status == 200 and got == values[key]
        # The node's counters: every write and read of this test, in the partition that holds the key.
        status, stats = call(f"{shard.url('node')}/v1/partitions/stats", shard.operator)
        assert status == 200 and stats["epoch"] == 1 and [p["id"] for p in stats["partitions"]] == [0, 1]
        owner = {k: PMAP.owner_of(keyspace_id("orders", k)).id for k in values}
        for p in stats["partitions"]:
            assert p["writes"] == sum(1 for k in values if owner[k] == p["id"])
            assert p["reads"] == sum(1 for k in list(values)[:30] if owner[k] == p["id"])
            assert p["blocks"] == sum(1 for k in values if owner[k] == p["id"])
            assert p["bytes"] == sum(len(v) for k, v in values.items() if owner[k] == p["id"])
        ticker.start()
        shard.start("weaver")
        # Sampled, forecast (over the 1-byte threshold: probability 1), and a full point of both halves.
        wait_for(lambda: len(points_of(shard, 0)) == 2, timeout=120, what="the first woven point of partition 0")
        status = shard.weaver("/v1/status")
        assert status["shadow"] is True and status["mode"] == "weave" and not status["errors"]
        forecasts = {p["id"]: p["forecast"] for p in status["partitions"]}
        assert forecasts[0]["probability"] == 1.0 and forecasts[0]["reason"] == "size"
        weave = next(w for w in status["weaves"] if w["partition"] == 0)
        assert parse_id(weave["lower"][0]) == 0 and parse_id(weave["upper"][1]) == HALF - 1
        # Each half's chain starts with a full point (a pass may have added a differential since the wait).
        wait_for(lambda: all(root_kind(shard, p["id"]) == "full" for p in points_of(shard, 0)),
                 what="each half's chain to start with a full point")
        first_lsn = check_halves_equal_the_shadow(shard, 0)

        # Changes and deletes: the next points are differentials, and still equal the shadow's state.
        for key in list(values)[:40]:
            put(shard, "orders", key, None if key < "k010" else os.urandom(9))
        wait_for(lambda: all(p["kind"] == "differential" and p["lsn"] > first_lsn + 40
                             for p in points_of(shard, 0)), timeout=120, what="a differential point after the changes")
        check_halves_equal_the_shadow(shard, 0)

        # /v1/keys: every woven row is on key version 1.
        keys = shard.weaver("/v1/keys")
        assert keys["primary"] == 1 and set(keys["blocks"]) == {"1"} and keys["blocks"]["1"] > 0

        # A restart loses nothing: the same weaves and points, and weaving goes on.
        weaves_before = {w["id"] for w in shard.weaver("/v1/status")["weaves"]}
        shard.stop("weaver")
        before = stored_points(shard)
        shard.start("weaver")
        # The newest point of each half at the stop is served as it was (the restarted weaver may already have added
        # newer ones, and retention may have rewritten older ones).
        newest: dict[tuple[str, str], dict[str, Any]] = {}
        for p in sorted(before, key=lambda p: p["pointTime"]):
            newest[(p["weave"], p["half"])] = p
        assert len(newest) >= 4  # two weaves (partitions 0 and 1), two halves each
        for p in newest.values():
            assert {k: v for k, v in shard.weaver(f"/v1/woven/{p['id']}").items() if k in p} == p
        wait_for(lambda: shard.weaver("/v1/status")["passes"] >= 1, timeout=120, what="a pass after the restart")
        assert weaves_before <= {w["id"] for w in shard.weaver("/v1/status")["weaves"]}

        # A rewrap keeping a version no woven row is on drops them all; points that would hold older versions are
        # not woven again while that target stands. A rewrap back to version 1 rebuilds (a full point first).
        status, body = call(shard.url("weaver") + "/v1/rewrap", shard.operator, "POST", {"keep": 2})
        assert status == 202 and body["dropped"] > 0 and body["remaining"] == 0, body
        assert shard.weaver("/v1/keys")["blocks"] == {}
        assert shard.weaver("/v1/woven?confidenceThreshold=0")["woven"] == []
        status, body = call(shard.url("weaver") + "/v1/rewrap", shard.operator, "POST", {"keep": 1})
        assert status == 202 and body["target"] == 1
        wait_for(lambda: len(points_of(shard, 0)) == 2, timeout=120, what="the rebuilt points")
        assert {p["kind"] for p in points_of(shard, 0)} == {"full"}
        check_halves_equal_the_shadow(shard, 0)

        # The split happens (a new map: partition 0 cut at the weave's split key, the upper half is partition 2):
        # the weave is kept and extended, not dropped, and the new partitions are sampled.
        weave = next(w for w in shard.weaver("/v1/status")["weaves"] if w["partition"] == 0)
        at = parse_id(weave["splitKey"])
        split = PartitionMap(2, 1, (Partition(0, 0, at - 1, 0), Partition(2, at, HALF - 1, 0),
                                    Partition(1, HALF, TOP, 0)))
        (tmp_path / "map.next").write_text(split.to_json())
        (tmp_path / "map.next").replace(tmp_path / "map.json")
        newest = max(p["lsn"] for p in points_of(shard, 0))
        wait_for(lambda: {p["id"] for p in shard.weaver("/v1/status")["partitions"]} == {0, 1, 2},
                 timeout=60, what="the weaver to sample the split partitions")
        wait_for(lambda: any(p["weave"] == weave["id"] and p["lsn"] > newest
                             for p in shard.weaver("/v1/woven?confidenceThreshold=0")["woven"]),
                 timeout=120, what="a new point of the realized weave")
        assert weave["id"] in {w["id"] for w in shard.weaver("/v1/status")["weaves"]}

        # Without credentials: refused by the authentication layer.
        for path in ("/v1/status", "/v1/woven", "/v1/keys"):
            assert call(shard.url("weaver") + path, shard.anonymous)[0] == 401
        metrics = call(shard.url("weaver") + "/metrics", shard.operator)[1].decode()
        assert "chronoshard_weaver_woven_bytes" in metrics and "process_cpu_seconds_total" in metrics
        assert 'chronoshard_weaver_split_probability{partition="0"} 1.0' in metrics
    finally:
        ticker.halt.set()
        for name in ("weaver", "shadow", "node"):
            shard.stop(name)
    assert shard.key_pem.decode().splitlines()[1] not in shard.log("weaver")
