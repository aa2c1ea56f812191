"""The mirror fault soak: randomized fault runs against a real primary/mirror pair, every history checked.

    python -m tests.bench.bench_mirror_faults [--mode sync|async|both] [--runs 1000] [--time-limit 3600] [--seed 1]

Each run (tests/support/mirror_runs.py): six single-key writers write sequential values to the primary and read
them back from the mirror with read-your-writes; one fault of kill -9 of the primary, SIGSTOP of the primary, kill -9
of the mirror, or a planned switchover (round robin, with random timing); the roles move as the MirrorSet controller
moves them; the writers find the new primary; every key is read back and the history checked. Printed: per fault
the runs, writes, acknowledged writes, reads, and the violations — in sync mode lost acknowledged writes and stale
reads (goal: zero), in async mode lost writes not among the LSNs the old primary reported discarded (goal: zero) —
and the time writes were held in a switchover (fence to promote, goal <= 2 s) and the driver's failover time.
Bounded by --runs and --time-limit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from tests.support.kubelet_dir import write_keyring
from tests.support.mirror_runs import FAULTS, Pair, RunResult, run_once


async def soak(mode: str, runs: int, time_limit: float, seed: int) -> list[RunResult]:
    """Up to ``runs`` runs (or ``time_limit`` seconds) against one pair."""
    base = Path(tempfile.mkdtemp(prefix=f"mirror-soak-{mode}-"))
    keyring = base / "keyring"
    write_keyring(keyring, 1, {1: ("primary", os.urandom(32))})
    pair = Pair(base / "pair", keyring, mode)
    await pair.setup()
    rng = random.Random(seed)
    out: list[RunResult] = []
    deadline = time.monotonic() + time_limit
    try:
        for i in range(runs):
            if time.monotonic() > deadline:
                break
            out.append(await run_once(pair, i, rng, FAULTS[i % len(FAULTS)]))
            if (i + 1) % 50 == 0:
                bad = sum(1 for r in out if violated(mode, r))
                print(f"  {mode}: {i + 1} runs, {bad} with a violation", flush=True)
    finally:
        await pair.close()
    return out


def violated(mode: str, r: RunResult) -> bool:
    """A run that breaks the mode's promise: in sync mode anything the checker finds; in async mode a lost write
    the old primary did not report discarded, or an impossible or phantom read (losses themselves are allowed)."""
    if mode == "sync":
        return not r.report.ok or bool(r.lost_unreported)
    return bool(r.lost_unreported or r.report.impossible or r.report.phantom)


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) >= 2 else (values[0] if values else 0.0)


def report(mode: str, results: list[RunResult]) -> None:
    """Print the per-fault table and the totals."""
    by: dict[str, list[RunResult]] = defaultdict(list)
    for r in results:
        by[r.fault].append(r)
    print(f"\n{mode}: {len(results)} runs")
    print(f"{'fault':14} {'runs':>5} {'writes':>7} {'acked':>7} {'reads':>7} {'lost':>5} {'stale':>6} "
          f"{'unreported':>10} {'failover p50/p99 s':>19}")
    for fault in FAULTS:
        rs = by.get(fault, [])
        if not rs:
            continue
        took = [r.failover_seconds or 0.0 for r in rs]
        print(f"{fault:14} {len(rs):5d} {sum(r.report.writes for r in rs):7d} "
              f"{sum(r.report.acknowledged for r in rs):7d} {sum(r.report.reads for r in rs):7d} "
              f"{sum(len(r.report.lost) for r in rs):5d} {sum(len(r.report.stale) for r in rs):6d} "
              f"{sum(len(r.lost_unreported) for r in rs):10d} {_p(took, 50):9.3f}/{_p(took, 99):.3f}")
    held = [r.held_seconds for r in results if r.held_seconds is not None]
    if held:
        print(f"switchover: writes held p50 {_p(held, 50):.3f} s, p99 {_p(held, 99):.3f} s, max {max(held):.3f} s "
              "(goal <= 2 s)")
    bad = [r for r in results if violated(mode, r)]
    print(f"runs with a violation: {len(bad)} of {len(results)} (goal 0)")
    for r in bad[:5]:
        print(f"  {r.fault}: {r.report.summary()}; unreported {r.lost_unreported[:3]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("sync", "async", "both"), default="both")
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--time-limit", type=float, default=3600.0, help="seconds per mode")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    for mode in (("sync", "async") if args.mode == "both" else (args.mode,)):
        results = asyncio.run(soak(mode, args.runs, args.time_limit, args.seed))
        report(mode, results)


if __name__ == "__main__":
    main()
