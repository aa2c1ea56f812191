"""Resharding end to end on the local cluster (docs/resharding.md, #19): a 3-shard ShardSet with
``spec.partitioning.rebalance: true`` is scaled to 5 and back to 3 while writers (one per key, sequential, each
write's value naming its sequence number) and readers run at full speed through the Python client, which follows
the 421s of the cutovers. During the two rebalance Reshards, three processes are killed, one of each kind, each at
a move phase no earlier kill used, chosen from the Reshard's status as it runs: the operator (SIGKILL, restarted),
a move's source node and a later move's target node (SIGKILL; the node agent restarts them).

Afterwards: every acknowledged write is readable with its last value and no read was stale
(tests/support/histories.py), no client read failed, the map covers the keyspace once over 3 shards and every node
serves it, and every key is held by exactly its owner (each node scanned; the Reshards complete only after the
sources purged what they moved away, so nothing is left behind).

The rebalance Reshards get ``gracePeriod: 2s`` from the ShardSet's ``spec.partitioning.gracePeriod`` (the default
5 m would outlast the test). ``reshard_env``, ``App`` and ``Chaos`` are also used by
tests/bench/bench_reshard_faults.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import ssl
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import LocalCluster, Operator, data_client_args, down, is_ready, pod_tls, start_cluster
from tests.support.histories import Read, Write, check, seq_of, value_of
from tests.support.waiting import wait_for

NS, NAME, TABLE = "reshard-e2e", "orders", "orders"
WRITERS, READERS, PREFILL = 12, 4, 3000
MOVE_PHASES = ("Copying", "CatchingUp", "Verifying", "CuttingOver")
GRACE = "2s"
STEP_TIMEOUT = 100.0  # one rebalance Reshard, kills included


def shardset(shards: int, rebalance: bool = True) -> dict[str, Any]:
    return {"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShardSet", "metadata": {"name": NAME, "namespace": NS},
            "spec": {"shards": shards, "cache": {"size": "8Mi"},
                     "partitioning": {"rebalance": rebalance, "gracePeriod": GRACE}}}


@dataclass
class Env:
    cluster: LocalCluster
    operator: Operator
    client_args: dict[str, Any]
    _api: Any = None

    def pods(self) -> list[dict[str, Any]]:
        return self.cluster.pods(NS, f"app.kubernetes.io/instance={NAME}")

    def pod(self, shard: int) -> dict[str, Any] | None:
        return next((p for p in self.pods() if p["metadata"]["name"] == f"{NAME}-{shard}"), None)

    def node_pid(self, shard: int) -> int:
        """The node container's process (the child of the agent's shim for it)."""
        pod = self.pod(shard)
        assert pod is not None, f"no pod for shard {shard}"
        status = next(c for c in pod["status"]["containerStatuses"] if c["name"] == "node")
        shim = int(status["containerID"].split("://")[1])
        (pid,) = [int(p) for p in Path(f"/proc/{shim}/task/{shim}/children").read_text().split()]
        return pid

    def reshards(self) -> list[dict[str, Any]]:
        # Through the API client, not kubectl: a kubectl process per look took longer than a move's later phases.
        from kubernetes import client, config

        if self._api is None:
            self._api = client.CustomObjectsApi(config.new_client_from_config(config_file=str(self.cluster.kubeconfig)))
        return list(self._api.list_namespaced_custom_object("chronoshard.io", "v1alpha1", NS, "reshards")["items"])

    def node(self, shard: int, path: str) -> Any:
        """GET ``path`` of shard ``shard``'s node with the pods' own identity."""
        pod = self.pod(shard)
        assert pod is not None
        url = f"https://{pod['status']['podIP']}:7400{path}"
        with urllib.request.urlopen(url, timeout=10, context=self.tls()) as resp:
            return json.loads(resp.read())

    def tls(self) -> ssl.SSLContext:
        return pod_tls(self.cluster, NS, NAME)


def ready_pods(env: Env, count: int) -> bool:
    pods = env.pods()
    return len(pods) == count and all(is_ready(p) for p in pods)


@contextmanager
def reshard_env(rebalance: bool = True) -> Iterator[Env]:
    """A local cluster with the operator and the 3-shard ShardSet ready (purged on exit unless CHRONOSHARD_KEEP_E2E)."""
    state = Path(tempfile.mkdtemp(prefix="chronoshard-reshard-e2e-"))
    cluster = start_cluster(state, "--no-operator")
    operator = Operator(cluster.kubeconfig, state)
    operator.start()
    try:
        cluster.kubectl("create", "namespace", NS)
        cluster.apply(shardset(3, rebalance))
        env = Env(cluster, operator, {})
        wait_for(lambda: ready_pods(env, 3), timeout=240, interval=0.5, what="3 shard pods ready")
        env.client_args = data_client_args(cluster, NS, NAME, [TABLE])
        yield env
    finally:
        operator.stop()
        down(state)


# ---- the application ---------------------------------------------------------------------------------
@dataclass
class History:
    writes: list[Write] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    failed_writes: list[str] = field(default_factory=list)
    failed_reads: list[str] = field(default_factory=list)
    acks: int = 0


class App(threading.Thread):
    """Prefills ``PREFILL`` blocks, then writers (one per key) and readers at full speed in their own event loop."""

    def __init__(self, env: Env, prefix: str = "w") -> None:
        super().__init__(daemon=True)
        self.env, self.history = env, History()
        self.keys = [f"{prefix}-{i}" for i in range(WRITERS)]
        self.prefill = [f"pre-{i}" for i in range(PREFILL)]
        self.stopping, self.prefilled = threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def client(self) -> Any:
        from chronoshard.shardnode.client.aio import AsyncClient

        return AsyncClient.for_shardset(NAME, NS, kubeconfig=str(self.env.cluster.kubeconfig), timeout=30,
                                        **self.env.client_args)

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    async def _main(self) -> None:
        async with self.client() as client:
            sem = asyncio.Semaphore(32)

            async def one(key: str) -> None:
                async with sem:
                    start = time.monotonic()
                    await client.put(TABLE, key, value_of(key, 1))
                    self.history.writes.append(Write(key, 1, start, time.monotonic(), "ok"))

            await asyncio.gather(*(one(k) for k in self.prefill))
            self.prefilled.set()
            await asyncio.gather(*(self._writer(client, k) for k in self.keys),
                                 *(self._reader(client, random.Random(i)) for i in range(READERS)))

    async def _writer(self, client: Any, key: str) -> None:
        from chronoshard.shardnode.client.errors import ChronoshardError

        h, seq = self.history, 0
        while not self.stopping.is_set():
            seq += 1
            start = time.monotonic()
            try:
                await client.put(TABLE, key, value_of(key, seq))
                h.writes.append(Write(key, seq, start, time.monotonic(), "ok"))
                h.acks += 1
            except (ChronoshardError, OSError) as exc:
                h.writes.append(Write(key, seq, start, time.monotonic(), "unknown"))
                h.failed_writes.append(f"{key}#{seq}: {exc!r}"[:300])
                await asyncio.sleep(0.2)

    async def _reader(self, client: Any, rnd: random.Random) -> None:
        from chronoshard.shardnode.client.errors import ChronoshardError, NotFound

        h = self.history
        while not self.stopping.is_set():
            key = rnd.choice(self.keys) if rnd.random() < 0.7 or not self.prefill else rnd.choice(self.prefill)
            start = time.monotonic()
            try:
                value: bytes | None = await client.get(TABLE, key)
            except NotFound:
                value = None
            except (ChronoshardError, OSError) as exc:
                h.failed_reads.append(f"{key}: {exc!r}"[:300])
                continue
            h.reads.append(Read(key, start, time.monotonic(), seq_of(key, value)))

    def stop(self) -> History:
        self.stopping.set()
        self.join(90)
        assert not self.is_alive(), "the application did not stop"
        if self.error is not None:
            raise AssertionError(f"the application failed: {self.error!r}") from self.error
        return self.history


def final_state(env: Env, keys: list[str]) -> dict[str, int | None]:
    from chronoshard.shardnode.client.errors import NotFound
    from chronoshard.shardnode.client.sync import Client

    out: dict[str, int | None] = {}
    with Client.for_shardset(NAME, NS, kubeconfig=str(env.cluster.kubeconfig), **env.client_args) as client:
        for key in keys:
            try:
                out[key] = seq_of(key, client.get(TABLE, key))
            except NotFound:
                out[key] = None
    return out


# ---- the kills ----------------------------------------------------------------------------------------
@dataclass
class Kill:
    """One planned kill: what (operator, source or target node), during which Reshard (its index among the run's
    Reshards), and, once done, where."""

    what: str
    reshard: int
    phases: tuple[str, ...] = MOVE_PHASES  # the move phases it may happen in
    phase: str | None = None
    step: int | None = None
    shard: int | None = None


class Chaos(threading.Thread):
    """Watches the Reshards' status and carries out ``plan`` in order: each kill at a move step's phase no earlier
    kill used (and a step of its own), as soon as the status shows one."""

    def __init__(self, env: Env, plan: list[Kill], reshard_names: list[str]) -> None:
        super().__init__(daemon=True)
        self.env, self.plan, self.names = env, plan, reshard_names
        self.stopping = threading.Event()
        self.log: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set() and any(k.phase is None for k in self.plan):
                self._tick()
                time.sleep(0.05)
        except BaseException as exc:
            self.error = exc

    def _tick(self) -> None:
        kill = next(k for k in self.plan if k.phase is None)
        # The Reshard running now, if the kill may happen in it (a kill not placed in its Reshard slips to the next).
        objs = self.env.reshards()
        running = [(i, r) for i, n in enumerate(self.names) if i >= kill.reshard
                   for r in objs if r["metadata"]["name"] == n and (r.get("status") or {}).get("phase") == "Running"]
        if not running:
            return
        at, obj = running[-1]
        st = obj["status"]
        used = {k.phase for k in self.plan if k.phase}
        steps = {(k.reshard, k.step) for k in self.plan if k.phase}
        row = next((r for r in st.get("steps") or [] if r.get("index") == st.get("currentStep")), None)
        if not row or row.get("type") != "move" or row.get("phase") not in kill.phases:
            return
        if row["phase"] in used or (at, row["index"]) in steps:
            return
        kill.reshard, kill.phase, kill.step = at, row["phase"], row["index"]
        if kill.what == "operator":
            self.env.operator.kill()
            time.sleep(1.0)
            self.env.operator.start()
        else:
            kill.shard = int(row["fromShard"] if kill.what == "source" else row["toShard"])
            os.kill(self.env.node_pid(kill.shard), signal.SIGKILL)
        self.log.append(f"killed the {kill.what}{'' if kill.shard is None else f' (shard {kill.shard})'} at step "
                        f"{kill.step} {kill.phase} of {self.names[kill.reshard]}")
        print(self.log[-1], flush=True)

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)
        if self.error is not None:
            raise AssertionError(f"the kills failed: {self.error!r}") from self.error


# ---- driving the scale --------------------------------------------------------------------------------
def scale(env: Env, shards: int, names: list[str]) -> str:
    """Set spec.shards; wait for the operator's new rebalance Reshard, append its name to ``names`` (the Chaos thread
    reads it) and return it."""
    before = {r["metadata"]["name"] for r in env.reshards()}
    env.cluster.kubectl("patch", "shardset", NAME, "-n", NS, "--type", "merge", "-p",
                        json.dumps({"spec": {"shards": shards}}))
    name = str(wait_for(lambda: next((r["metadata"]["name"] for r in env.reshards()
                                      if r["metadata"]["name"] not in before), None),
                        timeout=60, interval=0.2, what=f"the rebalance Reshard for {shards} shards"))
    names.append(name)
    return name


def finished(env: Env, name: str) -> dict[str, Any] | None:
    obj = env.cluster.get("reshard", name, NS) or {}
    st = obj.get("status") or {}
    if st.get("phase") in ("Failed", "RolledBack"):
        raise AssertionError(f"Reshard {name} {st.get('phase')}: {json.dumps(st)[:3000]}")
    return obj if st.get("phase") == "Completed" else None


def wait_done(env: Env, name: str, timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
    try:
        obj = wait_for(lambda: finished(env, name), timeout=timeout, interval=0.5, what=f"Reshard {name} Completed")
    except AssertionError:
        raise
    except Exception as exc:
        st = (env.cluster.get("reshard", name, NS) or {}).get("status")
        pods = [p["metadata"]["name"] for p in env.pods()]
        raise AssertionError(f"{exc}; pods {pods}; status {json.dumps(st)[:4000]}") from exc
    assert obj is not None
    return obj


def node_keys(env: Env, shard: int) -> list[str]:
    keys: list[str] = []
    after = None
    while True:
        q = "?limit=1000" + (f"&after={urllib.parse.quote(after, safe='')}" if after else "")
        doc = env.node(shard, f"/v1/tables/{TABLE}/blocks{q}")
        keys += [item["key"] for item in doc["items"]]
        after = doc.get("next")
        if not after:
            return keys


def check_layout(env: Env, shards: int, every_shard_owns: bool = True) -> Any:
    """The published map covers the keyspace once over ``shards`` shards (each owning some of it, if
    ``every_shard_owns``: after a rebalance), every node serves it, and every key is held by exactly its owner.
    Returns the map."""
    from chronoshard.shardnode.keyspace.partitioning import PartitionMap, keyspace_id

    cm = env.cluster.get("configmap", f"{NAME}-partitions", NS)
    assert cm is not None
    pmap = PartitionMap.from_json(cm["data"]["map.json"])
    parts = sorted(pmap.partitions, key=lambda p: p.start)
    assert pmap.shards == shards and parts[0].start == 0 and parts[-1].end == 2**64 - 1
    assert all(a.end + 1 == b.start for a, b in zip(parts, parts[1:], strict=False)), parts
    assert {p.shard for p in parts} <= set(range(shards)), parts
    assert not every_shard_owns or {p.shard for p in parts} == set(range(shards)), parts
    for shard in range(shards):
        served = PartitionMap.from_dict({k: v for k, v in env.node(shard, "/v1/partitions").items()
                                         if k != "loadError"})
        assert served == pmap, (shard, served, pmap)
    holders: dict[str, list[int]] = {}
    for shard in range(shards):
        for key in node_keys(env, shard):
            holders.setdefault(key, []).append(shard)
    wrong = {k: s for k, s in holders.items() if s != [pmap.owner_of(keyspace_id(TABLE, k)).shard]}
    assert not wrong, f"{len(wrong)} keys not held by exactly their owner, e.g. {list(wrong.items())[:5]}"
    return pmap


def run_scaling(env: Env, plan: list[Kill]) -> tuple[History, list[str], list[str], App]:
    """3 -> 5 -> 3 under the application and ``plan``; returns the history, the kill log, the Reshard names."""
    app = App(env)
    app.start()
    assert app.prefilled.wait(120), "prefill"
    wait_for(lambda: app.history.acks > 100, timeout=60, what="writes acknowledged before scaling")
    names: list[str] = []
    chaos = Chaos(env, plan, names)
    chaos.start()
    try:
        up = scale(env, 5, names)
        wait_done(env, up)
        wait_for(lambda: ready_pods(env, 5), timeout=60, interval=0.5, what="5 shard pods ready")
        acked = app.history.acks
        wait_for(lambda: app.history.acks > acked + 50, timeout=60, what="writes after the scale-up")
        down = scale(env, 3, names)
        wait_done(env, down)
        wait_for(lambda: ready_pods(env, 3), timeout=90, interval=0.5, what="the StatefulSet shrunk to 3 pods")
        acked = app.history.acks
        wait_for(lambda: app.history.acks > acked + 50, timeout=60, what="writes after the scale-down")
    finally:
        chaos.stop()
        history = app.stop()
    return history, chaos.log, names, app


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with reshard_env() as e:
        yield e


def test_scale_3_to_5_to_3_under_load_with_kills(env: Env) -> None:
    started = time.monotonic()
    plan = [Kill("operator", 0), Kill("source", 0), Kill("target", 1)]
    h, kills, names, app = run_scaling(env, plan)
    print("\n".join(kills))
    assert [k.phase is not None for k in plan] == [True] * 3, f"not every kill happened: {kills}"
    report = check(h.writes, h.reads, final_state(env, app.keys + app.prefill))
    assert report.ok, f"{report.summary()}; lost e.g. {report.lost[:3]}, stale e.g. {report.stale[:3]}"
    assert h.failed_reads == [], f"{len(h.failed_reads)} reads failed, e.g. {h.failed_reads[:5]}"
    check_layout(env, 3)
    moves = [row for n in names for row in (env.cluster.get("reshard", n, NS) or {})["status"]["steps"]
             if row.get("type") == "move"]
    paused = [row["pausedMs"] for row in moves if isinstance(row.get("pausedMs"), int | float)]
    print(f"{len(names)} Reshards, {len(moves)} moves, cutover pauses (ms) {paused}; {report.summary()}; "
          f"{len(h.failed_writes)} write calls failed (e.g. {h.failed_writes[:3]}); "
          f"{time.monotonic() - started:.0f} s")
