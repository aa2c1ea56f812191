"""Mirroring's costs, measured on real `chronoshard-node` processes in the same run.

    python -m tests.bench.bench_mirror [--rate 1000] [--seconds 20] [--writes 4000] [--concurrency 32] [--size 1024]
        [--rounds 2]

1. **Mirror lag at a fixed write rate**: writes paced at ``--rate`` per second to an async primary for ``--seconds``;
   a watcher long-polls the mirror's applied LSN (``GET /v1/replication`` every 5 ms) and records, for each
   acknowledged write, the time from its acknowledgement until the mirror had applied its LSN. Printed: p50, p99
   and max (goal: p99 <= 1 s at 1,000 writes/s).
2. **Write throughput**, ``--concurrency`` writers of ``--size`` bytes, ``--writes`` writes a round, three setups in
   alternating rounds so drift hits all alike: no mirror (the baseline), an async mirror, a sync mirror. Printed:
   writes/s and the ratio to the baseline of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.integration.shardnode.procs import Proc, node
from tests.support.kubelet_dir import write_keyring

TIME_LIMIT = 120.0


async def _json(session: aiohttp.ClientSession, method: str, url: str, doc: Any = None) -> Any:
    async with session.request(method, url, json=doc) as resp:
        body = await resp.json(content_type=None)
        if resp.status != 200:
            raise RuntimeError(f"{method} {url}: {resp.status} {body}")
        return body


async def make_pair(session: aiohttp.ClientSession, a: Proc, b: Proc, mode: str, term: int) -> None:
    """``a`` primary, ``b`` its mirror in ``mode`` (streaming before this returns)."""
    await _json(session, "PUT", a.url + "/v1/replication",
                {"term": term, "role": "primary", "mode": mode, "mirrors": ["mirror.ns.b"], "syncTimeoutSeconds": 10,
                 "maxLagSeconds": 30, "holdTimeoutSeconds": 10})
    await _json(session, "PUT", b.url + "/v1/replication",
                {"term": term, "role": "mirror", "mode": mode, "source": {"url": a.url, "shardSet": "ns/a"},
                 "consumer": "mirror.ns.b"})
    while (await _json(session, "GET", b.url + "/v1/replication"))["state"] != "streaming":
        await asyncio.sleep(0.02)


async def _put(session: aiohttp.ClientSession, url: str, key: str, value: bytes) -> int:
    async with session.put(f"{url}/v1/tables/bench/blocks/{key}", data=value) as resp:
        body = await resp.json(content_type=None)
        if resp.status != 200:
            raise RuntimeError(f"PUT {key}: {resp.status} {body}")
        return int(body["lsn"])


# ---- 1. lag at a fixed rate ------------------------------------------------------------------------
async def lag_at_rate(session: aiohttp.ClientSession, a: Proc, b: Proc, rate: float, seconds: float,
                      size: int) -> list[float]:
    """Seconds from each acknowledgement until the mirror applied that write."""
    acked: list[tuple[int, float]] = []
    applied_at: list[tuple[int, float]] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            st = await _json(session, "GET", b.url + "/v1/replication")
            applied_at.append((int(st["appliedLsn"]), time.monotonic()))
            await asyncio.sleep(0.005)

    async def one(i: int) -> None:
        lsn = await _put(session, a.url, f"lag-{i}", os.urandom(size))
        acked.append((lsn, time.monotonic()))

    watcher = asyncio.create_task(watch())
    start = time.monotonic()
    pending: set[asyncio.Task[None]] = set()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    achieved = len(acked) / (time.monotonic() - start)
    last = max(lsn for lsn, _ in acked)
    while not applied_at or applied_at[-1][0] < last:
        await asyncio.sleep(0.01)
    done.set()
    await watcher
    print(f"  offered {rate:.0f} writes/s, achieved {achieved:.0f} writes/s")
    lags = []
    j = 0
    for lsn, t_ack in sorted(acked):
        while applied_at[j][0] < lsn:
            j += 1
        lags.append(max(0.0, applied_at[j][1] - t_ack))
    return lags


# ---- 2. throughput --------------------------------------------------------------------------------
async def throughput(session: aiohttp.ClientSession, url: str, writes: int, concurrency: int, size: int,
                     tag: str) -> float:
    """Durable writes per second with ``concurrency`` writers."""
    value = os.urandom(size)
    counter = iter(range(writes))
    deadline = time.monotonic() + TIME_LIMIT
    done = 0

    async def worker() -> None:
        nonlocal done
        for i in counter:
            if time.monotonic() > deadline:
                return
            await _put(session, url, f"{tag}-{i}", value)
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - t0)


async def main_async(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="bench-mirror-"))
    keyring = base / "keyring"
    write_keyring(keyring, 1, {1: ("primary", os.urandom(32))})
    procs = []
    for name in ("a", "b", "solo"):
        (base / name).mkdir()
        procs.append(node(base / name, keyring).start())
    a, b, solo = procs
    conn = aiohttp.TCPConnector(limit=256)
    try:
        async with aiohttp.ClientSession(connector=conn) as session:
            await make_pair(session, a, b, "async", 1)
            print(f"1. mirror lag at {args.rate:.0f} writes/s for {args.seconds:.0f} s (async mirror, {args.size} B)")
            lags = await lag_at_rate(session, a, b, args.rate, args.seconds, args.size)
            q = statistics.quantiles(lags, n=100)
            print(f"  lag p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, max {max(lags) * 1000:.1f} ms "
                  f"over {len(lags)} writes (goal: p99 <= 1000 ms)")

            print(f"\n2. durable writes/s, {args.concurrency} writers, {args.size} B, {args.writes} writes a round")
            rates: dict[str, list[float]] = {"none": [], "async": [], "sync": []}
            term = 1
            for r in range(args.rounds):
                rates["none"].append(await throughput(session, solo.url, args.writes, args.concurrency, args.size,
                                                      f"n{r}"))
                for mode in ("async", "sync"):
                    term += 1
                    await make_pair(session, a, b, mode, term)
                    rates[mode].append(await throughput(session, a.url, args.writes, args.concurrency, args.size,
                                                        f"{mode}{r}"))
            base_rate = statistics.mean(rates["none"])
            print(f"  no mirror (baseline): {base_rate:8.0f} writes/s  {[round(x) for x in rates['none']]}")
            for mode in ("async", "sync"):
                m = statistics.mean(rates[mode])
                print(f"  {mode:5} mirror:         {m:8.0f} writes/s  {[round(x) for x in rates[mode]]}  "
                      f"{m / base_rate:.2f} x the baseline")
    finally:
        for p in procs:
            p.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--writes", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
