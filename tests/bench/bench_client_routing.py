"""Client put/get throughput and p50/p99: one node vs 3 shards (direct routing vs through one cache).

Run: ``.venv/bin/python -m tests.bench.bench_client_routing [--data .../cloudPhysicsIO.csv] [--ops 3000]``

All three set-ups run in the same invocation on 127.0.0.1 with real ``chronoshard-node`` processes
(the store encrypts and fsyncs every write). The figures are printed beside the single-node baseline
as ratios. With ``--data`` the workload replays the CloudPhysics block trace: keys are LBNs in trace
order, writes (op 2a) become puts of ``size`` bytes (capped), reads (op 28) become gets of keys
already written; without it keys are synthetic and values 1 KiB.

Rows: a single node (the baseline); 3 shards with the client routing straight to the owning node;
3 shards with a ``chronoshard-cache`` in front of each node (as in the pod) and the client routing
straight to the owning cache; and the same caches with every request sent to shard 0's cache, which
forwards keys it does not own (the client-Service path). Gets through caches are mostly hits, since
the cache keeps the value it wrote through.

Then the forwarding comparison of issue #21 ("GET through a cache that forwards to the owner ÷ direct to
the owner"), on the same caches and keys, the set-ups alternated for ``--rounds`` rounds (the machine is
shared, so one pass each would compare two different moments) and the median printed:

* direct to the owner's cache: the baseline;
* via one cache: everything to shard 0's cache, which forwards the two thirds it does not own. All
  client-facing work lands in one process, while the baseline spreads it over three;
* every get forwarded, spread: each get sent to the cache after its owner's, so every get takes exactly
  one extra hop and each cache takes a third of the load, as the baseline's do. This is the per-request
  price of a forward without the load concentration.

Beside the rates, the CPU time each get cost, summed over every process of the set-up (this client, the
caches, the nodes; from /proc and getrusage) net of what they spend idle (their background work, measured for
``IDLE_SECONDS`` with no requests in the same run, times the phase's duration), and direct ÷ forwarded of it: what
the rate ratio tends to when the processes are CPU-bound, and a figure other work on a shared machine moves less
than the rates.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from chronoshard.shardnode.client import AsyncClient
from chronoshard.shardnode.keyspace.partitioning import PartitionMap, initial_map

from tests.integration.client.shards import ShardCaches, ShardNodes

MAX_VALUE = 16 * 1024
IDLE_SECONDS = 5.0
TABLE = "bench"


@dataclass
class Workload:
    puts: list[tuple[str, bytes]]
    gets: list[str]
    source: str
    preload: list[tuple[str, bytes]] = field(default_factory=list)  # written untimed before the gets


def synthetic(ops: int) -> Workload:
    value = os.urandom(1024)
    keys = [f"key-{i:07d}" for i in range(ops)]
    return Workload([(k, value) for k in keys], keys[::-1], f"synthetic, {ops} keys, 1 KiB values")


def from_trace(path: Path, ops: int) -> Workload:
    """The first ``ops`` writes and reads of the CloudPhysics trace, in trace order.

    Most reads in the trace are of blocks written before it began; those are preloaded (untimed)
    so every get finds its block.
    """
    puts: list[tuple[str, bytes]] = []
    gets: list[str] = []
    sizes: dict[str, int] = {}
    pool = os.urandom(MAX_VALUE)
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            key, size = f"lbn-{row['lbn']}", min(int(row["size"]), MAX_VALUE)
            if row["op"] == "2a" and len(puts) < ops:
                puts.append((key, pool[:size]))
            elif row["op"] == "28" and len(gets) < ops:
                gets.append(key)
                sizes.setdefault(key, size)
            if len(puts) >= ops and len(gets) >= ops:
                break
    written = {k for k, _ in puts}
    preload = [(k, pool[:n]) for k, n in sizes.items() if k not in written]
    mean = sum(len(v) for _, v in puts) / len(puts)
    return Workload(puts, gets, f"{path.name}: {len(puts)} writes (mean {mean:.0f} B), {len(gets)} reads "
                    f"({len(set(gets))} distinct)", preload)


@dataclass
class Figures:
    ops: int
    seconds: float
    latencies: list[float]
    cpu: float = 0.0  # CPU seconds of every process of the set-up while it ran (0: not measured)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds

    def pct(self, q: float) -> float:
        s = sorted(self.latencies)
        return s[min(len(s) - 1, int(q * len(s)))] * 1000


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) so far of this process and of ``pids`` (Linux /proc)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    total = me.ru_utime + me.ru_stime
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    return total


def median(values: list[float]) -> float:
    s = sorted(values)
    return (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2


async def drive(calls: list[Callable[[], Awaitable[object]]], concurrency: int,
                budget: float) -> Figures:
    """Run calls with ``concurrency`` workers; stops early when ``budget`` seconds are used up."""
    latencies: list[float] = []
    it = iter(calls)
    deadline = time.monotonic() + budget

    async def worker() -> None:
        for call in it:
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Figures(len(latencies), time.perf_counter() - t0, latencies)


async def measure(client: AsyncClient, w: Workload, args: argparse.Namespace,
                  table: str = TABLE) -> tuple[Figures, Figures]:
    await drive([lambda k=k, v=v: client.put(table, k, v) for k, v in w.preload], args.concurrency, 600)
    puts = await drive([lambda k=k, v=v: client.put(table, k, v) for k, v in w.puts],
                       args.concurrency, args.budget)
    gets = await drive([lambda k=k: client.get(table, k) for k in w.gets], args.concurrency, args.budget)
    return puts, gets


async def forwarding_rounds(pmap: PartitionMap, urls: list[str], w: Workload, args: argparse.Namespace,
                            table: str, pids: list[int]) -> dict[str, list[Figures]]:
    """Gets of ``table`` (already written) per set-up, the set-ups alternated round by round."""
    direct = AsyncClient(pmap, urls)
    via = [AsyncClient.via_service(u) for u in urls]
    owner = {k: pmap.shard_of(table, k) for k in w.gets}
    setups: dict[str, Callable[[str], Awaitable[object]]] = {
        "direct to the owner's cache": lambda k: direct.get(table, k),
        "via one cache": lambda k: via[0].get(table, k),
        "every get forwarded, spread": lambda k: via[(owner[k] + 1) % len(urls)].get(table, k),
    }
    out: dict[str, list[Figures]] = {name: [] for name in setups}
    before, t0 = cpu_seconds(pids), time.perf_counter()
    await asyncio.sleep(IDLE_SECONDS)
    idle = (cpu_seconds(pids) - before) / (time.perf_counter() - t0)  # CPU seconds per second with no requests
    print(f"idle background of the set-up's processes: {idle * 100:.1f}% of a core (subtracted from CPU per get)")
    try:
        for _ in range(args.rounds):
            for name, get in setups.items():
                before = cpu_seconds(pids)
                figs = await drive([lambda k=k, get=get: get(k) for k in w.gets], args.concurrency, args.budget)
                figs.cpu = cpu_seconds(pids) - before - idle * figs.seconds
                out[name].append(figs)
    finally:
        for c in (direct, *via):
            await c.close()
    return out


def print_forwarding(rounds: dict[str, list[Figures]]) -> None:
    names = list(rounds)
    base = rounds[names[0]]
    print(f"\nGET through a forwarding cache ÷ direct to the owner (same caches and keys, {len(base)} rounds "
          "alternated, median; goal: >= 0.7 and p99 <= 2x)")
    print(f"{'set-up':28} {'get/s':>7} {'÷ direct':>8} {'p50 ms':>7} {'p99 ms':>7} {'p99 ×':>6} "
          f"{'CPU µs/get':>10} {'direct ÷':>8}  per round ÷ direct")
    for name in names:
        figs = rounds[name]
        ratios = [f.rate / b.rate for f, b in zip(figs, base, strict=True)]
        p99s = [f.pct(0.99) / b.pct(0.99) for f, b in zip(figs, base, strict=True)]
        cpu = [f.cpu / f.ops for f in figs]
        cpu_ratios = [b.cpu / b.ops / (f.cpu / f.ops) for f, b in zip(figs, base, strict=True)]
        print(f"{name:28} {median([f.rate for f in figs]):7.0f} {median(ratios):8.2f} "
              f"{median([f.pct(0.5) for f in figs]):7.2f} {median([f.pct(0.99) for f in figs]):7.2f} "
              f"{median(p99s):6.2f} {median(cpu) * 1e6:10.0f} {median(cpu_ratios):8.2f}  "
              + " ".join(f"{r:.2f}" for r in ratios))


async def main_async(args: argparse.Namespace) -> None:
    w = from_trace(Path(args.data), args.ops) if args.data else synthetic(args.ops)
    root = Path(tempfile.mkdtemp(prefix="chronoshard-bench-"))
    rows: list[tuple[str, Figures, Figures]] = []
    forwarding: dict[str, list[Figures]] = {}
    try:
        single = ShardNodes(root / "single", initial_map(1))
        try:
            async with AsyncClient(initial_map(1), single.urls) as c:
                rows.append(("single node", *await measure(c, w, args)))
        finally:
            single.stop()

        three = ShardNodes(root / "three", initial_map(3))
        try:
            async with AsyncClient(initial_map(3), three.urls) as c:
                rows.append(("3 shards, direct routing", *await measure(c, w, args)))
            caches = ShardCaches(three)
            try:
                # Other tables so these puts are new writes, as in the rows above.
                async with AsyncClient(initial_map(3), caches.urls) as c:
                    rows.append(("3 shards, direct to caches", *await measure(c, w, args, "bench2")))
                c = AsyncClient.via_service(caches.urls[0])
                try:
                    rows.append(("3 shards, via one cache", *await measure(c, w, args, "bench3")))
                finally:
                    await c.close()
                pids = [p.pid for p in (*caches.procs, *three.procs)]
                forwarding = await forwarding_rounds(initial_map(3), caches.urls, w, args, "bench3", pids) \
                    if args.rounds else {}
            finally:
                caches.stop()
        finally:
            three.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    base_put, base_get = rows[0][1], rows[0][2]
    print(f"workload: {w.source}; concurrency {args.concurrency}; budget {args.budget:g} s per phase")
    print(f"{'set-up':28} {'op':4} {'ops':>6} {'ops/s':>9} {'x base':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for name, p, g in rows:
        for op, f, base in (("put", p, base_put), ("get", g, base_get)):
            print(f"{name:28} {op:4} {f.ops:6d} {f.rate:9.0f} {f.rate / base.rate:7.2f} "
                  f"{f.pct(0.50):8.2f} {f.pct(0.99):8.2f}")
    if forwarding:
        print_forwarding(forwarding)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="cloudPhysicsIO.csv from the shared benchmark data (optional)")
    p.add_argument("--ops", type=int, default=3000, help="puts and gets per set-up (default 3000)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--budget", type=float, default=60.0, help="max seconds per phase")
    p.add_argument("--rounds", type=int, default=5,
                   help="rounds of the alternated forwarding comparison (0: skip it)")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
