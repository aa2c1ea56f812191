"""Durable write throughput (vs the disk's fsync rate) and rewrap throughput (vs raw AES-GCM decrypt+encrypt).

    python -m tests.bench.bench_node_write [--writes 2000] [--blocks 5000] [--size 4096] [--dir /tmp]

Writes go over HTTP to a real `chronoshard-node` on 127.0.0.1 and count only after the 200 (the node answers
after its SQLite commit with synchronous=FULL). The floor for one writer is one fsync per write, measured on a
file in the same directory in the same run. Rewrap runs the node's own batch code on a real store.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import aiohttp
from chronoshard.shardnode.keys import frames
from chronoshard.shardnode.keys.keyring import Keyring, KeyVersion
from chronoshard.shardnode.node import rewrap
from chronoshard.shardnode.node.store import Store

from tests.integration.shardnode.procs import node
from tests.support.kubelet_dir import write_keyring

TIME_LIMIT = 60.0


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


async def put_load(url: str, writes: int, concurrency: int, size: int) -> float:
    """Acknowledged PUTs per second with ``concurrency`` writers."""
    body = os.urandom(size)
    counter = iter(range(writes))
    done = 0
    deadline = time.monotonic() + TIME_LIMIT
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


def main() -> None:
    """Run both measurements and print them."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--writes", type=int, default=2000)
    ap.add_argument("--blocks", type=int, default=5000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dir", default=None, help="where the store lives (default: a temp dir)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-write-", dir=args.dir))
    keyring = tmp / "keyring"
    write_keyring(keyring, 1, {1: ("primary", KEYS[1])})
    (tmp / "data").mkdir()
    fs = fsync_rate(tmp / "data", args.size, 300)
    sq = sqlite_commit_rate(tmp / "data", args.size, 300)
    n = node(tmp, keyring).start()
    try:
        print(f"durable writes of {args.size}-byte blocks over HTTP (ack after SQLite commit, synchronous=FULL)")
        print(f"  fsync floor (append {args.size} B + fsync, same dir):      {fs:8.0f} /s")
        print(f"  SQLite floor (1-row txn, WAL, synchronous=FULL, in-process): {sq:8.0f} /s")
        for c in (1, 32):
            rate = asyncio.run(put_load(n.url, args.writes if c > 1 else args.writes // 4, c, args.size))
            print(f"  {c:>2} concurrent writer(s): {rate:8.0f} writes/s  {rate * args.size / 1e6:6.1f} MB/s  "
                  f"{rate / fs:5.2f}x fsync rate  {rate / sq:5.2f}x SQLite floor")
    finally:
        n.stop()
    rate, raw = asyncio.run(rewrap_bench(tmp / "rewrap", args.blocks, args.size, args.batch))
    print(f"rewrap of {args.blocks} {args.size}-byte blocks v1 -> v2, batches of {args.batch}:")
    print(f"  raw AESGCM decrypt+encrypt: {raw:8.0f} blocks/s {raw * args.size / 1e6:7.1f} MB/s")
    print(f"  rewrap (store, durable)   : {rate:8.0f} blocks/s {rate * args.size / 1e6:7.1f} MB/s  "
          f"ratio {rate / raw:.2f}")


if __name__ == "__main__":
    main()
