"""ShadowPolicy and Reversion end to end on the local cluster: a real operator process, a ShardSet whose pod runs
node, cache, predictor and shadow processes, and an application writing through the cache with a ServiceAccount
token over TLS.

While it writes, the shard's shadow and node processes are killed with SIGKILL and the operator is killed and
started again. Afterwards every acknowledged write is in the shadow's history at its LSN, the state of the table
at sampled LSNs equals the reference built from the writer's own log, the ShadowPolicy reports the capture, and a
Reversion of the table to a time T, approved with its digest as kubectl would, puts every key back as it was at T.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import signal
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from chronoshard.shardnode.client import Client, Endpoint
from chronoshard.shardnode.client.discovery import pod_dns_name
from chronoshard.shardnode.client.errors import NotFound
from chronoshard.shardnode.keyspace.partitioning import PartitionMap

from tests.e2e.conftest import (
    LocalCluster,
    Operator,
    data_client_args,
    http_get,
    is_ready,
    pod_tls,
    shadowed_shardset,
)
from tests.support.shadow_reference import Op, WriterLog
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

NS = "shadow-e2e"
NAME = "ledger"
TABLE = "orders"
KEYS = [f"order-{i:03}" for i in range(30)]
NODE_PORT, SHADOW_PORT = 7400, 7403


@dataclass
class Env:
    cluster: LocalCluster
    operator: Operator

    def pod(self) -> dict[str, Any]:
        pods = self.cluster.pods(NS, f"app.kubernetes.io/instance={NAME}")
        assert len(pods) == 1
        return pods[0]

    def url(self, port: int) -> str:
        return f"https://{self.pod()['status']['podIP']}:{port}"

    def admin(self, method: str, port: int, path: str, body: Any = None) -> tuple[int, Any]:
        """A call with the pod's own identity (the shadow's and node's administrative routes)."""
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url(port) + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10, context=pod_tls(self.cluster, NS, NAME)) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def restarts(self, container: str) -> int:
        statuses = self.pod()["status"].get("containerStatuses") or []
        return next((c["restartCount"] for c in statuses if c["name"] == container), 0)

    def container_pids(self, container: str) -> list[int]:
        """PIDs of a container's process (the children of the agent's shim for it)."""
        status = next(c for c in self.pod()["status"]["containerStatuses"] if c["name"] == container)
        shim = int(status["containerID"].split("://")[1])
        return [int(p) for p in Path(f"/proc/{shim}/task/{shim}/children").read_text().split()]

    def kill(self, container: str) -> None:
        before = self.restarts(container)
        for pid in self.container_pids(container):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: self.restarts(container) > before and is_ready(self.pod()), timeout=90, interval=0.3,
                 what=f"the {container} container restarted and the pod ready")


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with shadowed_shardset("chronoshard-shadow-e2e-", NS, NAME, f"{NAME}-shadow",
                           {"tables": [TABLE], "snapshot": {"interval": "30s"}}) as shadowed:
        yield Env(shadowed.cluster, shadowed.operator)


class Writer(threading.Thread):
    """One sequential application writer through the cache (puts only: the client acknowledges them with their
    LSN); across a node kill it learns from the node's change log whether the write in flight committed."""

    def __init__(self, env: Env, client: Client, log: WriterLog, seed: int) -> None:
        super().__init__(daemon=True)
        self.env, self.client, self.log = env, client, log
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.failures = 0
        self.deadline = time.monotonic() + 600  # bounded even if a test forgets to stop it

    def run(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            key = self.rng.choice(KEYS)
            value = os.urandom(self.rng.randint(1, 200))
            sent = time.time()
            try:
                ack = self.client.put(TABLE, key, value)
            except Exception:
                self.failures += 1
                self._recover(key, value, sent)
                continue
            self._record(Op(int(ack["lsn"]), key, "put", value, sent, time.time()))

    def _recover(self, key: str, value: bytes, sent: float) -> None:
        after = self.log.last_lsn()
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            try:
                status, page = self.env.admin("GET", NODE_PORT, f"/v1/changes?after={after}&limit=10")
            except OSError:
                status = 0
            if status == 200:
                for change in page["changes"]:
                    assert change["key"] == key, "only the write in flight can follow the last acknowledged one"
                    self._record(Op(change["lsn"], key, change["op"], value, sent, time.time()))
                return
            time.sleep(0.2)

    def _record(self, op: Op) -> None:
        with self.log.lock:
            assert not self.log.ops or op.lsn > self.log.ops[-1].lsn
            self.log.ops.append(op)


def _client(env: Env) -> Client:
    cm = env.cluster.get("configmap", f"{NAME}-partitions", NS)
    pmap = PartitionMap.from_json(cm["data"]["map.json"])
    ip = env.pod()["status"]["podIP"]
    return Client(pmap, [Endpoint(f"{ip}:7401", "https", pod_dns_name(NAME, 0, NS))], timeout=10,
                  **data_client_args(env.cluster, NS, NAME, [TABLE]))


def _caught_up(env: Env) -> bool:
    last = env.admin("GET", NODE_PORT, "/v1/changes?after=0&limit=1")[1]["lastLsn"]
    capture = env.admin("GET", SHADOW_PORT, "/v1/status")[1]["capture"]
    return capture.get("state") == "running" and capture.get("cursor", 0) >= last


def _history(env: Env, key: str) -> dict[tuple[int, str], dict[str, Any]]:
    out: dict[tuple[int, str], dict[str, Any]] = {}
    after = 0
    while True:
        status, page = env.admin("GET", SHADOW_PORT, f"/v1/tables/{TABLE}/history/{key}?after={after}&limit=50")
        assert status == 200, page
        out.update({(v["lsn"], v["op"]): v for v in page["versions"]})
        if page["next"] is None:
            return out
        after = page["next"]


def _state(env: Env, lsn: int) -> tuple[dict[str, bytes], dict[str, Any]]:
    state: dict[str, bytes] = {}
    query = {"lsn": lsn, "values": "true", "limit": 100}
    first: dict[str, Any] | None = None
    while True:
        status, page = env.admin("GET", SHADOW_PORT, f"/v1/tables/{TABLE}/state?{urllib.parse.urlencode(query)}")
        assert status == 200, page
        first = first or page
        state.update({e["key"]: base64.b64decode(e["value"]) for e in page["entries"]})
        if page["next"] is None:
            return state, first
        query["after"] = page["next"]


def _reversion(env: Env) -> dict[str, Any]:
    return env.cluster.get("reversion", "before", NS) or {}


def test_kills_lose_no_history_and_an_approved_reversion_restores_the_table(env: Env) -> None:
    client = _client(env)
    log = WriterLog()
    writer = Writer(env, client, log, seed=2026)
    writer.start()
    try:
        for round_ in range(2):
            wait_for(lambda r=round_: len(log.ops) >= 80 * (r + 1), timeout=120, what="writes before the kills")
            env.kill("shadow")
            env.kill("node")
            env.operator.kill()
            env.operator.start()
        wait_for(lambda: len(log.ops) >= 220, timeout=120, what="writes after the kills")
        # A quiet second T: nothing is in flight from a whole second before it to a whole second after it.
        writer.stop.set()
        writer.join(30)
        point = math.ceil(time.time()) + 1
        wait_for(lambda: time.time() >= point + 1, timeout=5, interval=0.1, what="the second after T")
        at_t = log.ops[-1].lsn
        writer = Writer(env, client, log, seed=2027)
        writer.start()
        wait_for(lambda: len(log.ops) >= 300, timeout=120, what="writes after T")
    finally:
        writer.stop.set()
        writer.join(30)
    wait_for(lambda: _caught_up(env), timeout=120, interval=0.5, what="the shadow to catch up with the node")

    # Every acknowledged write is in the history at its LSN, with its value; the state at sampled LSNs is the
    # reference's.
    for key in KEYS:
        versions = _history(env, key)
        for op in (o for o in log.ops if o.key == key):
            v = versions.get((op.lsn, op.op))
            assert v is not None, f"{key}: acknowledged {op.op} at LSN {op.lsn} is not in the history"
            assert base64.b64decode(v["value"]) == op.value
    rng = random.Random(7)
    lsns = [o.lsn for o in log.ops]
    for lsn in sorted(rng.sample(lsns, 6)) + [at_t, lsns[-1]]:
        state, page = _state(env, lsn)
        assert page["lsn"] == lsn
        assert state == log.state_at(lsn), f"state at LSN {lsn}"

    # The ShadowPolicy reports the capture of the one shard.
    def reported() -> dict[str, Any] | None:
        st = (env.cluster.get("shadowpolicy", f"{NAME}-shadow", NS) or {}).get("status") or {}
        return st if st.get("phase") == "Active" else None

    status = wait_for(reported, timeout=120, interval=1, what="the ShadowPolicy's status Active")
    assert status.get("observedGeneration") == 1

    # A Reversion of the table to T, approved with its digest as `kubectl chronoshard approve` does.
    when = datetime.fromtimestamp(point, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    env.cluster.apply({"apiVersion": "chronoshard.io/v1alpha1", "kind": "Reversion",
                       "metadata": {"name": "before", "namespace": NS},
                       "spec": {"shardSetRef": {"name": NAME}, "tables": [TABLE], "pointInTime": when}})
    planned = wait_for(lambda: (_reversion(env).get("status") or {}).get("digest"), timeout=120, interval=0.5,
                       what="the Reversion's plan and digest")
    assert (_reversion(env)["status"]["phase"]) == "AwaitingApproval"
    env.cluster.kubectl("patch", "reversion", "before", "-n", NS, "--type=merge",
                        "-p", json.dumps({"spec": {"approve": planned}}))
    done = wait_for(lambda: (lambda st: st if st.get("phase") == "Completed" else None)(
        _reversion(env).get("status") or {}), timeout=180, interval=0.5, what="the Reversion to complete")
    assert done["approvedDigest"] == planned
    reference = log.state_at(at_t)
    changed = {k for k, v in log.state_at(lsns[-1]).items() if reference.get(k) != v}
    assert changed and done["plan"]["keys"] == len(changed)  # the writes after T are what the plan puts back
    for key in KEYS:
        if key in reference:
            assert client.get(TABLE, key) == reference[key], key
        else:
            with pytest.raises(NotFound):  # created after T: the reversion deleted it
                client.get(TABLE, key)
    client.close()
    assert http_get(env.url(SHADOW_PORT) + "/healthz", context=pod_tls(env.cluster, NS, NAME))[0] == 200
