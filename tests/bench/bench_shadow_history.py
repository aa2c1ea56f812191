"""The shadow's history against baselines measured in the same run: stored bytes per change (versus the node's
frames and versus zstd of the plaintext), time-travel read latency (versus a plain GET of the node), and a restore
in place of many keys to a point (versus writing the same blocks fresh).

    python -m tests.bench.bench_shadow_history [--data DIR] [--changes 20000] [--keys 2000] [--reads 2000]
                                              [--restore-keys 100000]

Values: with ``--data``, records of 8 consecutive lines of the CSV files under DIR (for example NAB's series in
``../shared/data/nab``: timestamps and readings, what a table of measurements holds), cycling; without it,
synthetic JSON order records. A real node and a real shadow (the aiohttp apps of ``chronoshard-node`` and
``chronoshard-shadow``) run on 127.0.0.1 in this process; every figure goes over HTTP.

1. Bytes: CHANGES puts over KEYS keys (16 concurrent writers). The hot tier's stored bytes per change (the sealed,
   compressed history frames, checksum and codec header included; SQLite's row overhead not) beside the node's
   frames as the change stream carries them, each value compressed alone with zstd (level 3), and the whole
   plaintext stream compressed as one zstd frame (a bound no per-version store reaches).
2. Reads: READS alternating requests, one at a time: the value of a random key at a random LSN from the shadow
   (`GET /v1/tables/t/at/{key}?lsn=`) and the current value from the node (`GET /v1/tables/t/blocks/{key}`);
   p50/p99 of each and their ratio.
3. Restore: RESTORE_KEYS keys written (version 1), the point T noted, every key written again (version 2), then a
   reversion to T planned and run (conditional writes through the node); its time from run to completed beside
   writing the same blocks fresh into another table with as many concurrent writers as the reversion's batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import zstandard
from chronoshard.shardnode.serving.changestream import ChangeStreamClient
from chronoshard.shardnode.shadow.executor import BATCH

from tests.support.shadow import Pair, node_and_shadow
from tests.support.waiting import wait_for_async

TABLE = "t"
TIME_LIMIT = 900.0  # the whole run stops past this, whatever the arguments


def records(data: Path | None, seed: int = 1) -> Iterator[bytes]:
    """Endless values: 8-line records of the CSV files under ``data``, or synthetic JSON order records."""
    if data is not None:
        lines = [ln for f in sorted(data.rglob("*.csv")) for ln in f.read_bytes().splitlines()[1:]]
        if not lines:
            raise SystemExit(f"no CSV lines under {data}")
        i = 0
        while True:
            yield b"\n".join(lines[i:i + 8])
            i = (i + 8) % max(1, len(lines) - 8)
    rng = random.Random(seed)
    n = 0
    while True:
        n += 1
        yield json.dumps({"id": n, "customer": f"c{rng.randrange(5000):05d}", "status": rng.choice(
            ["new", "paid", "shipped", "delivered", "returned"]), "amount": round(rng.uniform(1, 500), 2),
            "items": [{"sku": f"sku-{rng.randrange(900):03d}", "qty": rng.randint(1, 5)}
                      for _ in range(rng.randint(1, 4))], "ts": 1764000000 + n}).encode()


async def put_all(pair: Pair, table: str, items: list[tuple[str, bytes]], concurrency: int) -> float:
    """PUT every (key, value) with ``concurrency`` writers; seconds taken."""
    it = iter(items)
    deadline = time.monotonic() + TIME_LIMIT

    async def writer() -> None:
        for key, value in it:
            if time.monotonic() > deadline:
                raise TimeoutError("the benchmark ran past its time limit")
            await pair.put(table, key, value)

    t0 = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(concurrency)))
    return time.perf_counter() - t0


def pct(xs: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``xs``, in milliseconds."""
    return statistics.quantiles(xs, n=1000)[int(q * 1000) - 1] * 1000


async def bytes_and_reads(tmp: Path, data: Path | None, changes: int, keys: int, reads: int) -> None:
    values = records(data)
    rng = random.Random(2)
    items = [(f"k{rng.randrange(keys):06d}", next(values)) for _ in range(changes)]
    async with node_and_shadow(tmp / "a", {"tables": [TABLE]}) as pair:
        secs = await put_all(pair, TABLE, items, 16)
        await pair.wait_caught_up()
        stats = pair.shadow.store.stats()
        hot = stats["tiers"]["hot"]
        frames = 0
        cs = ChangeStreamClient(pair.node_url, pair.session)
        after = 0
        while True:
            page = await cs.changes(after, limit=1000)
            frames += sum(len(c.frame or b"") for c in page.changes if c.table == TABLE)
            if page.next >= page.last_lsn:
                break
            after = page.next
        plain = [v for _, v in items]
        per_value = sum(len(zstandard.ZstdCompressor(level=3).compress(v)) for v in plain)
        stream = len(zstandard.ZstdCompressor(level=3).compress(b"".join(plain)))
        n = hot["versions"]
        print(f"1. bytes per change ({changes} puts over {keys} keys, {sum(map(len, plain)) / changes:.0f} B "
              f"plaintext on average, written in {secs:.1f} s):")
        print(f"   shadow hot tier   {hot['storedBytes'] / n:8.1f} B/change  ({n} versions; compression ratio "
              f"{stats['compressionRatio']:.2f})")
        print(f"   node frames       {frames / changes:8.1f} B/change  (shadow / frames = "
              f"{hot['storedBytes'] / n / (frames / changes):.2f})")
        print(f"   zstd per value    {per_value / changes:8.1f} B/change  (shadow / this = "
              f"{hot['storedBytes'] / n / (per_value / changes):.2f})")
        print(f"   zstd whole stream {stream / changes:8.1f} B/change  (a bound: shadow / this = "
              f"{hot['storedBytes'] / n / (stream / changes):.2f})")

        last = page.last_lsn
        tt: list[float] = []
        plain_get: list[float] = []
        async with aiohttp.ClientSession() as s:
            for i in range(reads):
                key = f"k{rng.randrange(keys):06d}"
                if i % 2 == 0:
                    t0 = time.perf_counter()
                    async with s.get(f"{pair.shadow_url}/v1/tables/{TABLE}/at/{key}",
                                     params={"lsn": rng.randint(1, last)}) as r:
                        await r.read()
                        assert r.status in (200, 404), r.status
                    tt.append(time.perf_counter() - t0)
                else:
                    t0 = time.perf_counter()
                    async with s.get(f"{pair.node_url}/v1/tables/{TABLE}/blocks/{key}") as r:
                        await r.read()
                        assert r.status in (200, 404), r.status
                    plain_get.append(time.perf_counter() - t0)
        print(f"2. reads, one at a time ({reads // 2} each, over {last} LSNs of history):")
        print(f"   time travel (value at a random LSN)  p50 {pct(tt, 0.5):6.2f} ms  p99 {pct(tt, 0.99):6.2f} ms")
        print(f"   plain GET of the node (current)      p50 {pct(plain_get, 0.5):6.2f} ms  p99 "
              f"{pct(plain_get, 0.99):6.2f} ms")
        print(f"   ratio time travel / plain GET: p50 {pct(tt, 0.5) / pct(plain_get, 0.5):.2f}, "
              f"p99 {pct(tt, 0.99) / pct(plain_get, 0.99):.2f}")


async def restore(tmp: Path, data: Path | None, n: int) -> None:
    values = records(data, seed=3)
    first = [(f"r{i:07d}", next(values)) for i in range(n)]
    second = [(k, v + b"#2") for k, v in first]
    async with node_and_shadow(tmp / "b", {"tables": [TABLE, "fresh"], "reversion": {"maxBlocks": n + 1}}) as pair:
        await put_all(pair, TABLE, first, 32)
        await pair.wait_caught_up()
        point = pair.shadow.capture.position if pair.shadow.capture is not None else 0
        await put_all(pair, TABLE, second, 32)
        await pair.wait_caught_up()
        t0 = time.perf_counter()
        status, plan = await pair.post("/v1/reversions", {"name": "bench", "tables": [TABLE], "lsn": point})
        assert status == 201, plan
        planned = time.perf_counter() - t0
        t1 = time.perf_counter()
        status, started = await pair.post("/v1/reversions/bench/run", {"digest": plan["digest"]})
        assert status == 202, started

        async def completed() -> bool:
            return (await pair.get("/v1/reversions/bench"))[1]["phase"] == "completed"

        await wait_for_async(completed, timeout=TIME_LIMIT, interval=0.2, what="the reversion to complete")
        ran = time.perf_counter() - t1
        done = (await pair.get("/v1/reversions/bench"))[1]
        assert done["done"] == n, done
        fresh = await put_all(pair, "fresh", first, BATCH)
        sample = random.Random(4).sample(first, min(n, 200))
        for key, value in sample:
            assert await pair.node_value(TABLE, key) == value, key
        print(f"3. restore in place of {n} keys to a point (plan {planned:.1f} s, then run):")
        print(f"   reversion run          {ran:7.1f} s  {n / ran:8.0f} keys/s")
        print(f"   writing them fresh     {fresh:7.1f} s  {n / fresh:8.0f} keys/s  ({BATCH} concurrent writers)")
        print(f"   ratio restore / fresh: {ran / fresh:.2f} (plan + run: {(planned + ran) / fresh:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="a directory of CSV files for the values")
    ap.add_argument("--changes", type=int, default=20000)
    ap.add_argument("--keys", type=int, default=2000)
    ap.add_argument("--reads", type=int, default=2000)
    ap.add_argument("--restore-keys", type=int, default=100000)
    ap.add_argument("--dir", default=None, help="where the stores live (default: a temp dir)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-shadow-history-", dir=args.dir))
    asyncio.run(bytes_and_reads(tmp, args.data, args.changes, args.keys, args.reads))
    if args.restore_keys:
        asyncio.run(restore(tmp, args.data, args.restore_keys))


if __name__ == "__main__":
    main()
