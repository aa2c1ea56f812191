"""Rewrap pacing on one real node under read load: the fixed 50 ms pause against adaptive pacing, same run.

    python -m tests.bench.bench_rewrap_pacing [--blocks 20000] [--size 4096] [--readers 8] [--rounds 2]

A `chronoshard-node` process on 127.0.0.1 holds ``--blocks`` blocks; ``--readers`` tasks read random frames from
it (what a cache does on a miss) the whole time. Each round rotates the keyring twice more and rewraps all blocks:
once with ``pauseSeconds: 0.05`` (what routine rotations sent before #21), once adaptive (no pause given), in
alternating order. For each it prints the node's own rewrap rate (from GET /v1/rewrap) as a share of the node's
raw in-process rewrap (``bench_node_write.rewrap_bench``, same run) and the readers' p50/p99 during the rewrap
against the 5 s before it. A last run rewraps adaptively with no readers (the idle case: full speed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.bench.bench_node_write import rewrap_bench
from tests.integration.shardnode.procs import node
from tests.support.kubelet_dir import write_keyring

TIME_LIMIT = 300.0  # per rewrap


def pct(values: list[float], q: float) -> float:
    """The q-quantile of ``values`` in ms (nan if empty)."""
    if not values:
        return float("nan")
    s = sorted(values)
    return 1000 * s[min(len(s) - 1, int(q * len(s)))]


class Readers:
    """``n`` tasks reading random frames, latencies kept with their start time."""

    def __init__(self, url: str, keys: int, n: int) -> None:
        self.url, self.keys, self.n = url, keys, n
        self.samples: list[tuple[float, float]] = []
        self.failed = 0
        self._stop = False
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Readers:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.n))
        self._tasks = [asyncio.create_task(self._one()) for _ in range(self.n)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)
        await self.session.close()

    async def _one(self) -> None:
        while not self._stop:
            t0 = time.perf_counter()
            try:
                async with self.session.get(f"{self.url}/v1/tables/t/frames/k{random.randrange(self.keys):07}") as r:
                    await r.read()
                    ok = r.status == 200
            except aiohttp.ClientError:
                ok = False
            if ok:
                self.samples.append((t0, time.perf_counter() - t0))
            else:
                self.failed += 1

    def window(self, start: float, end: float) -> list[float]:
        """Latencies of the reads that started in [start, end)."""
        return [lat for t, lat in self.samples if start <= t < end]


async def put_all(url: str, blocks: int, size: int) -> None:
    """Load the node over HTTP with 32 writers."""
    body = os.urandom(size)
    keys = iter(range(blocks))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as s:
        async def writer() -> None:
            for i in keys:
                async with s.put(f"{url}/v1/tables/t/blocks/k{i:07}", data=body) as r:
                    assert r.status == 200, await r.text()
        await asyncio.gather(*(writer() for _ in range(32)))


async def rotate_and_rewrap(url: str, keyring: Path, versions: dict[int, tuple[str, bytes]],
                            pause: float | None) -> dict[str, Any]:
    """Add a primary version, wait for the node to load it, rewrap (``pause`` None: adaptive) until done."""
    new = max(versions) + 1
    for v in versions:
        versions[v] = ("decrypt-only", versions[v][1])
    versions[new] = ("primary", os.urandom(32))
    write_keyring(keyring, new, versions)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/v1/keys", params={"waitGeneration": str(new), "waitSeconds": "10"}) as r:
            assert (await r.json())["primary"] == new
        body: dict[str, Any] = {"batchSize": 256} | ({} if pause is None else {"pauseSeconds": pause})
        async with s.post(f"{url}/v1/rewrap", json=body) as r:
            assert r.status == 202, await r.text()
        deadline = time.monotonic() + TIME_LIMIT
        while time.monotonic() < deadline:
            async with s.get(f"{url}/v1/keys", params={"waitRewrap": "true", "waitSeconds": "2"}):
                pass
            async with s.get(f"{url}/v1/rewrap") as r:
                st = await r.json()
            if st["state"] == "done":
                return dict(st)
        raise TimeoutError("rewrap did not finish")


async def measured(url: str, keyring: Path, versions: dict[int, tuple[str, bytes]], readers: Readers | None,
                   pause: float | None, before: float = 5.0) -> dict[str, float]:
    """One rewrap with reads measured before and during it."""
    t_before = time.perf_counter()
    if readers is not None:
        await asyncio.sleep(before)
    t0 = time.perf_counter()
    st = await rotate_and_rewrap(url, keyring, versions, pause)
    t1 = time.perf_counter()
    out = {"rate": st["rewrapped"] / max(1e-9, st["finished"] - st["started"])}
    if readers is not None:
        b, d = readers.window(t_before, t0), readers.window(t0, t1)
        out |= {"p50_before": pct(b, 0.5), "p99_before": pct(b, 0.99), "p50": pct(d, 0.5), "p99": pct(d, 0.99),
                "rps_before": len(b) / max(1e-9, t0 - t_before), "rps": len(d) / max(1e-9, t1 - t0)}
    return out


def line(name: str, r: dict[str, float], raw: float) -> str:
    """One printed row: rewrap rate and its share of raw, read latency ratios."""
    s = f"{name:<22} rewrap {r['rate']:>7.0f} blocks/s ({r['rate'] / raw:.2f}x raw)"
    if "p50" in r:
        s += (f" | reads p50 {r['p50']:.2f} ms ({r['p50'] / r['p50_before']:.2f}x) p99 {r['p99']:.2f} ms "
              f"({r['p99'] / r['p99_before']:.2f}x), {r['rps']:.0f}/s ({r['rps'] / r['rps_before']:.2f}x)")
    return s


async def run(args: argparse.Namespace) -> None:
    """Load, then alternate fixed and adaptive rewraps under reads, then one idle adaptive rewrap."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-pacing-"))
    raw_rate, _ = await rewrap_bench(tmp / "raw", min(args.blocks, 5000), args.size, 256)
    keyring = tmp / "keyring"
    versions = {1: ("primary", os.urandom(32))}
    write_keyring(keyring, 1, versions)
    (tmp / "data").mkdir()
    n = node(tmp, keyring).start()
    try:
        await put_all(n.url, args.blocks, args.size)
        print(f"node rewrap in-process (raw, same run): {raw_rate:.0f} blocks/s; {args.blocks} blocks of "
              f"{args.size} B, {args.readers} readers")
        async with Readers(n.url, args.blocks, args.readers) as readers:
            for i in range(args.rounds):
                order = [0.05, None] if i % 2 == 0 else [None, 0.05]
                for pause in order:
                    r = await measured(n.url, keyring, versions, readers, pause)
                    print(line("fixed 50 ms pause" if pause else "adaptive", r, raw_rate), flush=True)
            print(f"failed reads: {readers.failed}")
        r = await measured(n.url, keyring, versions, None, None)
        print(line("adaptive, no readers", r, raw_rate))
    finally:
        n.stop()


def main() -> None:
    """Parse the arguments and run."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=20000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--readers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
