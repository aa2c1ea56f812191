"""Synthetic request sequences for cache tests, one per workload shape (seeded, so reproducible).

None is fitted to a real trace: each exaggerates one property a policy has to cope with.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable


def _zipf_cum(n: int, alpha: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (i + 1) ** alpha for i in range(n)))


def recency_heavy(n: int = 30_000, seed: int = 1, new_share: float = 0.3, mean_gap: float = 300.0) -> list[int]:
    """Re-references of recent requests (gap drawn from an exponential): the newer, the likelier; LRU's home."""
    rng = random.Random(seed)
    out: list[int] = []
    fresh = itertools.count(1_000_000)
    for i in range(n):
        if i == 0 or rng.random() < new_share:
            out.append(next(fresh))
        else:
            gap = min(i, 1 + int(rng.expovariate(1.0 / mean_gap)))
            out.append(out[i - gap])
    return out


def frequency_heavy(n: int = 30_000, seed: int = 2, objects: int = 4000, one_hit_share: float = 0.4) -> list[int]:
    """A stable skewed popularity (Zipf 0.9) drowned in one-hit wonders: frequency must beat recency."""
    rng = random.Random(seed)
    hot = rng.choices(range(objects), cum_weights=_zipf_cum(objects, 0.9), k=n)
    fresh = itertools.count(1_000_000)
    return [next(fresh) if rng.random() < one_hit_share else h for h in hot]


def scan_loop(n: int = 30_000, seed: int = 3, objects: int = 2000, loop: int = 1500) -> list[int]:
    """A Zipf hot set, a loop over more blocks than small caches hold, and long sequential scans of new blocks."""
    rng = random.Random(seed)
    hot = iter(rng.choices(range(objects), cum_weights=_zipf_cum(objects, 0.8), k=n))
    out: list[int] = []
    loop_pos, scan_next = 0, 10_000_000
    while len(out) < n:
        r = rng.random()
        if r < 0.02:  # a scan: 50-300 blocks read once
            length = rng.randrange(50, 300)
            out.extend(range(scan_next, scan_next + length))
            scan_next += length + 1000
        elif r < 0.30:
            out.append(100_000 + loop_pos)
            loop_pos = (loop_pos + 1) % loop
        else:
            out.append(next(hot))
    return out[:n]


def zipf(n: int = 30_000, seed: int = 4, objects: int = 10_000, alpha: float = 1.0) -> list[int]:
    """Independent requests with Zipf popularity (the classic key-value cache workload)."""
    rng = random.Random(seed)
    return rng.choices(range(objects), cum_weights=_zipf_cum(objects, alpha), k=n)


def shifting(n: int = 30_000, seed: int = 5, objects: int = 3000, phases: int = 4) -> list[int]:
    """A Zipf hot set that moves to other blocks every n/phases requests: frequency that goes stale."""
    rng = random.Random(seed)
    cum = _zipf_cum(objects, 0.9)
    out: list[int] = []
    per = n // phases
    for ph in range(phases):
        perm = list(range(ph * objects // 2, ph * objects // 2 + objects))
        rng.shuffle(perm)
        out.extend(perm[i] for i in rng.choices(range(objects), cum_weights=cum, k=per))
    return out


WORKLOADS: dict[str, Callable[[], list[int]]] = {
    "recency": recency_heavy, "frequency": frequency_heavy, "scan+loop": scan_loop, "zipf": zipf,
    "shifting": shifting}
