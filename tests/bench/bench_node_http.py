"""GET latency (p50/p99) and requests/s: cache hit, cache miss, node direct, and an empty aiohttp handler (floor).

    python -m tests.bench.bench_node_http [--requests 3000] [--concurrency 16] [--size 4096]

All servers are real processes on 127.0.0.1 (the same console scripts a pod runs); the client is one async
aiohttp process with a fixed concurrency. Every scenario is bounded by a request count and a time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.integration.shardnode.procs import Proc, cache, free_port, node
from tests.support.kubelet_dir import write_keyring

TIME_LIMIT = 60.0


def serve_empty(port: int) -> None:
    """The floor: an aiohttp handler that returns a fixed small body."""
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b"ok")

    app = web.Application()
    app.router.add_get("/v1/tables/{table}/blocks/{key}", handler)
    app.router.add_get("/readyz", handler)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def load(url_for, requests: int, concurrency: int) -> dict[str, float]:
    """Issue ``requests`` GETs with ``concurrency`` in flight; latency percentiles in ms and req/s."""
    lat: list[float] = []
    errors = 0
    counter = iter(range(requests))
    deadline = time.monotonic() + TIME_LIMIT
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        async def worker() -> None:
            nonlocal errors
            for i in counter:
                if time.monotonic() > deadline:
                    return
                t0 = time.perf_counter()
                async with s.get(url_for(i)) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=100)
    return {"n": len(lat), "p50": q[49] * 1e3, "p99": q[98] * 1e3, "rps": len(lat) / wall, "errors": errors}


async def fill(url: str, keys: int, size: int) -> None:
    """Write ``keys`` blocks through ``url``."""
    async with aiohttp.ClientSession() as s:
        sem = asyncio.Semaphore(32)

        async def put(i: int) -> None:
            async with sem, s.put(f"{url}/v1/tables/bench/blocks/k{i}", data=os.urandom(size)) as r:
                assert r.status == 200, await r.text()

        await asyncio.gather(*(put(i) for i in range(keys)))


def main() -> None:
    """Start the servers, run the scenarios, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--keys", type=int, default=500)
    ap.add_argument("--serve-empty", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_empty:
        serve_empty(args.serve_empty)
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-http-"))
    keyring = tmp / "keyring"
    write_keyring(keyring, 1, {1: ("primary", os.urandom(32))})
    port = free_port()
    empty = Proc([sys.executable, "-m", "tests.bench.bench_node_http", "--serve-empty", str(port)], port,
                 tmp / "empty.log")
    n = node(tmp, keyring)
    procs: list[Proc] = []
    try:
        for p in (empty, n):
            p.start()
            procs.append(p)
        hit = cache(tmp, keyring, n.url, "--budget-bytes", str(1 << 30))
        miss = cache(tmp, keyring, n.url, "--budget-bytes", "0")  # nothing fits: every read goes to the node
        for p in (hit, miss):
            p.start()
            procs.append(p)
        asyncio.run(fill(n.url, args.keys, args.size))
        k = args.keys
        scenarios = [
            ("empty aiohttp handler (floor)", lambda i: f"{empty.url}/v1/tables/bench/blocks/k{i % k}"),
            ("node GET (decrypt on node)", lambda i: f"{n.url}/v1/tables/bench/blocks/k{i % k}"),
            ("cache GET, hit", lambda i: f"{hit.url}/v1/tables/bench/blocks/k{i % k}"),
            ("cache GET, miss (node frame + decrypt)", lambda i: f"{miss.url}/v1/tables/bench/blocks/k{i % k}"),
        ]
        asyncio.run(load(scenarios[2][1], k, args.concurrency))  # warm the hit cache with every key
        print(f"{args.size}-byte blocks, {args.requests} GETs per scenario, concurrency {args.concurrency}, "
              f"{os.cpu_count()} CPUs shared with the client")
        print(f"{'scenario':<40} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'vs floor':>9} errors")
        floor = None
        for name, url_for in scenarios:
            r = asyncio.run(load(url_for, args.requests, args.concurrency))
            floor = floor or r["rps"]
            print(f"{name:<40} {r['p50']:8.2f} {r['p99']:8.2f} {r['rps']:8.0f} {r['rps'] / floor:9.2f} "
                  f"{r['errors']}")
    finally:
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    main()
