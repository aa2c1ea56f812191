"""Key rotation of a loaded ShardSet on the local cluster: total time, per-shard rewrap rate vs the raw rewrap
benchmark, and read latency during the rotation vs before it.

    python -m tests.bench.bench_rotation [--blocks 100000] [--block-size 4096] [--shards 3] [--keep]
                                         [--mode both|routine|threat]

Starts ``chronoshard-dev up --no-operator`` in a temp state dir and ``chronoshard-operator`` as a process, applies a
ShardSet, loads ``--blocks`` blocks through the async client straight to each shard's cache, then for each rotation
(routine: ``trigger``; threat: ``threat: {reason: compromise}``) reads random existing keys at fixed concurrency
for ``--before`` seconds, applies the KeyRotation and keeps reading until it is Completed. Per-shard rewrap rates
come from each node's ``GET /v1/rewrap`` (its own start/finish times and count); the baseline is the node's
in-process rewrap benchmark (``bench_node_write.rewrap_bench``) run in the same process, same block size.
Progress goes to stderr, the table to stdout. Everything is stopped afterwards (``down --purge`` unless --keep).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from chronoshard.shardnode.client import AsyncClient
from chronoshard.shardnode.client.credentials import Credentials
from chronoshard.shardnode.client.transport import Transport
from chronoshard.shardnode.keyspace.partitioning import PartitionMap

from tests.bench.bench_node_write import rewrap_bench
from tests.e2e.conftest import LocalCluster, Operator, data_client_args, dev, is_ready, operator_tls, start_cluster
from tests.support.waiting import wait_for

NS = "bench"
NAME = "rotbench"
TABLE = "bench"
PREFIX = 16  # bytes of each value that name its key, so a read can be checked without keeping the values
READERS = 8  # fixed read concurrency, before and during the rotation
POLL = 0.2  # seconds between KeyRotation status polls
REWRAP_POLL = 0.1  # seconds between GET /v1/rewrap polls of the nodes
ROTATION_LIMIT = 1800.0  # a rotation that takes longer than this is reported as timed out
LOAD_LIMIT = 1800.0
IDLE_PHASES = ("", "Pending", "Waiting", None)


def say(msg: str) -> None:
    """Progress to stderr with a timestamp."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values`` in milliseconds (nearest rank); NaN when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    return 1000 * s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


def key_of(i: int) -> str:
    return f"blk{i:08d}"


def value_of(key: str, size: int) -> bytes:
    """Random bytes whose first PREFIX bytes are the key, so readers verify what they get."""
    head = key.encode().ljust(PREFIX, b"\0")[:PREFIX]
    return head + os.urandom(max(0, size - PREFIX))


# ---- the cluster ----------------------------------------------------------------------------------


def ready_pods(cluster: LocalCluster, shards: int) -> list[dict[str, Any]]:
    """The ShardSet's pods sorted by name once all ``shards`` are Ready; waits up to 300 s."""
    def all_ready() -> list[dict[str, Any]] | None:
        pods = sorted(cluster.pods(NS, f"app.kubernetes.io/instance={NAME}"), key=lambda p: p["metadata"]["name"])
        return pods if len(pods) == shards and all(is_ready(p) for p in pods) else None

    return wait_for(all_ready, timeout=300, interval=1, what=f"{shards} shard pods Ready")


def rotation_object(name: str, threat: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"shardSetRef": {"name": NAME}, "transitionPeriod": "0s"}
    if threat:
        spec["threat"] = {"reason": "compromise", "description": "benchmark"}
    else:
        spec["trigger"] = "bench"
    return {"apiVersion": "chronoshard.io/v1alpha1", "kind": "KeyRotation",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


# ---- load and read --------------------------------------------------------------------------------


async def load(client: AsyncClient, blocks: int, size: int, concurrency: int) -> float:
    """PUT ``blocks`` blocks with ``concurrency`` writers; returns acknowledged blocks/s."""
    counter = iter(range(blocks))
    done = 0
    deadline = time.monotonic() + LOAD_LIMIT
    t0 = time.perf_counter()

    async def writer() -> None:
        nonlocal done
        for i in counter:
            if time.monotonic() > deadline:
                raise RuntimeError(f"load exceeded {LOAD_LIMIT:.0f} s after {done} blocks")
            k = key_of(i)
            await client.put(TABLE, k, value_of(k, size))
            done += 1
            if done % 10000 == 0:
                say(f"loaded {done}/{blocks} ({done / (time.perf_counter() - t0):.0f}/s)")

    await asyncio.gather(*(writer() for _ in range(concurrency)))
    return done / (time.perf_counter() - t0)


@dataclass
class Reader:
    """Fixed-concurrency reader of random existing keys; keeps (end time, latency) per read and every failure."""

    client: AsyncClient
    blocks: int
    size: int
    samples: list[tuple[float, float]] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)
    stopping: bool = False

    async def run(self, limit: float) -> None:
        deadline = time.monotonic() + limit  # bounded even if the caller never stops it

        async def one(seed: int) -> None:
            rng = random.Random(seed)
            while not self.stopping and time.monotonic() < deadline:
                k = key_of(rng.randrange(self.blocks))
                t0 = time.monotonic()
                try:
                    got = await self.client.get(TABLE, k)
                    ok = len(got) == self.size and got[:PREFIX] == k.encode().ljust(PREFIX, b"\0")[:PREFIX]
                    t1 = time.monotonic()
                    if ok:
                        self.samples.append((t1, t1 - t0))
                    else:
                        self.failures.append((t1, f"{k}: wrong value"))
                except Exception as exc:  # every failure is counted and reported, never hidden
                    self.failures.append((time.monotonic(), f"{k}: {type(exc).__name__}: {exc}"))

        await asyncio.gather(*(one(s) for s in range(READERS)))

    def window(self, start: float, end: float) -> dict[str, float]:
        lat = [d for t, d in self.samples if start <= t <= end]
        fails = sum(1 for t, _ in self.failures if start <= t <= end)
        span = max(1e-9, end - start)
        return {"reads": len(lat), "rps": len(lat) / span, "p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
                "failed": fails}


# ---- one rotation ---------------------------------------------------------------------------------


@dataclass
class RotationResult:
    kind: str
    phases: list[tuple[str, float]]  # (phase, monotonic time first seen)
    started: float
    completed: float | None
    history: dict[str, Any]
    rewrap: dict[int, dict[str, Any]]  # per shard: blocks, seconds, error (see shard_rewrap)
    before: dict[str, float]
    during: dict[str, float]
    rewrapping: dict[str, float]  # reads while the phase was Rewrapping only

    @property
    def total(self) -> float:
        return (self.completed or float("nan")) - self.started

    def phase_times(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for (ph, t), (_, t_next) in zip(self.phases, self.phases[1:], strict=False):
            out[ph] = out.get(ph, 0.0) + (t_next - t)
        return out


async def kr_status(cluster: LocalCluster, name: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        str(cluster.bin_dir / "kubectl"), f"--kubeconfig={cluster.kubeconfig}", "get", "keyrotation", name,
        "-n", NS, "-o", "json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    try:
        return json.loads(out).get("status") or {} if out.strip() else {}
    except ValueError:
        return {}


async def poll_rewrap(session: aiohttp.ClientSession, ips: list[str],
                      seen: dict[int, list[tuple[float, dict[str, Any]]]]) -> None:
    """One GET /v1/rewrap per node, appended with our wall-clock time to ``seen[shard]``."""
    async def one(shard: int, ip: str) -> None:
        try:
            async with session.get(f"https://{ip}:7400/v1/rewrap") as r:
                if r.status == 200:
                    seen.setdefault(shard, []).append((time.time(), await r.json()))
        except (aiohttp.ClientError, TimeoutError, ValueError):
            pass

    await asyncio.gather(*(one(s, ip) for s, ip in enumerate(ips)))


def shard_rewrap(seen: list[tuple[float, dict[str, Any]]], since: float, target: int | None) -> dict[str, Any] | None:
    """Blocks and seconds of the run that rewrapped a shard, from the node's own start/finish times.

    The controller POSTs /v1/rewrap on every pass while any shard still has old blocks, and a POST to a node
    whose run is done starts a fresh (empty) run that replaces the finished run's record within a second.
    When the finished state was never observed, the finish lies between the last poll that saw the run
    running and the next run's start (or the first poll with nothing remaining): the midpoint is used and
    half that bracket reported as the uncertainty.
    """
    runs: dict[float, list[tuple[float, dict[str, Any]]]] = {}
    for wall, st in seen:
        if st.get("started") and st["started"] >= since and st.get("target") == target:
            runs.setdefault(float(st["started"]), []).append((wall, st))
    if not runs:
        return None
    started = max(runs, key=lambda k: (max(st["rewrapped"] for _, st in runs[k]), -k))
    obs = runs[started]
    done = [st for _, st in obs if st["state"] == "done"]
    if done:
        return {"blocks": done[-1]["rewrapped"], "seconds": done[-1]["finished"] - started, "error": 0.0}
    blocks = max(st["rewrapped"] + (st.get("remaining") or 0) for _, st in obs)
    lo = max(wall for wall, _ in obs)
    later = [k for k in runs if k > started]
    later += [wall for wall, st in seen if wall > lo and st.get("remaining") == 0]
    hi = min(later) if later else time.time()
    return {"blocks": blocks, "seconds": (lo + hi) / 2 - started, "error": (hi - lo) / 2}


async def rotate(cluster: LocalCluster, client: AsyncClient, ips: list[str], blocks: int, size: int,
                 threat: bool, before_s: float) -> RotationResult:
    """Measure reads for ``before_s``, rotate, keep reading until Completed."""
    kind = "threat" if threat else "routine"
    name = f"bench-{kind}"
    reader = Reader(client, blocks, size)
    read_task = asyncio.create_task(reader.run(before_s + ROTATION_LIMIT + 60))
    t_read0 = time.monotonic()
    say(f"{kind}: reading for {before_s:.0f} s before the rotation")
    await asyncio.sleep(before_s)
    t_apply, wall_apply = time.monotonic(), time.time()
    await asyncio.to_thread(cluster.apply, rotation_object(name, threat))
    say(f"{kind}: KeyRotation {name} applied")
    phases: list[tuple[str, float]] = []
    seen: dict[int, list[tuple[float, dict[str, Any]]]] = {}
    started = completed = None
    history: dict[str, Any] = {}
    to_v: int | None = None
    admin = aiohttp.TCPConnector(ssl=operator_tls(cluster, NS, NAME))  # GET /v1/rewrap is an administrative route
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), connector=admin) as session:
        polling = True

        async def rewrap_poller() -> None:
            # Faster than the status loop (no kubectl process per poll): a node's finished state lasts < 1 s.
            while polling:
                await poll_rewrap(session, ips, seen)
                await asyncio.sleep(REWRAP_POLL)

        poller = asyncio.create_task(rewrap_poller())
        try:
            while time.monotonic() - t_apply < ROTATION_LIMIT:
                st = await kr_status(cluster, name)
                now = time.monotonic()
                phase = st.get("phase")
                to_v = st.get("toVersion", to_v)
                if phase not in IDLE_PHASES and (not phases or phases[-1][0] != phase):
                    phases.append((phase, now))
                    if started is None:
                        started = now
                    say(f"{kind}: phase {phase} at +{now - t_apply:.1f} s")
                if phase == "Completed" and started is not None and st.get("history"):
                    completed, history = now, st["history"][-1]
                    break
                await asyncio.sleep(POLL)
        finally:
            polling = False
            await poller
            reader.stopping = True
            await read_task
    if started is None:
        raise RuntimeError(f"{kind} rotation never left Pending within {ROTATION_LIMIT:.0f} s")
    if completed is None:
        say(f"{kind}: rotation NOT completed within {ROTATION_LIMIT:.0f} s; figures below are partial")
    # Only this rotation's runs: a node keeps the previous rotation's finished run until a new one starts.
    per_shard = {s: shard_rewrap(obs, wall_apply, to_v) for s, obs in seen.items()}
    best = {s: r for s, r in per_shard.items() if r}
    end = completed or time.monotonic()
    rw = [(t, nxt[1] if nxt else end) for (p, t), nxt in zip(phases, [*phases[1:], None], strict=True)
          if p == "Rewrapping"]
    rw_window = reader.window(rw[0][0], rw[-1][1]) if rw else reader.window(0, 0)
    return RotationResult(kind, phases, started, completed, history, best,
                          reader.window(t_read0, t_apply), reader.window(started, end), rw_window)


# ---- report ---------------------------------------------------------------------------------------


def report(args: argparse.Namespace, load_rate: float, baselines: dict[int, tuple[float, float]],
           results: list[RotationResult]) -> None:
    mb = args.block_size / 1e6
    print(f"\nKey rotation benchmark: {args.blocks} blocks x {args.block_size} B on {args.shards} shards, "
          f"{READERS} concurrent readers")
    print(f"load: {load_rate:.0f} blocks/s ({load_rate * mb:.1f} MB/s), async client, {args.concurrency} writers, "
          "routed to each shard's cache")
    for batch, (rate, raw) in sorted(baselines.items()):
        print(f"raw node rewrap (in-process store, {args.baseline_blocks} blocks, batches of {batch}, best of 3): "
              f"{rate:.0f} blocks/s ({rate * mb:.1f} MB/s); raw AESGCM decrypt+encrypt {raw:.0f} blocks/s")
    for r in results:
        batch = 2000 if r.kind == "threat" else 256
        base, raw = baselines[batch]
        print(f"\n== {r.kind} rotation (batches of {batch}"
              f"{', no pause' if r.kind == 'threat' else ', paced by each node by its client traffic'}) ==")
        print(f"key version {r.history.get('fromVersion')} -> {r.history.get('toVersion')}; "
              f"total (left Pending -> Completed): {r.total:.1f} s; history: "
              f"{r.history.get('blocksRewrapped')} blocks rewrapped, {r.history.get('durationSeconds')} s")
        print("time per phase (s): " + ", ".join(f"{p} {t:.1f}" for p, t in r.phase_times().items()))
        print(f"{'shard':>5} | {'rewrapped':>9} | {'node run s':>10} | {'blocks/s':>9} | {'MB/s':>6} | "
              f"{'vs store rewrap':>15} | {'vs raw AES':>10}")
        for s in sorted(r.rewrap):
            rw = r.rewrap[s]
            n, span = int(rw["blocks"]), float(rw["seconds"])
            rate = n / span if span > 0 else float("nan")
            note = f"  (finish from polls, +/-{rw['error']:.2f} s)" if rw["error"] else ""
            print(f"{s:>5} | {n:>9} | {span:>10.2f} | {rate:>9.0f} | {rate * mb:>6.1f} | {rate / base:>15.3f} | "
                  f"{rate / raw:>10.4f}{note}")
        b, d = r.before, r.during
        print(f"reads   before: {b['reads']:>7} ({b['rps']:.0f}/s) p50 {b['p50']:.2f} ms p99 {b['p99']:.2f} ms, "
              f"failed {b['failed']}")
        print(f"reads   during: {d['reads']:>7} ({d['rps']:.0f}/s) p50 {d['p50']:.2f} ms p99 {d['p99']:.2f} ms, "
              f"failed {d['failed']}")
        w = r.rewrapping
        print(f"reads in Rewrapping: {w['reads']:>7} ({w['rps']:.0f}/s) p50 {w['p50']:.2f} ms p99 {w['p99']:.2f} ms, "
              f"failed {w['failed']}; ratio to before p50 {w['p50'] / b['p50']:.2f}x p99 {w['p99'] / b['p99']:.2f}x")
        print(f"ratio during/before: p50 {d['p50'] / b['p50']:.2f}x  p99 {d['p99'] / b['p99']:.2f}x  "
              f"reads/s {d['rps'] / b['rps']:.2f}x")


# ---- main -----------------------------------------------------------------------------------------


async def measure(cluster: LocalCluster, args: argparse.Namespace) -> tuple[float, list[RotationResult]]:
    pods = await asyncio.to_thread(ready_pods, cluster, args.shards)
    ips = [p["status"]["podIP"] for p in pods]
    cm = await asyncio.to_thread(cluster.get, "configmap", f"{NAME}-partitions", NS)
    pmap = PartitionMap.from_json(cm["data"]["map.json"])
    # As an application: a ServiceAccount token (TokenReview, cached by the pods) over TLS to each shard's cache.
    # Pods are reached by IP, so the chain is checked against the ShardSet CA and the name is not.
    creds = await asyncio.to_thread(data_client_args, cluster, NS, NAME, [TABLE])
    tls = ssl.create_default_context(cafile=str(creds["ca"]))
    tls.check_hostname = False
    transport = Transport(Credentials.default(token_provider=creds["token_provider"]), ssl_context=tls,
                          default_scheme="https", concurrency=args.concurrency)
    async with AsyncClient(pmap, [f"https://{ip}:7401" for ip in ips], timeout=30, transport=transport) as client:
        say(f"loading {args.blocks} blocks of {args.block_size} B ({args.concurrency} writers)")
        load_rate = await load(client, args.blocks, args.block_size, args.concurrency)
        say(f"load done: {load_rate:.0f} blocks/s")
        results = []
        for threat in {"both": (False, True), "routine": (False,), "threat": (True,)}[args.mode]:
            results.append(await rotate(cluster, client, ips, args.blocks, args.block_size, threat, args.before))
    return load_rate, results


def main() -> None:
    """Run the whole benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=100_000)
    ap.add_argument("--block-size", type=int, default=4096)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--mode", choices=("both", "routine", "threat"), default="both")
    ap.add_argument("--threat", action="store_const", const="threat", dest="mode", help="only the threat rotation")
    ap.add_argument("--before", type=float, default=15.0, help="seconds of reads measured before each rotation")
    ap.add_argument("--concurrency", type=int, default=64, help="writers during the load")
    ap.add_argument("--cache-size", default="64Mi", help="each shard's decryption cache budget")
    ap.add_argument("--storage", default=None, help="each shard's volume size (default: 3x its share, min 1Gi)")
    ap.add_argument("--baseline-blocks", type=int, default=5000)
    ap.add_argument("--keep", action="store_true", help="leave the cluster running and its state dir in place")
    args = ap.parse_args()
    if args.blocks < 1 or args.block_size <= PREFIX or args.shards < 1:
        ap.error("--blocks >= 1, --block-size > 16 and --shards >= 1 are required")
    share_gi = max(1, -(-3 * args.blocks * args.block_size // args.shards // 2**30))
    storage = args.storage or f"{share_gi}Gi"

    # The baseline first, while nothing else of ours runs: the node's own rewrap code on a real store.
    tmp = Path(tempfile.mkdtemp(prefix="bench-rot-baseline-"))
    baselines: dict[int, tuple[float, float]] = {}
    for batch in (256, 2000):
        # Best of 3 (fresh store each): the machine is shared, and the baseline is meant as the ceiling.
        runs = [asyncio.run(rewrap_bench(tmp / f"b{batch}-{i}", args.baseline_blocks, args.block_size, batch))
                for i in range(3)]
        baselines[batch] = (max(r[0] for r in runs), max(r[1] for r in runs))
        say(f"baseline rewrap, batches of {batch}: {baselines[batch][0]:.0f} blocks/s "
            f"(raw AES {baselines[batch][1]:.0f}/s)")

    state = Path(tempfile.mkdtemp(prefix="chronoshard-rotbench-"))
    say(f"starting the local cluster in {state}")
    cluster: LocalCluster | None = None
    operator: Operator | None = None
    try:
        cluster = start_cluster(state, "--no-operator")
        operator = Operator(cluster.kubeconfig, state, verbose=False, log_name="operator-bench.log")
        operator.start()
        cluster.kubectl("create", "namespace", NS)
        cluster.apply({"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShardSet",
                       "metadata": {"name": NAME, "namespace": NS},
                       "spec": {"shards": args.shards, "storage": {"size": storage},
                                "cache": {"size": args.cache_size}}})
        say(f"ShardSet {NS}/{NAME}: {args.shards} shards, storage {storage}, cache {args.cache_size}")
        load_rate, results = asyncio.run(measure(cluster, args))
        report(args, load_rate, baselines, results)
    finally:
        if operator:
            operator.stop()
        if args.keep:
            say(f"--keep: cluster left running; state dir {state} (stop: chronoshard-dev --state-dir {state} down)")
        else:
            say("stopping the cluster")
            dev(state, "down", "--purge", timeout=600)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
