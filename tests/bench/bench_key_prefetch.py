"""p99 read latency with and without key prefetching, many tables, a KEK provider with a fixed unwrap latency.

    python -m tests.bench.bench_key_prefetch --data /work/shared/data/cache/cloudPhysicsIO/cloudPhysicsIO.vscsi

Tables come from the real trace: the block address space is cut into --tables equal ranges and
each request reads a block of the table its address falls in. Table keys are wrapped under a KEK
(real AES-GCM key wrap, embedded provider reading real files) and every unwrap costs --unwrap-ms
more (FixedLatencyProvider, a KMS round trip). Each read gets its table key from a small key cache
(--key-cache entries) and decrypts a 4 KiB block with it (real AES-256-GCM). The first
--train-frac of the trace trains the table predictor; then --requests requests are replayed
open-loop at one every --interval-ms (latency counts from the scheduled start, so queueing shows).
"With prefetching", the predictor proposes the next tables after each read and two workers unwrap
them in the background into the same key cache; "without", only demand misses unwrap.
"""

from __future__ import annotations

import argparse
import os
import queue
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from chronoshard.shardnode.keys.keyring import derive_table_key
from chronoshard.shardnode.keys.provider import EmbeddedKeyProvider, FixedLatencyProvider, KeyCache, wrap_key
from chronoshard.shardnode.predictor.access import Access
from chronoshard.shardnode.predictor.config import PredictorConfig
from chronoshard.shardnode.predictor.engine import train_scorer
from chronoshard.shardnode.predictor.features import CandidateGenerator, GeneratorSettings
from chronoshard.shardnode.predictor.traces import FORMATS, read_trace
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
BLOCK = 4096


def write_secret(directory: Path, files: dict[str, bytes]) -> None:
    """A mounted Secret, flat (the provider also reads kubelet's ..data layout)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)


def replay(tables: list[str], clients: list[str], cache: KeyCache, sealed: dict[str, tuple[bytes, bytes]],
           interval_s: float, predict: object | None, threshold: float, max_prefetch: int) -> np.ndarray:
    """Open-loop replay; returns per-request latency in seconds.

    The predictor runs on its own thread fed by a queue of reads (as the sidecar tails the access
    log), so its work is off the read path; two workers do the unwraps it asks for.
    """
    lat = np.zeros(len(tables))
    pool = ThreadPoolExecutor(2, thread_name_prefix="key-prefetch") if predict else None
    feed: queue.SimpleQueue[tuple[str, str] | None] = queue.SimpleQueue()
    inflight: set[str] = set()
    lock = threading.Lock()

    def fetch(table: str, score: float) -> None:
        try:
            cache.prefetch(table, VERSION, score)
        finally:
            with lock:
                inflight.discard(table)

    def predictor_loop() -> None:
        while (item := feed.get()) is not None:
            ranked = sorted(predict(*item), key=lambda c: -c[1])  # type: ignore[operator]
            for cand, score in ranked[:max_prefetch]:
                if score < threshold or (cand, VERSION) in cache:
                    continue
                with lock:
                    if cand in inflight:
                        continue
                    inflight.add(cand)
                assert pool is not None
                pool.submit(fetch, cand, score)

    thread = threading.Thread(target=predictor_loop, daemon=True) if predict else None
    if thread is not None:
        thread.start()
    start = time.perf_counter()
    for i, table in enumerate(tables):
        due = start + i * interval_s
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        key = cache.get(table, VERSION)
        nonce, ct = sealed[table]
        AESGCM(key).decrypt(nonce, ct, table.encode())
        lat[i] = time.perf_counter() - due
        if thread is not None:
            feed.put((table, clients[i]))
    if thread is not None and pool is not None:
        feed.put(None)
        thread.join()
        pool.shutdown(wait=True)
    return lat


def jobs_workload(n: int, tables: int, seed: int = 7) -> tuple[list[str], list[str], list[float]]:
    """Synthetic: recurring jobs, each reading a fixed route of tables in order, four at a time interleaved,
    plus 10% reads of random tables. Returns (table, client, time) per request."""
    rng = np.random.default_rng(seed)
    routes = [[f"tbl{int(x):05d}" for x in rng.choice(tables, size=int(rng.integers(3, 9)), replace=False)]
              for _ in range(120)]
    popularity = 1.0 / np.arange(1, len(routes) + 1)
    popularity /= popularity.sum()
    running: list[tuple[int, int, list[str]]] = []  # (client id, position, route)
    out_t: list[str] = []
    out_c: list[str] = []
    next_client = 0
    while len(out_t) < n:
        while len(running) < 4:
            running.append((next_client, 0, routes[int(rng.choice(len(routes), p=popularity))]))
            next_client += 1
        if rng.random() < 0.1:
            out_t.append(f"tbl{int(rng.integers(tables)):05d}")
            out_c.append("noise")
            continue
        j = int(rng.integers(len(running)))
        cid, pos, route = running[j]
        for _ in range(int(rng.integers(1, 4))):
            out_t.append(route[pos])
            out_c.append(f"job{cid}")
        running[j] = (cid, pos + 1, route)
        if pos + 1 == len(route):
            running.pop(j)
    return out_t[:n], out_c[:n], [i * 0.01 for i in range(n)]


def trace_workload(path: Path, fmt: str | None, tables: int) -> tuple[list[str], list[str], list[float]]:
    """A block trace as table reads: the address space cut into `tables` equal ranges, one client."""
    trace = read_trace(path, fmt)
    width = int(trace.obj_id.max()) // tables + 1
    names = [f"tbl{int(o) // width:05d}" for o in trace.obj_id.tolist()]
    return names, [""] * len(names), trace.time.tolist()


def main(argv: list[str] | None = None) -> None:
    """Run both replays and print the latency table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=["trace", "jobs"], default="trace",
                   help="trace: tables = address ranges of --data; jobs: synthetic recurring jobs over --tables")
    p.add_argument("--data", type=Path, help="trace file (for --workload trace)")
    p.add_argument("--format", choices=FORMATS, default=None)
    p.add_argument("--tables", type=int, default=512)
    p.add_argument("--key-cache", type=int, default=32, help="unwrapped keys held")
    p.add_argument("--unwrap-ms", type=float, default=5.0, help="added latency per unwrap")
    p.add_argument("--interval-ms", type=float, default=2.0, help="time between requests in the replay")
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--train-frac", type=float, default=0.3)
    p.add_argument("--threshold", type=float, default=0.3)
    p.add_argument("--max-prefetch", type=int, default=3, help="tables prefetched per read at most")
    p.add_argument("--horizon", type=float, default=10.0, help="seconds (trace time) for training labels")
    args = p.parse_args(argv)
    if args.tables < 2 or args.key_cache < 1 or args.requests < 100:
        p.error("need --tables >= 2, --key-cache >= 1, --requests >= 100")

    if args.workload == "trace":
        if args.data is None:
            p.error("--workload trace needs --data")
        names, clients, times = trace_workload(args.data, args.format, args.tables)
        source = args.data.name
    else:
        names, clients, times = jobs_workload(int(args.requests / (1 - args.train_frac)) + 1, args.tables)
        source = "synthetic recurring jobs"
    n = len(names)
    split = int(n * args.train_frac)
    test = names[split:split + args.requests]
    test_clients = clients[split:split + args.requests]
    print(f"{source}: {n} requests over {len(set(names))} of {args.tables} tables; "
          f"train on {split}, replay {len(test)} at one per {args.interval_ms:g} ms; key cache {args.key_cache}, "
          f"unwrap +{args.unwrap_ms:g} ms")

    # Train the table predictor: tables are the "keys" of one pseudo-table, one access per request.
    accesses = [Access(time=t, table="keys", key=k, size=0, client=c)
                for t, k, c in zip(times, names, clients, strict=True)]
    cfg = replace(PredictorConfig(), model="stats", horizon_s=args.horizon, block_bytes=1, max_streams=8)
    t0 = time.time()
    scorer, info = train_scorer(accesses[:split], cfg)
    print(f"table predictor: {scorer.kind} on {info['rows']} candidates in {time.time() - t0:.1f}s")
    gen = CandidateGenerator(GeneratorSettings(block_bytes=1, max_streams=8))
    for a in accesses[:split]:
        gen.observe(a)  # warm the generator's successor tables on the training part only

    def predict_factory() -> object:
        g = gen
        clock = [float(times[split])]

        def predict(table: str, client: str) -> list[tuple[str, float]]:
            cands = g.observe(Access(time=clock[0], table="keys", key=table, size=0, client=client))
            clock[0] += args.interval_ms / 1000.0
            if not cands:
                return []
            scores = scorer.predict(np.vstack([c.features for c in cands]))
            return [(c.key, float(s)) for c, s in zip(cands, scores, strict=True)]

        return predict

    kek, master = os.urandom(32), os.urandom(32)
    sealed: dict[str, tuple[bytes, bytes]] = {}
    for t in set(test):
        nonce = os.urandom(12)
        sealed[t] = (nonce, AESGCM(derive_table_key(master, t)).encrypt(nonce, os.urandom(BLOCK), t.encode()))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_secret(Path(tmp) / "kek", {"kek.key": kek})
        write_secret(Path(tmp) / "keyring", {f"v{VERSION}.wrapped": wrap_key(kek, master, VERSION)})
        for label, with_pf in (("without prefetching", False), ("with prefetching", True)):
            provider = FixedLatencyProvider(EmbeddedKeyProvider(Path(tmp) / "kek", Path(tmp) / "keyring"),
                                            args.unwrap_ms / 1000.0)
            cache = KeyCache(provider, capacity=args.key_cache)
            lat = replay(test, test_clients, cache, sealed, args.interval_ms / 1000.0,
                         predict_factory() if with_pf else None, args.threshold, args.max_prefetch)
            ms = lat * 1000.0
            pct = np.percentile(ms, [50, 90, 99])
            rows.append((label, ms.mean(), pct[0], pct[1], pct[2], ms.max(), cache.misses, provider.calls,
                         cache.prefetched, cache.prefetch_used))
    print(f"\n{'':22} {'mean ms':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'misses':>7} "
          f"{'unwraps':>8} {'prefetched':>10} {'pf used':>8}")
    for r in rows:
        print(f"{r[0]:22} {r[1]:8.3f} {r[2]:8.3f} {r[3]:8.3f} {r[4]:8.3f} {r[5]:8.2f} {r[6]:7d} {r[7]:8d} {r[8]:10d} "
              f"{r[9]:8d}")
    base, ours = rows
    print(f"\np99 with / without prefetching: {ours[4] / base[4]:.3f}; mean {ours[1] / base[1]:.3f}; "
          f"misses {ours[6]} vs {base[6]}; extra unwraps {ours[7] - base[7]:+d}")


if __name__ == "__main__":
    main()
