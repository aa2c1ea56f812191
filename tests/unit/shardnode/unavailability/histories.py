"""Small synthetic health histories for the unavailability tests: seeded, 10-s samples."""

from __future__ import annotations

import random

from chronoshard.shardnode.unavailability.types import HealthPoint

STEP = 10.0


def healthy(rng: random.Random, t: float, restarts: int = 0, free: float = 0.6) -> HealthPoint:
    """A healthy sample at ``t``."""
    p50 = rng.uniform(1.0, 3.0)
    return HealthPoint(time=t, up=True, latency_p50_ms=p50, latency_p99_ms=p50 * rng.uniform(3, 6),
                       error_rate=0.0 if rng.random() < 0.9 else rng.uniform(0, 0.01),
                       capacity_free_ratio=free + rng.uniform(-0.002, 0.002), restarts=restarts, lag_seconds=None)


def down(t: float) -> HealthPoint:
    """A failed probe at ``t``."""
    return HealthPoint(time=t, up=False)


def precursor_history(seed: int, hours: float = 6.0, ramp_s: float = 600.0) -> list[HealthPoint]:
    """A copy whose outages (every ~75 min, 5 min long) follow a ``ramp_s`` rise of its error rate to 0.5; between
    them, healthy noise with short error blips that recover (so a level alone is not the answer)."""
    rng = random.Random(seed)
    n = int(hours * 3600 / STEP)
    pts: list[HealthPoint] = []
    cycle = int(4500 / STEP)
    ramp, outage = int(ramp_s / STEP), int(300 / STEP)
    for i in range(n):
        t = 1_700_000_000.0 + i * STEP
        k = i % cycle
        if k >= cycle - outage:
            pts.append(down(t))
            continue
        p = healthy(rng, t)
        if k >= cycle - outage - ramp:
            share = (k - (cycle - outage - ramp)) / ramp
            p = HealthPoint(**{**p.__dict__, "error_rate": 0.5 * share + rng.uniform(0, 0.02)})
        elif k % 97 == 13:
            p = HealthPoint(**{**p.__dict__, "error_rate": rng.uniform(0.1, 0.3)})
        pts.append(p)
    return pts
