"""Planted access patterns shared by the predictor tests."""

from __future__ import annotations

import random

from chronoshard.shardnode.predictor.access import Access

CHAIN = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
STEP = 0.1


def chain_phase(rng: random.Random, t: float, n: int) -> tuple[list[Access], float]:
    """A fixed successor chain entered at a random point, then one random other key."""
    out: list[Access] = []
    while len(out) < n:
        for k in CHAIN[rng.randrange(len(CHAIN)):]:
            out.append(Access(time=t, table="t", key=k, size=4096))
            t += STEP
        out.append(Access(time=t, table="t", key=f"noise-{rng.randrange(1000)}x", size=4096))
        t += STEP
    return out[:n], t


def broken_phase(rng: random.Random, t: float, n: int) -> tuple[list[Access], float]:
    """The chain stops: a chain key now and then, followed by unrelated keys."""
    out: list[Access] = []
    while len(out) < n:
        out.append(Access(time=t, table="t", key=rng.choice(CHAIN), size=4096))
        t += STEP
        for _ in range(5):
            out.append(Access(time=t, table="t", key=f"noise-{rng.randrange(1000)}x", size=4096))
            t += STEP
    return out[:n], t


def scan_phase(rng: random.Random, t: float, n: int, start: int = 0) -> tuple[list[Access], float]:
    """Sequential scans of 4 KiB blocks (8 sectors each), each of 40 blocks, with a random read between."""
    out: list[Access] = []
    while len(out) < n:
        base = start + rng.randrange(0, 100_000) * 8
        for b in range(40):
            out.append(Access(time=t, table="t", key=f"blk-{base + 8 * b:09d}", size=4096))
            t += STEP
        out.append(Access(time=t, table="t", key=f"blk-{rng.randrange(10**8):09d}", size=4096))
        t += STEP
    return out[:n], t


def feed(p: object, accesses: list[Access], batch: int = 1) -> list:
    """Feed accesses in small batches (a fast poll) and collect every hint."""
    hints = []
    for i in range(0, len(accesses), batch):
        chunk = accesses[i:i + batch]
        hints.extend(p.observe(chunk, now=chunk[-1].time))  # type: ignore[attr-defined]
    return hints
