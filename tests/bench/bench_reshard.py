"""Online partition moves (docs/resharding.md, #19), measured on real `chronoshard-node` processes in one run.

    python -m tests.bench.bench_reshard --data /work/shared/data [--blocks 20000] [--max-block-bytes 4096]
        [--rounds 4] [--readers 8] [--writers 8] [--quiet-seconds 3] [--time-limit 600]

The data: a block-I/O trace in libCacheSim's CSV format (``version,time,op,size,lbn``; the CloudPhysics trace in
``--data``/cache/cloudPhysicsIO/): the first ``--blocks`` distinct LBNs become blocks (key ``lbn<N>``, the size of
their first request, capped at ``--max-block-bytes``, random bytes), the trace's reads of those LBNs are what the
readers replay and its writes what the writers replay, in trace order, round after round.

Two node processes (shard 0 and shard 1, a map volume each) hold a two-partition map; partition 1 (the upper half of
the keyspace, about half of the blocks) moves from one to the other and back, ``--rounds`` times, while
``--readers`` and ``--writers`` replay the trace through the Python client (which follows the 421s). The bench drives
each move as the Reshard controller does: ``PUT /v1/moves/{name}`` on the target, its progress until the snapshot is
copied, the digests (source at its LSN X, target at source LSN X), the cutover (fence on the source, wait for the
target to apply through the fence LSN, new map to the source then the target, fence lifted), then the move closed
and the source's copy purged (no grace period here). Figures, each beside its baseline of the same run:

1. **move rate ÷ raw rate**: blocks copied per second (snapshot blocks ÷ the time from the PUT until the target
   reports them all copied) ÷ the raw scan+write rate of the same blocks: read the range from the source's SQLite
   file and insert the rows into a fresh SQLite file with the node's schema and pragmas, in 500-row transactions (the
   mover's chunk), with no HTTP, in a process of its own, just before the move and under the same client load.
2. **client write pause at cutover**: the latency of every client write to the moved range that was in flight while
   the fence was up (from the fence's PUT until its DELETE), p99 and max, beside the write p99 while nothing moves
   (goal p99 <= 1 s).
3. **read p99 during the move ÷ before**: reads started between the move's PUT and its cutover, against reads in the
   ``--quiet-seconds`` before (goal <= 1.5).
4. **verification time ÷ copy time**: both digests, including retries when the target had already applied past X
   (goal <= 0.1); beside it the attempt that matched alone (both digests once, no retries).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import cycle
from pathlib import Path
from typing import Any

import aiohttp
from chronoshard.shardnode.client import AsyncClient, NodeMap
from chronoshard.shardnode.client.errors import ChronoshardError
from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap, keyspace_id
from chronoshard.shardnode.node import store as node_store

from tests.integration.shardnode.procs import Proc, node
from tests.support.kubelet_dir import write_keyring

TABLE = "trace"
HALF, TOP = 1 << 63, (1 << 64) - 1
UPPER = ["8000000000000000", "ffffffffffffffff"]
KEYSPACE = f"{UPPER[0]}-{UPPER[1]}"
RAW_CHUNK = 500  # the mover's snapshot chunk (shardnode/resharding/puller.py PullSettings.chunk)
TRACE = Path("cache/cloudPhysicsIO/cloudPhysicsIO.csv")
POLL = 0.005
VERIFY_LAG_SECONDS = 1.0  # the operator verifies once the target's lag is at most this (operator/reshard/plan.py)
DEADLINE = [float("inf")]  # the run's time limit (monotonic), checked by every polling loop


def say(text: str) -> None:
    """A progress line (the figures come at the end)."""
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def check_deadline(what: str) -> None:
    if time.monotonic() >= DEADLINE[0]:
        raise TimeoutError(f"time limit reached while {what}")


def layout(epoch: int, upper_on: int) -> PartitionMap:
    """Partition 0 (the lower half) on shard 0, partition 1 (the upper half) on ``upper_on``."""
    return PartitionMap(epoch, 2, (Partition(0, 0, HALF - 1, 0), Partition(1, HALF, TOP, upper_on)))


def moved(key: str) -> bool:
    """Whether ``key`` lives in partition 1, the one that moves."""
    return keyspace_id(TABLE, key) >= HALF


# ---- the trace -------------------------------------------------------------------------------------------
@dataclass
class Trace:
    """Blocks (key -> size), and the reads and writes of those keys in trace order."""

    sizes: dict[str, int]
    reads: list[str]
    writes: list[str]


def load_trace(path: Path, blocks: int, max_bytes: int) -> Trace:
    """The first ``blocks`` distinct LBNs of a libCacheSim CSV trace, and its reads and writes of them."""
    sizes: dict[str, int] = {}
    ops: list[tuple[str, str]] = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            key = f"lbn{row['lbn']}"
            if key not in sizes:
                if len(sizes) >= blocks:
                    continue
                sizes[key] = max(1, min(int(row["size"]), max_bytes))
            ops.append((row["op"].lower(), key))
    reads = [k for op, k in ops if op == "28"]
    writes = [k for op, k in ops if op == "2a"]
    if not reads or not writes:
        raise SystemExit(f"{path}: no reads or no writes of the first {blocks} LBNs")
    return Trace(sizes, reads, writes)


# ---- the raw scan+write rate ---------------------------------------------------------------------------------
def raw_copy_rate(source_db: Path, scratch: Path) -> tuple[int, float]:
    """Read the upper half's block rows from ``source_db`` (read-only, beside the running node) and insert them into
    a fresh store file in RAW_CHUNK-row transactions; (blocks, blocks/s)."""
    if scratch.exists():
        scratch.unlink()
    dst = node_store.connect(scratch)  # the node's pragmas (WAL, synchronous=FULL)
    dst.executescript(node_store.SCHEMA)
    src = sqlite3.connect(f"file:{source_db}?mode=ro", uri=True)
    cols = "tbl, key, keyspace, key_version, size, checksum, frame, lsn"
    started = time.perf_counter()
    # The store keeps keyspace_id - 2^63, so the upper half is keyspace >= 0.
    cur = src.execute(f"SELECT {cols} FROM blocks WHERE keyspace >= 0 ORDER BY keyspace, tbl, key")
    n = 0
    while rows := cur.fetchmany(RAW_CHUNK):
        dst.execute("BEGIN")  # the node's connections are in autocommit mode: one transaction per chunk
        dst.executemany(f"INSERT INTO blocks ({cols}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        dst.execute("COMMIT")
        n += len(rows)
    seconds = time.perf_counter() - started
    src.close()
    dst.close()
    return n, n / seconds if seconds > 0 else float("inf")


# ---- the load ------------------------------------------------------------------------------------------------
@dataclass
class Sample:
    start: float
    end: float
    key: str
    ok: bool


@dataclass
class Load:
    """Readers and writers replaying the trace through one client until stopped; every call's times kept."""

    client: AsyncClient
    trace: Trace
    reads: list[Sample] = field(default_factory=list)
    writes: list[Sample] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def reader(self, keys: Iterator[str]) -> None:
        while not self.stop.is_set():
            key = next(keys)
            start = time.monotonic()
            try:
                await self.client.get(TABLE, key)
                ok = True
            except ChronoshardError:
                ok = False
            self.reads.append(Sample(start, time.monotonic(), key, ok))

    async def writer(self, keys: Iterator[str]) -> None:
        while not self.stop.is_set():
            key = next(keys)
            start = time.monotonic()
            try:
                await self.client.put(TABLE, key, os.urandom(self.trace.sizes[key]))
                ok = True
            except ChronoshardError:
                ok = False
            self.writes.append(Sample(start, time.monotonic(), key, ok))


def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile (nan for none)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, -(-99 * len(ordered) // 100) - 1)]


# ---- one move, driven as the Reshard controller does -------------------------------------------------------------
async def call(session: aiohttp.ClientSession, method: str, url: str, doc: Any = None,
               ok: tuple[int, ...] = (200,)) -> tuple[int, Any]:
    async with session.request(method, url, json=doc) as resp:
        body = await resp.json(content_type=None)
        if resp.status not in ok:
            raise RuntimeError(f"{method} {url}: HTTP {resp.status} {body}")
        return resp.status, body


@dataclass
class Round:
    blocks: int = 0
    raw_blocks: int = 0
    raw_rate: float = 0.0
    copy_s: float = 0.0
    verify_s: float = 0.0
    verify_last_s: float = 0.0  # the attempt that matched: both digests, without the retries before it
    verify_attempts: int = 0
    copy_window: tuple[float, float] = (0.0, 0.0)
    fence_window: tuple[float, float] = (0.0, 0.0)


async def copy_phase(session: aiohttp.ClientSession, src: Proc, dst: Proc, src_shard: int, name: str,
                     r: Round) -> None:
    """PUT the move on the target; wait until its snapshot is copied (copy time) and it is catching up."""
    doc = {"source": {"url": src.url, "shard": src_shard}, "partition": 1, "ranges": [UPPER]}
    started = time.monotonic()
    await call(session, "PUT", f"{dst.url}/v1/moves/{name}", doc, ok=(200, 201, 202))
    while True:
        _, m = await call(session, "GET", f"{dst.url}/v1/moves/{name}")
        if m.get("phase") == "failed":
            raise RuntimeError(f"move {name} failed: {m.get('error')}")
        if m.get("phase") == "catching_up" and m.get("totalBlocks") is not None and not r.copy_s:
            r.copy_s, r.blocks = time.monotonic() - started, int(m["totalBlocks"])
            say(f"{name}: {r.blocks} blocks copied in {r.copy_s:.2f} s")
        lag = m.get("lagSeconds")
        if r.copy_s and isinstance(lag, int | float) and lag <= VERIFY_LAG_SECONDS:
            # Caught up as the operator wants it before verifying.
            r.copy_window = (started, time.monotonic())
            return
        check_deadline(f"copying {name}: {m}")
        await asyncio.sleep(POLL)


async def verify_phase(session: aiohttp.ClientSession, src: Proc, dst: Proc, name: str, r: Round) -> None:
    """The target holds at its cursor, the source digests at its LSN X, the target digests at source LSN X (as the
    operator does); again if the target was past X anyway."""
    started = time.monotonic()
    while True:
        r.verify_attempts += 1
        attempt = time.monotonic()
        await call(session, "PUT", f"{dst.url}/v1/moves/{name}/hold?seconds=60")
        _, a = await call(session, "GET", f"{src.url}/v1/ranges/digest?keyspace={KEYSPACE}")
        status, b = await call(session, "GET", f"{dst.url}/v1/moves/{name}/digest?sourceLsn={a['lsn']}"
                                               "&waitSeconds=20", ok=(200, 409))
        if status == 409 and b.get("error") == "lsn_passed":
            check_deadline(f"verifying {name}")
            continue
        if status != 200 or (a["blocks"], a["digest"]) != (b["blocks"], b["digest"]):
            raise RuntimeError(f"move {name}: digests differ: source {a}, target {b}")
        r.verify_s, r.verify_last_s = time.monotonic() - started, time.monotonic() - attempt
        say(f"{name}: digests of {a['blocks']} blocks matched in {r.verify_s:.2f} s ({r.verify_attempts} attempt(s))")
        return


async def cutover(session: aiohttp.ClientSession, src: Proc, dst: Proc, name: str, new_map: PartitionMap,
                  r: Round) -> None:
    """Fence, wait for the target to apply through the fence LSN, the map to the source then the target, lift."""
    started = time.monotonic()
    _, fence = await call(session, "PUT", f"{src.url}/v1/fences/{name}", {"ranges": [UPPER], "holdSeconds": 5})
    try:
        while True:
            _, m = await call(session, "GET", f"{dst.url}/v1/moves/{name}")
            if int(m.get("sourceLsn") or 0) >= int(fence["fenceLsn"]):
                break
            check_deadline(f"cutting over {name}: fence LSN {fence['fenceLsn']}, target {m}")
            await asyncio.sleep(POLL)
        # The source takes the map only while our fence stands (else 409 fence_gone: the cutover would be retried).
        await call(session, "PUT", f"{src.url}/v1/partitions?fence={name}", new_map.to_dict())
        await call(session, "PUT", f"{dst.url}/v1/partitions", new_map.to_dict())
    finally:
        await call(session, "DELETE", f"{src.url}/v1/fences/{name}", ok=(200, 204, 404))
        r.fence_window = (started, time.monotonic())
        say(f"{name}: cut over, fenced {(r.fence_window[1] - started) * 1000:.0f} ms")


async def one_round(session: aiohttp.ClientSession, procs: list[Proc], tmp: Path, i: int, epoch: int) -> Round:
    src_shard = i % 2
    dst_shard = 1 - src_shard
    src, dst = procs[src_shard], procs[dst_shard]
    name = f"bench-{i}"
    r = Round()
    # In a process of its own, as the node's mover is, under the same client load as the move that follows.
    with ProcessPoolExecutor(max_workers=1) as pool:
        r.raw_blocks, r.raw_rate = await asyncio.get_running_loop().run_in_executor(
            pool, raw_copy_rate, tmp / f"shard-{src_shard}" / "data" / "blocks.sqlite3", tmp / "raw-copy.sqlite3")
    say(f"{name}: shard {src_shard} -> {dst_shard}; raw scan+write {r.raw_blocks} blocks at {r.raw_rate:.0f}/s")
    await copy_phase(session, src, dst, src_shard, name, r)
    await verify_phase(session, src, dst, name, r)
    await cutover(session, src, dst, name, layout(epoch + 1, dst_shard), r)
    await call(session, "DELETE", f"{dst.url}/v1/moves/{name}", ok=(200, 204, 404))
    await call(session, "POST", f"{src.url}/v1/ranges:purge", {"ranges": [UPPER], "epoch": epoch + 1})
    return r


# ---- the run ----------------------------------------------------------------------------------------------------
def start_nodes(tmp: Path) -> list[Proc]:
    keyring = tmp / "keyring"
    write_keyring(keyring, 1, {1: ("primary", os.urandom(32))})
    procs = []
    for shard in (0, 1):
        d = tmp / f"shard-{shard}"
        d.mkdir()
        (d / "map.json").write_text(layout(1, 0).to_json())
        p = node(d, keyring)
        p.argv += ["--partition-map", str(d / "map.json"), "--shard-index", str(shard), "--log-level", "WARNING"]
        procs.append(p.start())
    return procs


async def fill(client: AsyncClient, trace: Trace, concurrency: int = 32) -> None:
    keys = iter(list(trace.sizes))

    async def worker() -> None:
        for key in keys:
            await client.put(TABLE, key, os.urandom(trace.sizes[key]))

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def _within(samples: list[Sample], window: tuple[float, float]) -> list[Sample]:
    return [s for s in samples if window[0] <= s.start < window[1]]


def report(rounds: list[Round], load: Load, quiet: list[tuple[float, float]]) -> None:
    """Print the four figures, each beside its same-run baseline."""
    print(f"\n{len(rounds)} moves of partition 1 (the upper half of the keyspace) between two nodes")
    print("round  blocks  copy s  move blk/s  raw blk/s  move/raw  verify s  tries  verify/copy  last try/copy  "
          "fence ms")
    for i, r in enumerate(rounds):
        rate = r.blocks / r.copy_s if r.copy_s else float("nan")
        print(f"{i:5d}  {r.blocks:6d}  {r.copy_s:6.2f}  {rate:10.0f}  {r.raw_rate:9.0f}  {rate / r.raw_rate:8.3f}  "
              f"{r.verify_s:8.3f}  {r.verify_attempts:5d}  {r.verify_s / r.copy_s:11.3f}  "
              f"{r.verify_last_s / r.copy_s:13.3f}  "
              f"{(r.fence_window[1] - r.fence_window[0]) * 1000:8.1f}")
    rates = [r.blocks / r.copy_s / r.raw_rate for r in rounds]
    ver = [r.verify_s / r.copy_s for r in rounds]
    last = [r.verify_last_s / r.copy_s for r in rounds]
    print(f"move rate / raw scan+write rate: median {statistics.median(rates):.3f} (min {min(rates):.3f})")
    print(f"verification time / copy time:   median {statistics.median(ver):.3f} (max {max(ver):.3f}; goal <= 0.1); "
          f"the matching attempt alone: median {statistics.median(last):.3f} (max {max(last):.3f})")

    def overlaps(s: Sample, w: tuple[float, float]) -> bool:
        return s.start < w[1] and s.end > w[0]

    at_cutover = [s.end - s.start for s in load.writes if moved(s.key)
                  and any(overlaps(s, r.fence_window) for r in rounds)]
    quiet_writes = [s.end - s.start for w in quiet for s in _within(load.writes, w)]
    print(f"client write pause at cutover:   p99 {p99(at_cutover) * 1000:.1f} ms, max "
          f"{max(at_cutover, default=float('nan')) * 1000:.1f} ms over {len(at_cutover)} writes to the moving range "
          f"in flight while fenced (goal p99 <= 1000 ms); writes while nothing moves: p99 "
          f"{p99(quiet_writes) * 1000:.1f} ms")
    before = [s.end - s.start for w in quiet for s in _within(load.reads, w)]
    during = [s.end - s.start for r in rounds for s in _within(load.reads, (r.copy_window[0], r.fence_window[0]))]
    print(f"read p99 during the move / before: {p99(during) * 1000:.2f} / {p99(before) * 1000:.2f} ms = "
          f"{p99(during) / p99(before):.2f} (goal <= 1.5; {len(during)} and {len(before)} reads)")
    failed = [s for s in load.reads + load.writes if not s.ok]
    print(f"failed client calls: {len(failed)} of {len(load.reads) + len(load.writes)}")


async def main_async(args: argparse.Namespace) -> None:
    trace = load_trace(args.data / TRACE, args.blocks, args.max_block_bytes)
    print(f"trace: {len(trace.sizes)} blocks ({sum(trace.sizes.values()) / 2**20:.1f} MiB), {len(trace.reads)} reads "
          f"and {len(trace.writes)} writes of them; {sum(moved(k) for k in trace.sizes)} blocks in the moving half")
    tmp = Path(tempfile.mkdtemp(prefix="bench-reshard-"))
    procs = start_nodes(tmp)
    deadline = time.monotonic() + args.time_limit
    DEADLINE[0] = deadline
    try:
        urls = [p.url for p in procs]
        async with AsyncClient(NodeMap(urls), urls, concurrency=64, timeout=30) as client, \
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            await fill(client, trace)
            say("filled")
            load = Load(client, trace)
            reads, writes = cycle(trace.reads), cycle(trace.writes)
            tasks = [asyncio.create_task(load.reader(reads)) for _ in range(args.readers)]
            tasks += [asyncio.create_task(load.writer(writes)) for _ in range(args.writers)]
            rounds: list[Round] = []
            quiet: list[tuple[float, float]] = []
            try:
                for i in range(args.rounds):
                    if time.monotonic() >= deadline:
                        print(f"time limit: {i} rounds done")
                        break
                    q0 = time.monotonic()
                    await asyncio.sleep(args.quiet_seconds)
                    quiet.append((q0, time.monotonic()))
                    rounds.append(await one_round(session, procs, tmp, i, 1 + i))
            except TimeoutError as exc:
                print(f"stopped: {exc}")
            finally:
                load.stop.set()
                await asyncio.gather(*tasks)
            report(rounds, load, quiet)
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the shared data directory (see its README)")
    ap.add_argument("--blocks", type=int, default=20000)
    ap.add_argument("--max-block-bytes", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--readers", type=int, default=8)
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--quiet-seconds", type=float, default=3.0)
    ap.add_argument("--time-limit", type=float, default=600.0)
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
