"""The cost of a change-stream consumer: the node's durable write rate with no consumer vs with one consumer
reading every change with its frame and acking, in the same run, and whether that consumer keeps up.

    python -m tests.bench.bench_changestream [--writes 3000] [--concurrency 32] [--size 4096] [--rounds 2]

Writes go over HTTP to a real `chronoshard-node` process and count after the 200 (ack after the SQLite commit,
synchronous=FULL). Rounds alternate no slot / a slot nobody reads (the cost of logging frames alone) / a
consumer, so drift (other load on the machine) hits all three. The consumer (`ChangeStreamClient`, long-polling
`GET /v1/changes?frames=true`, one ack per page) runs in the load generator's event loop; its lag is the slot's
`lagLsn` (the node's last LSN minus the ack), sampled every 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from chronoshard.shardnode.serving.changestream import ChangeStreamClient

from tests.integration.shardnode.procs import node
from tests.support.kubelet_dir import write_keyring

TIME_LIMIT = 60.0


@dataclass
class Lag:
    """What the consumer saw: pages, changes, bytes of frames; its slot's lag (LSNs) sampled every 20 ms during
    the load; how long it took to reach the last LSN after the load stopped."""

    pages: int = 0
    changes: int = 0
    frame_bytes: int = 0
    samples: list[int] = field(default_factory=list)
    drain_seconds: float = 0.0


async def put_load(session: aiohttp.ClientSession, url: str, prefix: str, writes: int, concurrency: int,
                   size: int) -> float:
    """Acknowledged PUTs per second with ``concurrency`` writers."""
    body = os.urandom(size)
    counter = iter(range(writes))
    done = 0
    deadline = time.monotonic() + TIME_LIMIT

    async def writer() -> None:
        nonlocal done
        for i in counter:
            if time.monotonic() > deadline:
                return
            async with session.put(f"{url}/v1/tables/w/blocks/{prefix}-{i}", data=body) as r:
                assert r.status == 200, await r.text()
                done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(concurrency)))
    return done / (time.perf_counter() - t0)


async def consume(cs: ChangeStreamClient, name: str, after: int, target: asyncio.Future[int], lag: Lag) -> None:
    """Read pages with frames and ack each, until the ack reaches ``target`` (the last LSN once the load ended)."""
    while not (target.done() and after >= target.result()):
        page = await cs.changes(after, limit=1000, wait=0.5)
        assert not page.gap
        if page.changes:
            lag.pages += 1
            lag.changes += len(page.changes)
            lag.frame_bytes += sum(len(c.frame or b"") for c in page.changes)
            assert all(c.frame is not None for c in page.changes if c.op == "put")
            await cs.ack(name, page.next)
        after = page.next


async def sample_lag(cs: ChangeStreamClient, name: str, stop: asyncio.Event, lag: Lag) -> None:
    """The slot's lag as the node computes it (last LSN minus ack), every 20 ms."""
    while not stop.is_set():
        lag.samples.append((await cs.consumer(name))["lagLsn"])
        await asyncio.sleep(0.02)


async def bench(url: str, writes: int, concurrency: int, size: int, rounds: int) -> None:
    """Alternate rounds without and with the consumer; print each and the ratio of the medians."""
    plain: list[float] = []
    with_consumer: list[float] = []
    slot_only: list[float] = []
    lags: list[Lag] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency + 4)) as s:
        cs = ChangeStreamClient(url, s)
        for r in range(rounds):
            plain.append(await put_load(s, url, f"p{r}", writes, concurrency, size))
            print(f"  round {r + 1}: no consumer      {plain[-1]:8.0f} writes/s")
            await cs.register("idle", reset=True)  # frames recorded, nobody reading: the storage cost alone
            slot_only.append(await put_load(s, url, f"i{r}", writes, concurrency, size))
            await cs.unregister("idle")
            print(f"  round {r + 1}: slot, no reader  {slot_only[-1]:8.0f} writes/s")
            slot = await cs.register("bench", reset=True)
            stop, lag = asyncio.Event(), Lag()
            target: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            reader = asyncio.create_task(consume(cs, "bench", slot["ackedLsn"], target, lag))
            sampler = asyncio.create_task(sample_lag(cs, "bench", stop, lag))
            with_consumer.append(await put_load(s, url, f"c{r}", writes, concurrency, size))
            stop.set()
            ended = time.perf_counter()
            target.set_result((await cs.consumers())["lastLsn"])
            await asyncio.wait_for(reader, 60)
            lag.drain_seconds = time.perf_counter() - ended
            await sampler
            await cs.unregister("bench")
            lags.append(lag)
            print(f"  round {r + 1}: one consumer     {with_consumer[-1]:8.0f} writes/s  read {lag.changes} changes "
                  f"in {lag.pages} pages ({lag.frame_bytes / 1e6:.1f} MB of frames); slot lag max "
                  f"{max(lag.samples)} LSNs, median {statistics.median(lag.samples):.0f} ({len(lag.samples)} samples);"
                  f" caught up {lag.drain_seconds:.2f} s after the load")
    ratio = statistics.median(with_consumer) / statistics.median(plain)
    base = statistics.median(plain)
    print(f"median: {base:.0f} writes/s without a consumer; {statistics.median(slot_only):.0f} with a slot "
          f"(frames logged, ratio {statistics.median(slot_only) / base:.2f}); {statistics.median(with_consumer):.0f} "
          f"with one consumer reading and acking (ratio {ratio:.2f})")
    worst = max(max(lag.samples) for lag in lags)
    print(f"consumer keeps up: worst slot lag {worst} LSNs of {writes} writes per round; "
          f"worst catch-up after the load {max(lag.drain_seconds for lag in lags):.2f} s")


def main() -> None:
    """Start a node process and run the rounds."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--writes", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dir", default=None, help="where the store lives (default: a temp dir)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-changestream-", dir=args.dir))
    keyring = tmp / "keyring"
    write_keyring(keyring, 1, {1: ("primary", os.urandom(32))})
    n = node(tmp, keyring, config={"trimIntervalSeconds": 3600}).start()
    try:
        print(f"durable {args.size}-byte writes over HTTP, {args.concurrency} concurrent writers, {args.writes} per "
              "round (ack after SQLite commit, synchronous=FULL)")
        asyncio.run(bench(n.url, args.writes, args.concurrency, args.size, args.rounds))
    finally:
        n.stop()


if __name__ == "__main__":
    main()
