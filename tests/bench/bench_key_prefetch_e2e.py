"""Read latency through real node + cache + predictor processes, key prefetching off and on.

    .venv/bin/python -m tests.bench.bench_key_prefetch_e2e [--tables 1000] [--requests 3000]
    .venv/bin/python -m tests.bench.bench_key_prefetch_e2e --workload trace --data <trace file>

Everything runs as the pod runs it, on 127.0.0.1: `chronoshard-node` and `chronoshard-cache` with a
wrapped keyring (`v1.wrapped` under a KEK in `kek.key`, `--kek-dir`), the cache with
`--unwrap-latency-ms` (a KMS round trip per unwrap) and a small `keyCacheSize`, and
`chronoshard-predictor` tailing the cache's access log. The block cache's byte budget is small, so
most reads decrypt a block fetched from the node and need the table key: that is the path key
prefetching shortens. Block hints are switched off (scoreThreshold 1.0, which no probability
reaches) in both runs, so the only difference between the runs is `keyPrefetch.enabled`.

Each run starts fresh processes (the node's data directory is reused), replays the first part of the
workload to warm the caches and train the predictor, then replays the measured part open-loop: one
GET every --interval-ms through the cache over HTTP, latency counted from the scheduled start. The
same requests, in the same order, in both runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from chronoshard.shardnode.keys.provider import wrap_key
from chronoshard.shardnode.predictor.traces import FORMATS

from tests.bench.bench_key_prefetch import jobs_workload, trace_workload
from tests.integration.shardnode.procs import BIN, Proc, free_port, http, http_json
from tests.support.waiting import wait_for

VERSION = 1
BLOCK = 4096


@dataclass(frozen=True)
class Request:
    """One GET of the replay."""

    table: str
    key: str
    client: str


def write_secrets(root: Path) -> tuple[Path, Path]:
    """A keyring with one wrapped version and the KEK beside it (flat files, as a test Secret)."""
    kek, master = os.urandom(32), os.urandom(32)
    keyring, kek_dir = root / "keyring", root / "kek"
    keyring.mkdir(parents=True)
    kek_dir.mkdir(parents=True)
    manifest = {"format": 1, "generation": 1, "algorithm": "AES-256-GCM",
                "versions": [{"id": VERSION, "state": "primary", "created": "2026-11-22T00:00:00Z"}]}
    (keyring / "keyring.json").write_text(json.dumps(manifest))
    (keyring / f"v{VERSION}.wrapped").write_bytes(wrap_key(kek, master, VERSION))
    (kek_dir / "kek.key").write_bytes(kek)
    return keyring, kek_dir


def build_requests(tables: list[str], clients: list[str], blocks_per_table: int, seed: int) -> list[Request]:
    """Each table read reads one of the table's blocks, chosen at random (fixed seed: same in both runs)."""
    rng = random.Random(seed)
    return [Request(t, f"blk-{rng.randrange(blocks_per_table):03d}", c) for t, c in zip(tables, clients, strict=True)]


async def load_blocks(node_url: str, tables: list[str], blocks_per_table: int) -> None:
    """Write every block straight into the node (the cache starts cold)."""
    sem = asyncio.Semaphore(16)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        async def put(table: str, b: int) -> None:
            async with sem, s.put(f"{node_url}/v1/tables/{table}/blocks/blk-{b:03d}", data=os.urandom(BLOCK)) as r:
                if r.status not in (200, 201, 204):
                    raise RuntimeError(f"PUT {table}/{b}: {r.status} {await r.text()}")
        await asyncio.gather(*(put(t, b) for t in tables for b in range(blocks_per_table)))


async def replay(cache_url: str, reqs: list[Request], interval_s: float) -> tuple[np.ndarray, int]:
    """Open loop: request i starts at i * interval; returns latencies (s) and the number of failed requests."""
    lat = np.full(len(reqs), np.nan)
    failed = 0
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as s:
        start = time.perf_counter()

        async def one(i: int, rq: Request) -> None:
            nonlocal failed
            due = start + i * interval_s
            headers = {"X-Client-Id": rq.client} if rq.client else {}
            try:
                async with s.get(f"{cache_url}/v1/tables/{rq.table}/blocks/{rq.key}", headers=headers) as r:
                    body = await r.read()
                    if r.status != 200 or len(body) != BLOCK:
                        failed += 1
            except (aiohttp.ClientError, TimeoutError):
                failed += 1
            lat[i] = time.perf_counter() - due

        tasks = []
        for i, rq in enumerate(reqs):
            wait = start + i * interval_s - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(one(i, rq)))
        # Bounded: every request has its own 10 s timeout.
        await asyncio.gather(*tasks)
    return lat, failed


def metric(url: str, name: str, labels: str = "") -> float:
    """Sum of a Prometheus sample (with the given label text) from /metrics."""
    _, body = http("GET", url + "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + (labels or "")) and (labels or line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def key_counters(cache_url: str) -> dict[str, float]:
    """The cache's key-cache counters and unwraps by path."""
    kc = http_json("GET", cache_url + "/v1/cache")[1]["keyCache"]
    name = "chronoshard_cache_key_unwrap_seconds_count"
    return {"misses": kc["misses"], "hits": kc["hits"], "prefetched": kc["prefetched"],
            "prefetchUsed": kc["prefetchUsed"], "unwrapsDemand": metric(cache_url, name, '{path="demand"}'),
            "unwrapsPrefetch": metric(cache_url, name, '{path="prefetch"}'),
            "blockHits": metric(cache_url, "chronoshard_cache_hits_total")}


def run_once(args: argparse.Namespace, root: Path, run: str, warm: list[Request], test: list[Request],
             key_prefetch: bool) -> dict[str, Any]:
    """Fresh node + cache + predictor; warm, train, measured replay; the run's figures."""
    keyring, kek_dir = root / "keyring", root / "kek"
    work = root / run
    work.mkdir()
    (work / "cache.json").write_text(json.dumps({"keyCacheSize": args.key_cache}))
    (work / "predictor.json").write_text(json.dumps({
        "enabled": True, "model": args.model, "horizonSeconds": args.horizon,
        "scoreThreshold": 1.0,  # no block hints in either run: only key prefetching differs
        "minTrainAccesses": min(len(warm), 2000), "pollIntervalSeconds": 0.05, "retrainIntervalSeconds": 3600,
        "keyPrefetch": {"enabled": key_prefetch, "scoreThreshold": args.threshold,
                        "maxKeysPerSecond": args.max_keys_per_second}}))
    np_, cp, pp = free_port(), free_port(), free_port()
    node = Proc([str(BIN / "chronoshard-node"), "--insecure", "--host", "127.0.0.1", "--port", str(np_), "--data-dir",
                 str(root / "data"), "--keyring-dir", str(keyring), "--kek-dir", str(kek_dir)], np_,
                work / "node.log")
    cache = Proc([str(BIN / "chronoshard-cache"), "--insecure", "--host", "127.0.0.1", "--port", str(cp), "--node-url",
                  f"http://127.0.0.1:{np_}", "--keyring-dir", str(keyring), "--kek-dir", str(kek_dir),
                  "--unwrap-latency-ms", str(args.unwrap_ms), "--config", str(work / "cache.json"),
                  "--budget-bytes", str(args.block_cache_blocks * BLOCK)], cp, work / "cache.log")
    pred = Proc([str(BIN / "chronoshard-predictor"), "--insecure",
                 "--host", "127.0.0.1", "--port", str(pp), "--cache-url",
                 f"http://127.0.0.1:{cp}", "--data-dir", str(work / "predictor"), "--config",
                 str(work / "predictor.json")], pp, work / "predictor.log")
    procs = [node]
    try:
        node.start()
        if not (root / "loaded").exists():
            t0 = time.monotonic()
            asyncio.run(load_blocks(node.url, sorted({r.table for r in warm + test}), args.blocks_per_table))
            (root / "loaded").touch()
            print(f"  wrote {len({r.table for r in warm + test}) * args.blocks_per_table} blocks in "
                  f"{time.monotonic() - t0:.1f}s")
        procs.append(cache.start())
        procs.append(pred.start())
        asyncio.run(replay(cache.url, warm, args.warm_interval_ms / 1000.0))
        time.sleep(args.horizon + 0.5)  # the last warm candidates' horizon passes, so they are labelled
        if key_prefetch:
            wait_for(lambda: http_json("GET", pred.url + "/v1/status")[1]["keyHints"]["model"], timeout=60,
                     interval=0.2)
        before = key_counters(cache.url)
        sent_before = metric(pred.url, "chronoshard_predictor_key_hints_sent_total")
        lat, failed = asyncio.run(replay(cache.url, test, args.interval_ms / 1000.0))
        time.sleep(0.5)  # let the last prefetches finish before reading the counters
        after = key_counters(cache.url)
        status = http_json("GET", pred.url + "/v1/status")[1]["keyHints"]
        delta = {k: after[k] - before[k] for k in after}
        ms = lat * 1000.0
        pct = np.percentile(ms, [50, 90, 99])
        return {"run": run, "mean": float(ms.mean()), "p50": pct[0], "p90": pct[1], "p99": pct[2],
                "max": float(ms.max()), "failed": failed, **delta,
                "hintsSent": metric(pred.url, "chronoshard_predictor_key_hints_sent_total") - sent_before,
                "precision": status["precision"], "threshold": status["threshold"]}
    finally:
        for p in (pred, cache, node):
            p.stop()


def main(argv: list[str] | None = None) -> None:
    """Both runs, then the table and the ratios."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=["jobs", "trace"], default="jobs")
    p.add_argument("--data", type=Path, help="trace file (for --workload trace)")
    p.add_argument("--format", choices=FORMATS, default=None)
    p.add_argument("--tables", type=int, default=1000)
    p.add_argument("--blocks-per-table", type=int, default=4)
    p.add_argument("--warm", type=int, default=3000, help="requests replayed to warm and train before measuring")
    p.add_argument("--requests", type=int, default=3000, help="measured requests")
    p.add_argument("--warm-interval-ms", type=float, default=5.0)
    p.add_argument("--interval-ms", type=float, default=10.0, help="time between measured requests")
    p.add_argument("--key-cache", type=int, default=32, help="the cache's keyCacheSize")
    p.add_argument("--block-cache-blocks", type=int, default=64, help="the cache's byte budget, in 4 KiB blocks")
    p.add_argument("--unwrap-ms", type=float, default=5.0, help="the cache's --unwrap-latency-ms")
    p.add_argument("--horizon", type=float, default=2.0, help="predictor horizonSeconds")
    p.add_argument("--threshold", type=float, default=0.3, help="keyPrefetch.scoreThreshold")
    p.add_argument("--max-keys-per-second", type=float, default=100.0, help="keyPrefetch.maxKeysPerSecond")
    p.add_argument("--model", default="stats", help="predictor model (stats, gbm, logreg, auto)")
    p.add_argument("--repeat", type=int, default=2, help="off/on pairs, alternated (a shared machine is noisy)")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    if not (2 <= args.tables <= 20000 and 100 <= args.requests <= 20000 and 100 <= args.warm <= 20000
            and 1 <= args.blocks_per_table <= 64 and args.interval_ms > 0 and args.warm_interval_ms > 0
            and 1 <= args.repeat <= 5):
        p.error("need 2..20000 tables, 100..20000 requests and warm requests, 1..64 blocks per table, intervals > 0, "
                "1..5 repeats")
    n = args.warm + args.requests
    if args.workload == "trace":
        if args.data is None:
            p.error("--workload trace needs --data")
        names, clients, _ = trace_workload(args.data, args.format, args.tables)
        names, clients = names[:n], clients[:n]
        source = args.data.name
    else:
        names, clients, _ = jobs_workload(n, args.tables, args.seed)
        source = "jobs (recurring routes of 3-8 tables, four at a time, 10% random tables)"
    if len(names) < n:
        p.error(f"the workload has only {len(names)} requests, need {n}")
    reqs = build_requests(names, clients, args.blocks_per_table, args.seed)
    warm, test = reqs[:args.warm], reqs[args.warm:]
    print(f"{source}: {len({r.table for r in reqs})} of {args.tables} tables; warm {len(warm)} at one per "
          f"{args.warm_interval_ms:g} ms, measure {len(test)} at one per {args.interval_ms:g} ms; keyCacheSize "
          f"{args.key_cache}, block cache {args.block_cache_blocks} blocks, unwrap +{args.unwrap_ms:g} ms")
    root = Path(tempfile.mkdtemp(prefix="bench-keyprefetch-"))
    rows = []
    try:
        write_secrets(root)
        for i in range(args.repeat):
            for run, on in (("off", False), ("on", True)):
                print(f"run {i + 1}: key prefetching {run}")
                rows.append(run_once(args, root, f"{run}-{i + 1}", warm, test, on))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{'key prefetching':16} {'mean ms':>8} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'max ms':>8} "
          f"{'key misses':>10} {'unwraps':>8} {'prefetched':>10} {'pf used':>8} {'hints':>6} {'failed':>6}")
    for r in rows:
        unwraps = int(r["unwrapsDemand"] + r["unwrapsPrefetch"])
        print(f"{r['run']:16} {r['mean']:8.3f} {r['p50']:7.3f} {r['p90']:7.3f} {r['p99']:7.3f} {r['max']:8.2f} "
              f"{int(r['misses']):10d} {unwraps:8d} {int(r['prefetched']):10d} {int(r['prefetchUsed']):8d} "
              f"{int(r['hintsSent']):6d} {r['failed']:6d}")
    offs = [r for r in rows if r["run"].startswith("off")]
    ons = [r for r in rows if r["run"].startswith("on")]

    def med(rs: list[dict[str, Any]], k: str) -> float:
        return float(np.median([r[k] for r in rs]))

    ratio = {k: med(ons, k) / med(offs, k) if med(offs, k) else float("nan")
             for k in ("mean", "p50", "p90", "p99", "misses")}
    precision = [round(r["precision"], 3) if r["precision"] is not None else None for r in ons]
    print(f"\nwith / without key prefetching (medians over {args.repeat} pair(s)): mean {ratio['mean']:.3f}, "
          f"p50 {ratio['p50']:.3f}, p90 {ratio['p90']:.3f}, p99 {ratio['p99']:.3f}, key misses {ratio['misses']:.3f}; "
          f"key hint precision {precision}, threshold in force {[round(r['threshold'], 2) for r in ons]}")


if __name__ == "__main__":
    main()
