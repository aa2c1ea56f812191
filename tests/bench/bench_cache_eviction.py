"""Replay a real block trace through the cache's eviction policies: object and byte miss ratios, requests/s.

    python -m tests.bench.bench_cache_eviction \
        --data /work/shared/data/cache/cloudPhysicsIO/cloudPhysicsIO.oracleGeneral.bin

Reads libCacheSim's oracleGeneral format (24-byte records: u32 time, u64 obj_id, u32 size, i64 next access).
Every request counts (reads and writes, as libCacheSim does). Unit-size runs are comparable with the LRU column
of the data README (libCacheSim); byte runs use the object sizes against a byte budget, as the cache does.
The policies are the exact classes the cache uses (`shardnode/eviction.py`), driven the same way.
"""

from __future__ import annotations

import argparse
import struct
import time
from collections.abc import Callable
from pathlib import Path

from chronoshard.shardnode.eviction import AdaptiveFifoPolicy, EvictionPolicy, GreedyDualPolicy, LRUPolicy, ScoredPolicy

RECORD = struct.Struct("<IQIq")


def load(path: Path, limit: int | None) -> list[tuple[int, int]]:
    """(object id, size) per request."""
    data = path.read_bytes()
    n = len(data) // RECORD.size if limit is None else min(limit, len(data) // RECORD.size)
    return [(obj, size) for _, obj, size, _ in RECORD.iter_unpack(data[: n * RECORD.size])]


def replay(trace: list[tuple[int, int]], make: Callable[[], EvictionPolicy], capacity: int,
           unit: bool) -> tuple[float, float, float]:
    """(object miss ratio, byte miss ratio, requests/s) with the cache's own budget loop."""
    policy = make()
    sizes: dict[int, int] = {}
    used = misses = miss_bytes = total_bytes = 0
    t0 = time.perf_counter()
    for obj, size in trace:
        cost = 1 if unit else size
        total_bytes += size
        if obj in policy:
            policy.touch(obj)
            continue
        misses += 1
        miss_bytes += size
        if cost > capacity:
            continue
        while used + cost > capacity:
            victim = policy.victim()
            policy.remove(victim)
            used -= sizes.pop(victim)  # type: ignore[call-overload]
        policy.insert(obj, cost)
        sizes[obj] = cost
        used += cost
    rate = len(trace) / (time.perf_counter() - t0)
    return misses / len(trace), miss_bytes / total_bytes, rate


def main() -> None:
    """Print miss ratios at 1%, 5% and 10% of the trace footprint."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="an oracleGeneral .bin trace")
    ap.add_argument("--limit", type=int, default=None, help="only the first N requests")
    args = ap.parse_args()
    trace = load(args.data, args.limit)
    first_size: dict[int, int] = {}
    for obj, size in trace:
        first_size.setdefault(obj, size)
    objects, footprint = len(first_size), sum(first_size.values())
    print(f"{args.data.name}: {len(trace)} requests, {objects} objects, footprint {footprint / 1e6:.1f} MB")
    policies: list[tuple[str, Callable[[], EvictionPolicy]]] = [
        ("LRUPolicy", LRUPolicy), ("ScoredPolicy", ScoredPolicy), ("AdaptiveFifo", AdaptiveFifoPolicy),
        ("GreedyDual (old)", GreedyDualPolicy)]
    print(f"{'size':>5} {'mode':<6} " + " ".join(f"{name + ' miss':>22}" for name, _ in policies) + "   req/s (each)")
    for pct in (1, 5, 10):
        for unit in (True, False):
            cap = objects * pct // 100 if unit else footprint * pct // 100
            results = [replay(trace, make, cap, unit) for _, make in policies]
            cells = " ".join(f"{f'obj {r[0]:.4f} byte {r[1]:.3f}':>22}" for r in results)
            rates = " / ".join(f"{r[2]:,.0f}" for r in results)
            print(f"{pct:>4}% {'unit' if unit else 'bytes':<6} {cells}   {rates}")


if __name__ == "__main__":
    main()
