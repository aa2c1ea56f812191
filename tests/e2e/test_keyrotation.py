"""KeyRotation end to end on the local cluster: real shard pods (node + cache processes), a real operator process.

A client keeps writing and reading blocks through the shards' caches while scheduled, manual and compromise
rotations run; afterwards no read failed, every acknowledged write reads back, every block is on the newest
key version and the old versions are gone from the Secret and from every process. The operator is restarted
in every phase of one rotation, a node is killed mid-rewrap, and a frozen shard makes a rotation wait.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chronoshard.shardnode.client import Client, Endpoint
from chronoshard.shardnode.client.discovery import pod_dns_name
from chronoshard.shardnode.keyspace.partitioning import PartitionMap

from tests.e2e.conftest import (
    LocalCluster,
    Operator,
    data_client_args,
    down,
    http_get,
    is_ready,
    pod_tls,
    start_cluster,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

SHARDS = 3
TABLE = "default"
PRELOAD = 1500


@dataclass
class Env:
    cluster: LocalCluster
    operator: Operator
    namespace: str
    pods: list[dict[str, Any]] = field(default_factory=list)

    def kr(self, name: str) -> dict[str, Any] | None:
        return self.cluster.get("keyrotation", name, self.namespace)

    def secret_versions(self) -> list[int]:
        sec = self.cluster.get("secret", "vault-keyring", self.namespace)
        doc = json.loads(base64.b64decode(sec["data"]["keyring.json"]))
        return sorted(v["id"] for v in doc["versions"])

    @property
    def tls(self) -> ssl.SSLContext:
        """The pods' own identity, for their administrative endpoints."""
        return pod_tls(self.cluster, self.namespace, "vault")

    def refresh_pods(self) -> list[dict[str, Any]]:
        self.pods = sorted(self.cluster.pods(self.namespace, "app.kubernetes.io/instance=vault"),
                           key=lambda p: p["metadata"]["name"])
        return self.pods

    def keys_report(self, shard: int, port: int) -> dict[str, Any] | None:
        ip = self.refresh_pods()[shard]["status"].get("podIP")
        code, body = http_get(f"https://{ip}:{port}/v1/keys", context=self.tls)
        return json.loads(body) if code == 200 else None


class Workload:
    """A bounded client loop: writes new versions of keys, reads them back, counts every failure."""

    def __init__(self, client: Client, keys: list[str]) -> None:
        self.client = client
        self.keys = keys
        self.acked: dict[str, bytes] = {}
        self.maybe: dict[str, set[bytes]] = {}
        self.failed_reads: list[str] = []
        self.failed_writes = 0
        self.reads = 0
        self.writes = 0
        self.fault_mark = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        rng = random.Random(7)
        deadline = time.monotonic() + 900  # bounded even if a test forgets to stop it
        while not self._stop.is_set() and time.monotonic() < deadline:
            key = rng.choice(self.keys)
            value = f"{key}:{rng.random()}".encode() * rng.randint(1, 40)
            try:
                self.client.put(TABLE, key, value)
                with self._lock:
                    self.acked[key] = value
                    self.maybe.pop(key, None)
                self.writes += 1
            except Exception:
                self.failed_writes += 1
                # A write that timed out may still have landed: until the next acknowledged write of this key,
                # reading its value is not an error.
                with self._lock:
                    self.maybe.setdefault(key, set()).add(value)
            probe = rng.choice(self.keys)
            with self._lock:
                expected = self.acked.get(probe)
            if expected is None:
                continue
            try:
                got = self.client.get(TABLE, probe)
                self.reads += 1
                with self._lock:
                    allowed = {expected, self.acked.get(probe), *self.maybe.get(probe, ())}
                if got not in allowed:
                    self.failed_reads.append(f"{probe}: stale or wrong value")
            except Exception as exc:
                self.failed_reads.append(f"{probe}: {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    state = Path(tempfile.mkdtemp(prefix="chronoshard-rot-e2e-"))
    cluster = start_cluster(state, "--no-operator")
    operator = Operator(cluster.kubeconfig, state)
    operator.start()
    ns = "rotation"
    try:
        cluster.kubectl("create", "namespace", ns)
        cluster.apply({"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShardSet",
                       "metadata": {"name": "vault", "namespace": ns},
                       "spec": {"shards": SHARDS, "cache": {"size": "8Mi"}}})
        e = Env(cluster, operator, ns)
        wait_for(
            lambda: len([p for p in e.refresh_pods() if is_ready(p)]) == SHARDS,
            timeout=180, interval=0.5, what="3 shard pods ready",
        )
        yield e
    finally:
        operator.stop()
        down(state)


@pytest.fixture(scope="module")
def workload(env: Env) -> Iterator[Workload]:
    cm = env.cluster.get("configmap", "vault-partitions", env.namespace)
    pmap = PartitionMap.from_json(cm["data"]["map.json"])
    ips = [p["status"]["podIP"] for p in env.refresh_pods()]
    eps = [Endpoint(f"{ip}:7401", "https", pod_dns_name("vault", i, env.namespace)) for i, ip in enumerate(ips)]
    client = Client(pmap, eps, timeout=10, **data_client_args(env.cluster, env.namespace, "vault", [TABLE]))
    keys = [f"k{i:05d}" for i in range(PRELOAD)]
    wl = Workload(client, keys)
    for k in keys:  # a preload so every shard has blocks to rewrap
        v = f"{k}:initial".encode() * 20
        client.put(TABLE, k, v)
        wl.acked[k] = v
    wl.start()
    yield wl
    wl.stop()
    client.close()


def rotation(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "chronoshard.io/v1alpha1", "kind": "KeyRotation",
            "metadata": {"name": name, "namespace": "rotation"},
            "spec": {"shardSetRef": {"name": "vault"}, "transitionPeriod": "0s", **spec}}


def wait_completed(env: Env, name: str, count: int, timeout: float = 240) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        kr = env.kr(name) or {}
        st = kr.get("status") or {}
        hist = st.get("history") or []
        return st if st.get("phase") == "Completed" and len(hist) >= count else None

    return wait_for(done, timeout=timeout, interval=0.5, what=f"KeyRotation {name} completed #{count}")


def assert_only_version(env: Env, version: int) -> None:
    assert env.secret_versions() == [version]
    # The ShardSet's default provider (embedded) keeps every rotated version wrapped under its KEK.
    secret = env.cluster.get("secret", "vault-keyring", env.namespace)
    assert set(secret["data"]) == {"keyring.json", f"v{version}.wrapped"}
    for shard in range(SHARDS):
        for port in (7400, 7401):
            rep = wait_for(
                lambda s=shard, p=port: (r := env.keys_report(s, p)) and
                    [v["id"] for v in r["versions"]] == [version] and r,
                timeout=60, interval=0.5, what=f"shard {shard}:{port} drops old versions",
            )
            assert rep["primary"] == version and rep["wrapped"] == [version] and rep["loadError"] is None
            if port == 7400:
                assert {int(k): n for k, n in rep["blocks"].items() if n} .keys() <= {version}


def test_manual_rotation_completes_under_load(env: Env, workload: Workload) -> None:
    env.cluster.apply(rotation("manual", trigger="first"))
    st = wait_completed(env, "manual", 1)
    h = st["history"][-1]
    assert (h["fromVersion"], h["toVersion"], h["reason"], h["outcome"]) == (1, 2, "manual", "Completed")
    # Keys the workload rewrote after the promotion were already on version 2 and needed no rewrap.
    assert PRELOAD // 2 < h["blocksRewrapped"] <= PRELOAD
    assert_only_version(env, 2)
    wait_for(
        lambda: (env.cluster.get("shardset", "vault", env.namespace)["status"].get("keyVersion") == 2),
        timeout=90, interval=0.5, what="ShardSet status shows version 2",
    )
    events = json.loads(env.cluster.kubectl("get", "events", "-n", env.namespace, "-o", "json",
                                            "--field-selector", "involvedObject.name=manual").stdout)["items"]
    started = [e for e in events if e["reason"] == "Distributing"]
    assert sum(e.get("count") or 1 for e in started) == 1, "the rotation was started twice"
    op = env.operator
    assert op.metric("chronoshard_keyrotation_rotations_total", reason="manual", outcome="Completed") == 1
    assert op.metric("chronoshard_keyrotation_blocks_rewrapped_total", shardset="vault") == h["blocksRewrapped"]
    assert op.metric("chronoshard_keyrotation_phase_duration_seconds_count", phase="Rewrapping") == 1
    wait_for(
        lambda: op.metric("chronoshard_shardset_key_version", shardset="vault") == 2,
        timeout=90, interval=0.5, what="key version gauge",
    )


def test_scheduled_rotation_uses_the_controllable_clock(env: Env, workload: Workload) -> None:
    env.cluster.apply(rotation("nightly", schedule="0 3 * * *"))
    # A pass that saw this generation wrote nextScheduleTime and decided on the clock as it is; every later
    # pass reads the same clock (only advance() moves it), so its decision is the one to check, no waiting.
    status = wait_for(
        lambda: (k := env.kr("nightly") or {}) and (s := k.get("status") or {}).get("nextScheduleTime")
        and s.get("observedGeneration") == k["metadata"]["generation"] and s,
        timeout=90, interval=0.5, what="nextScheduleTime from a pass over this generation",
    )
    st = status["nextScheduleTime"]
    assert st.endswith("T03:00:00Z")
    assert (status.get("history") or []) == [], "rotated before its time"
    env.operator.advance(24 * 3600)  # a day later, without sleeping
    done = wait_completed(env, "nightly", 1)
    assert done["history"][-1]["reason"] == "scheduled"
    assert done["lastScheduleTime"] == st
    assert_only_version(env, 3)
    # Stop the schedule: created just before 03:00 UTC, its next run is only minutes away on the advanced clock
    # and would rotate again under the later tests (which count versions).
    env.cluster.apply(rotation("nightly", schedule="0 3 * * *", suspend=True))


def keyrotation_changes(env: Env, name: str, deadline: float, start: Callable[[], None]
                        ) -> Iterator[dict[str, Any]]:
    """Call ``start``, then yield KeyRotation ``name`` at each change after it, as a watch delivers them, until
    ``deadline``. A poll (one kubectl call each) missed phases that last less than a call on a loaded machine."""
    from kubernetes import client, config, watch

    api = config.new_client_from_config(config_file=str(env.cluster.kubeconfig))
    crd = client.CustomObjectsApi(api)
    args = ("chronoshard.io", "v1alpha1", env.namespace, "keyrotations")
    selector = f"metadata.name={name}"
    try:
        version = crd.list_namespaced_custom_object(*args, field_selector=selector)["metadata"]["resourceVersion"]
        start()  # after the version read above: the watch from it misses no change start() causes
        while (left := deadline - time.monotonic()) > 0:
            for event in watch.Watch().stream(crd.list_namespaced_custom_object, *args, field_selector=selector,
                                              resource_version=version, timeout_seconds=max(1, int(left))):
                if event["type"] == "ERROR":
                    raise AssertionError(f"the KeyRotation watch ended: {event['object']}")
                version = event["object"]["metadata"]["resourceVersion"]
                yield event["object"]
    finally:
        api.close()


def test_operator_killed_in_every_phase_still_completes(env: Env, workload: Workload) -> None:
    seen: list[str] = []
    for kr in keyrotation_changes(env, "manual", time.monotonic() + 240,
                                  lambda: env.cluster.apply(rotation("manual", trigger="second"))):
        status = kr.get("status") or {}
        phase = status.get("phase")
        if phase and (not seen or seen[-1] != phase):
            seen.append(phase)
            if phase != "Completed":
                env.operator.kill()
                env.operator.start()
        if phase == "Completed" and len(status.get("history") or []) >= 2:
            break
    assert seen and seen[-1] == "Completed", seen
    assert env.operator.starts >= 4, f"operator restarted only in {seen}"
    assert_only_version(env, 4)


def test_compromise_rotation_never_writes_with_the_compromised_version(env: Env, workload: Workload) -> None:
    ips = [p["status"]["podIP"] for p in env.refresh_pods()]

    def last_lsn(ip: str) -> int:
        _, body = http_get(f"https://{ip}:7400/v1/changes?after=0&limit=1", context=env.tls)
        return int(json.loads(body)["lastLsn"])

    env.cluster.apply(rotation("breach", threat={"reason": "compromise", "compromisedVersion": 4,
                                                 "description": "key file found in a backup"},
                               transitionPeriod="24h"))
    # The moment each node has loaded the keyring that marks version 4 compromised, note its log position:
    # from there on it must never write with version 4 (it holds writes until version 5 is primary).
    marked_at: dict[int, int] = {}
    deadline = time.monotonic() + 120
    while len(marked_at) < SHARDS and time.monotonic() < deadline:
        for s, ip in enumerate(ips):
            if s not in marked_at:
                code, body = http_get(f"https://{ip}:7400/v1/keys", context=env.tls)
                if code == 200 and 4 in json.loads(body).get("compromised", []):
                    marked_at[s] = last_lsn(ip)
        time.sleep(0.05)
    assert len(marked_at) == SHARDS, f"nodes never reported version 4 as compromised: {marked_at}"
    st = wait_completed(env, "breach", 1)
    h = st["history"][-1]
    assert (h["fromVersion"], h["toVersion"], h["reason"]) == (4, 5, "compromise")
    # The 24h transition period is skipped for a compromise.
    assert h["durationSeconds"] < 600
    assert_only_version(env, 5)
    writes_after_mark = 0
    for s, ip in enumerate(ips):
        after = marked_at[s]
        for _ in range(1000):
            _, body = http_get(f"https://{ip}:7400/v1/changes?after={after}&limit=500", context=env.tls)
            page = json.loads(body)
            for c in page["changes"]:
                if c["op"] == "put" and c["lsn"] > marked_at[s]:
                    writes_after_mark += 1
                    assert c["keyVersion"] != 4, f"shard {s} wrote with the compromised version: {c}"
            if not page["changes"]:
                break
            after = page["next"]
    assert writes_after_mark > 0, "the workload wrote nothing during the compromise rotation"


def test_rotations_under_load_failed_no_read_and_lost_no_write(env: Env, workload: Workload) -> None:
    # Checkpoint after the manual, scheduled, operator-restart and compromise rotations: not one read failed.
    # (The fault tests below stop a node on purpose; reads of that shard's uncached blocks fail while it is
    # down, which no rotation could prevent, so they are checked separately.)
    assert workload.writes > 100 and workload.reads > 100, (workload.writes, workload.reads)
    assert workload.failed_reads == [], workload.failed_reads[:5]
    with workload._lock:
        acked = dict(workload.acked)
    for key, value in acked.items():
        got = workload.client.get(TABLE, key)
        assert got == value or got == workload.acked.get(key) or got in workload.maybe.get(key, ()), key
    workload.fault_mark = len(workload.failed_reads)


def test_frozen_shard_makes_the_rotation_wait_and_it_never_retires_the_key(env: Env, workload: Workload) -> None:
    children = node_pids(env, 2)
    assert children, "node process not found under its shim"
    for pid in children:
        os.kill(pid, signal.SIGSTOP)
    try:
        env.cluster.apply(rotation("manual", trigger="third"))

        def waiting() -> dict[str, Any] | None:
            st = (env.kr("manual") or {}).get("status") or {}
            cond = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), {})
            return cond if "shard 2 node" in cond.get("message", "") else None

        cond = wait_for(waiting, timeout=60, interval=0.5, what="rotation waiting for shard 2")
        assert cond["status"] == "False"
        assert 5 in env.secret_versions(), "old key retired while a shard was down"
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    wait_completed(env, "manual", 3)
    assert_only_version(env, 6)


def node_pids(env: Env, shard: int) -> list[int]:
    """PIDs of shard ``shard``'s node process (the child of the agent's shim for that container)."""
    pod = env.refresh_pods()[shard]
    status = next(c for c in pod["status"]["containerStatuses"] if c["name"] == "node")
    shim = int(status["containerID"].split("://")[1])
    return [int(p) for p in Path(f"/proc/{shim}/task/{shim}/children").read_text().split()]


def test_node_killed_mid_rewrap_still_completes(env: Env, workload: Workload) -> None:
    # Enough extra blocks that a background-priority rewrap takes seconds, so the kill lands mid-way.
    extra = [f"bulk{i:06d}" for i in range(12000)]
    # Sixteen writers at once (the client is thread-safe): one at a time, the preload alone took two minutes.
    with ThreadPoolExecutor(16) as pool:
        for _ in pool.map(lambda k: workload.client.put(TABLE, k, k.encode()), extra):
            pass
    restarts_before = next(c for c in env.refresh_pods()[1]["status"]["containerStatuses"]
                           if c["name"] == "node")["restartCount"]
    env.cluster.apply(rotation("manual", trigger="fourth"))
    ip = env.refresh_pods()[1]["status"]["podIP"]

    def rewrapping() -> bool:
        code, body = http_get(f"https://{ip}:7400/v1/rewrap", context=env.tls)
        return code == 200 and json.loads(body)["state"] == "running" and json.loads(body)["rewrapped"] > 0

    wait_for(rewrapping, timeout=120, interval=0.05, what="shard 1 rewrapping")
    for pid in node_pids(env, 1):
        os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: next(
            c for c in env.refresh_pods()[1]["status"]["containerStatuses"] if c["name"] == "node"
            )["restartCount"] > restarts_before,
        timeout=60, interval=0.5, what="node restarted",
    )
    st = wait_completed(env, "manual", 4, timeout=300)
    assert st["history"][-1]["toVersion"] == 7
    assert_only_version(env, 7)
    for k in extra[::997]:
        assert workload.client.get(TABLE, k) == k.encode()


def test_no_lost_writes_and_only_outage_reads_failed(env: Env, workload: Workload) -> None:
    workload.stop()
    during_faults = workload.failed_reads[workload.fault_mark:]
    # Only reads that needed the stopped node failed, and they said why (503 node unreachable), never wrong data.
    assert all("Unavailable" in f and "503" in f for f in during_faults), during_faults[:5]
    for key, value in workload.acked.items():
        got = workload.client.get(TABLE, key)
        assert got == value or got in workload.maybe.get(key, ()), key
    for shard in range(SHARDS):
        rep = env.keys_report(shard, 7400)
        assert {int(k) for k, n in rep["blocks"].items() if n} == {7}


def test_unknown_shardset_waits_with_a_condition(env: Env) -> None:
    obj = rotation("orphan", trigger="x")
    obj["spec"]["shardSetRef"] = {"name": "does-not-exist"}
    env.cluster.apply(obj)

    def cond() -> dict[str, Any] | None:
        st = (env.kr("orphan") or {}).get("status") or {}
        c = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), None)
        return c if c and c["reason"] == "TargetMissing" else None

    c = wait_for(cond, timeout=60, interval=0.5, what="TargetMissing condition")
    assert "does-not-exist" in c["message"]
