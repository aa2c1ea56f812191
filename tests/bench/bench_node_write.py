"""Durable write throughput (vs the disk's fsync rate and one-commit-at-a-time SQLite) and rewrap throughput
(vs raw AES-GCM decrypt+encrypt).

    python -m tests.bench.bench_node_write [--writes 2000] [--blocks 5000] [--size 4096] [--dir /tmp]
        [--writers 1,4,16,32,64]

Three curves over the same writer counts, each level bounded by ``--writes`` and a time limit:

- HTTP: PUTs to a real `chronoshard-node` on 127.0.0.1, counted only after the 200 (the node answers after its
  SQLite commit with synchronous=FULL), with the mean group size (writes per commit) read from its metrics;
- in-process: the same number of asyncio tasks calling `Store.put` directly, so the group-commit design is
  compared with single commits without HTTP (and without a client sharing the two cores);
- an empty aiohttp PUT handler (reads the body, answers the same JSON, stores nothing): the ceiling of an
  HTTP server in Python on this machine, next to which the HTTP figure has to be read.

The baselines, measured in the same run before and after the curves (the mean is what the ratios use): one
fsync per append on a file in the same directory, and one-row SQLite transactions (WAL, synchronous=FULL)
committed one at a time in-process. Rewrap runs the node's own batch code on a real store.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from chronoshard.shardnode.keys import frames
from chronoshard.shardnode.keys.keyring import Keyring, KeyVersion
from chronoshard.shardnode.node import rewrap
from chronoshard.shardnode.node.store import Store

from tests.integration.shardnode.procs import Proc, free_port, node
from tests.support.kubelet_dir import write_keyring

TIME_LIMIT = 60.0  # per rewrap run
LEVEL_TIME_LIMIT = 15.0  # per writer count of a write curve


def fsync_rate(directory: Path, size: int, count: int) -> float:
    """Appends of ``size`` bytes, each followed by fsync, per second."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    data = os.urandom(size)
    try:
        t0 = time.perf_counter()
        for _ in range(count):
            os.write(fd, data)
            os.fsync(fd)
        return count / (time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()


def sqlite_commit_rate(directory: Path, size: int, count: int) -> float:
    """One-row transactions (WAL, synchronous=FULL) per second: the floor for one writer without HTTP or crypto."""
    from chronoshard.shardnode.node.store import connect

    conn = connect(directory / "probe.sqlite3")
    try:
        conn.execute("CREATE TABLE p (k INTEGER PRIMARY KEY, v BLOB)")
        data = os.urandom(size)
        t0 = time.perf_counter()
        for i in range(count):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO p (k, v) VALUES (?, ?)", (i, data))
            conn.execute("COMMIT")
        return count / (time.perf_counter() - t0)
    finally:
        conn.close()
        for f in directory.glob("probe.sqlite3*"):
            f.unlink()


def serve_empty(port: int) -> None:
    """The HTTP ceiling: a PUT handler that reads the body and answers the node's JSON, storing nothing."""
    async def put(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"table": request.match_info["table"], "key": request.match_info["key"],
                                  "lsn": 1, "keyVersion": 1, "size": len(body)})

    async def ready(request: web.Request) -> web.Response:
        return web.Response(body=b"ok")

    app = web.Application(client_max_size=8 << 20)
    app.router.add_put("/v1/tables/{table}/blocks/{key}", put)
    app.router.add_get("/readyz", ready)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def commit_counts(url: str) -> tuple[float, float] | None:
    """(transactions committed, jobs they held) from a node's metrics; None if it does not export them."""
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    found = [re.search(rf"^chronoshard_node_store_{name}_total (\S+)$", text, re.M)
             for name in ("commits", "committed_jobs")]
    if found[0] is None or found[1] is None:
        return None
    return float(found[0].group(1)), float(found[1].group(1))


def mean_group(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    """Jobs per commit between two commit_counts readings."""
    if before is None or after is None or after[0] == before[0]:
        return None
    return (after[1] - before[1]) / (after[0] - before[0])


async def put_load(url: str, writes: int, concurrency: int, size: int) -> float:
    """Acknowledged PUTs per second with ``concurrency`` writers."""
    body = os.urandom(size)
    counter = iter(range(writes))
    done = 0
    deadline = time.monotonic() + LEVEL_TIME_LIMIT
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        async def writer() -> None:
            nonlocal done
            for i in counter:
                if time.monotonic() > deadline:
                    return
                async with s.put(f"{url}/v1/tables/w/blocks/c{concurrency}-{i}", data=body) as r:
                    assert r.status == 200, await r.text()
                    done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(concurrency)))
        return done / (time.perf_counter() - t0)


async def store_load(store: Store, writes: int, concurrency: int, size: int) -> tuple[float, float | None]:
    """(durable Store.put calls per second, mean group size) with ``concurrency`` tasks, no HTTP."""
    data = os.urandom(size)
    counter = iter(range(writes))
    done = 0
    deadline = time.monotonic() + LEVEL_TIME_LIMIT

    async def writer() -> None:
        nonlocal done
        for i in counter:
            if time.monotonic() > deadline:
                return
            await store.put("w", f"c{concurrency}-{i}", data)
            done += 1

    before = (float(store.commits), float(store.committed_jobs))
    t0 = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(concurrency)))
    rate = done / (time.perf_counter() - t0)
    return rate, mean_group(before, (float(store.commits), float(store.committed_jobs)))


async def store_curve(directory: Path, levels: list[int], writes: int, size: int) -> list[tuple[float, float | None]]:
    """store_load at each writer count on one store."""
    store = Store(directory, lambda: ring(1))
    try:
        return [await store_load(store, level_writes(writes, c), c, size) for c in levels]
    finally:
        store.close()


def level_writes(writes: int, concurrency: int) -> int:
    """Writes for one level: a single writer gets a quarter (it is the slowest), the others all of ``writes``."""
    return writes if concurrency > 1 else max(1, writes // 4)


def ring(primary: int) -> Keyring:
    """Versions 1 and 2 with fixed random keys."""
    return Keyring(primary, [KeyVersion(v, "primary" if v == primary else "decrypt-only") for v in (1, 2)], KEYS)


KEYS = {1: os.urandom(32), 2: os.urandom(32)}


async def rewrap_bench(directory: Path, blocks: int, size: int, batch: int) -> tuple[float, float]:
    """(rewrap blocks/s, raw decrypt+encrypt blocks/s) on the same blocks."""
    holder = {"ring": ring(1)}
    store = Store(directory, lambda: holder["ring"])
    try:
        data = os.urandom(size)
        await asyncio.gather(*(store.put("t", f"k{i:07}", data) for i in range(blocks)))
        holder["ring"] = k2 = ring(2)
        frames_v1 = await store.read(
            lambda c: [(r[0], bytes(r[1])) for r in c.execute("SELECT key, frame FROM blocks")])
        # baseline: decrypt under v1 and encrypt under v2, nothing else
        a1, a2 = k2.aead(1, "t"), k2.aead(2, "t")
        t0 = time.perf_counter()
        for key, fr in frames_v1:
            v, nonce, ct = frames.split(fr)
            pt = a1.decrypt(nonce, ct, frames.aad_for(v, "t", key))
            a2.encrypt(os.urandom(12), pt, frames.aad_for(2, "t", key))
        raw = len(frames_v1) / (time.perf_counter() - t0)
        await store.write(lambda c: rewrap.start_in_txn(c, k2, batch))
        t0 = time.perf_counter()
        st = {"state": "running"}
        while st["state"] == "running" and time.perf_counter() - t0 < TIME_LIMIT:
            st = await store.write(lambda c: rewrap.batch_in_txn(c, k2))
        rate = st["rewrapped"] / (time.perf_counter() - t0)
        return rate, raw
    finally:
        store.close()


def http_curves(tmp: Path, keyring: Path, levels: list[int], writes: int,
                size: int) -> tuple[list[tuple[float, float | None]], list[float]]:
    """(node PUT rate and mean group size, empty-handler PUT rate) at each writer count."""
    port = free_port()
    empty = Proc([sys.executable, "-m", "tests.bench.bench_node_write", "--serve-empty", str(port)], port,
                 tmp / "empty.log")
    n = node(tmp, keyring)
    procs: list[Proc] = []
    try:
        for p in (n, empty):
            p.start()
            procs.append(p)
        asyncio.run(put_load(n.url, 200, 8, size))  # warm-up: connections, table key, SQLite pages
        asyncio.run(put_load(empty.url, 200, 8, size))
        ours: list[tuple[float, float | None]] = []
        for c in levels:
            before = commit_counts(n.url)
            rate = asyncio.run(put_load(n.url, level_writes(writes, c), c, size))
            ours.append((rate, mean_group(before, commit_counts(n.url))))
        ceiling = [asyncio.run(put_load(empty.url, level_writes(writes, c), c, size)) for c in levels]
        return ours, ceiling
    finally:
        for p in reversed(procs):
            p.stop()


def floors(directory: Path, size: int) -> tuple[float, float]:
    """(fsync appends/s, one-row SQLite commits/s) in ``directory``."""
    return fsync_rate(directory, size, 300), sqlite_commit_rate(directory, size, 300)


def print_curves(size: int, levels: list[int], fs: float, sq: float, http: list[tuple[float, float | None]],
                 ceiling: list[float], local: list[tuple[float, float | None]]) -> None:
    """The write curves as a table, each rate with its ratio to the SQLite floor."""
    def group(g: float | None) -> str:
        return "   n/a" if g is None else f"{g:6.1f}"

    print(f"{'writers':>7} | {'HTTP PUT/s':>10} {'xSQLite':>7} {'group':>6} {'MB/s':>6} | "
          f"{'empty handler/s':>15} {'ours/empty':>10} | {'in-process/s':>12} {'xSQLite':>7} {'group':>6}")
    for c, (rate, g), top, (lrate, lg) in zip(levels, http, ceiling, local, strict=True):
        print(f"{c:>7} | {rate:10.0f} {rate / sq:7.2f} {group(g)} {rate * size / 1e6:6.1f} | "
              f"{top:15.0f} {rate / top:10.2f} | {lrate:12.0f} {lrate / sq:7.2f} {group(lg)}")
    print(f"  (xSQLite: ratio to {sq:.0f} one-row commits/s; {fs:.0f} fsyncs/s; group: mean writes per commit)")


def main() -> None:
    """Run the measurements and print them."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--writes", type=int, default=2000, help="writes per writer count (a single writer: a quarter)")
    ap.add_argument("--writers", default="1,4,16,32,64", help="comma-separated writer counts")
    ap.add_argument("--blocks", type=int, default=5000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dir", default=None, help="where the store lives (default: a temp dir)")
    ap.add_argument("--serve-empty", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_empty:
        serve_empty(args.serve_empty)
        return
    levels = [int(c) for c in args.writers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-write-", dir=args.dir))
    keyring = tmp / "keyring"
    write_keyring(keyring, 1, {1: ("primary", KEYS[1])})
    (tmp / "data").mkdir()
    fs1, sq1 = floors(tmp / "data", args.size)
    http, ceiling = http_curves(tmp, keyring, levels, args.writes, args.size)
    local = asyncio.run(store_curve(tmp / "local", levels, args.writes, args.size))
    fs2, sq2 = floors(tmp / "data", args.size)
    fs, sq = (fs1 + fs2) / 2, (sq1 + sq2) / 2
    print(f"durable writes of {args.size}-byte blocks (ack after SQLite commit, synchronous=FULL), "
          f"{os.cpu_count()} CPUs shared with the client")
    print(f"  fsync floor (append {args.size} B + fsync, same dir): {fs1:8.0f} /s before, {fs2:8.0f} /s after")
    print(f"  SQLite floor (1-row txn, WAL, synchronous=FULL, in-process, one at a time): {sq1:8.0f} /s before, "
          f"{sq2:8.0f} /s after")
    print_curves(args.size, levels, fs, sq, http, ceiling, local)
    rate, raw = asyncio.run(rewrap_bench(tmp / "rewrap", args.blocks, args.size, args.batch))
    print(f"rewrap of {args.blocks} {args.size}-byte blocks v1 -> v2, batches of {args.batch}:")
    print(f"  raw AESGCM decrypt+encrypt: {raw:8.0f} blocks/s {raw * args.size / 1e6:7.1f} MB/s")
    print(f"  rewrap (store, durable)   : {rate:8.0f} blocks/s {rate * args.size / 1e6:7.1f} MB/s  "
          f"ratio {rate / raw:.2f}")


if __name__ == "__main__":
    main()
