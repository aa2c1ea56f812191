"""Recovery of a post-split partition from a woven snapshot beside the standard path, on the same history, in one run.

    python -m tests.bench.bench_weave_recovery [--data /work/shared/data] [--keys 4000] [--steps 40]
                                               [--per-step 400] [--partitions 16] [--points 8] [--max-value 4096]

A real shadow history (``shardnode/shadow/history.py`` on disk, the node's frames resealed as the capture does) takes
``steps`` snapshot intervals of ``per-step`` random puts (5% deletes) over ``keys`` keys in each of two tables, with
the shadow's snapshot defaults (interval 60 s, fullEvery 10). The shard holds ``partitions`` equal partitions of the
keyspace; partition 0 is split at its middle and woven at every snapshot from the fifth interval on through the
weaver's own code (``weave/weaving.py`` rows, ``weave/store.py`` points: a full point, then differentials), as
``chronoshard-weaver`` does. With ``--data``, value sizes are drawn from the write sizes of the block-I/O trace
CSVs under DATA (libCacheSim's ``version,time,op,size,lbn``; CloudPhysics), capped at MAX_VALUE; else 512 bytes.

Figures (each beside its baseline from the same run):
- the state of the upper half (the partition the split created) at ``points`` LSNs after the weave began, by
  ``shadow/wovenbase.py``'s two paths: woven point + replay ÷ newest shadow snapshot (its chain, filtered) + replay,
  wall time (goal ≥ 5× faster); their digests must be identical (checked; the run fails otherwise);
- storage: woven bytes (the zstd pages of both halves' points) ÷ the standard snapshots' storage, defined as the
  ``snapshot_entries`` table's pages (SQLite dbstat, its index included) plus the stored bytes of the history
  frames the snapshots point to (each distinct version once) — what keeping the snapshots costs (goal ≤ 15% extra);
- the weaver's CPU share: process CPU of the weaving steps ÷ the write path's CPU over the same workload (sealing
  each value as the node does, the shadow's capture and its snapshots).
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from chronoshard.shardnode.shadow import wovenbase
from chronoshard.shardnode.weave.store import LOWER, UPPER

from tests.bench.bench_weaver_cost import writes
from tests.support.woven_history import KEYSPACE_MAX, build


def _snapshot_storage(conn: sqlite3.Connection) -> tuple[int, int]:
    """(snapshot_entries pages with its indexes, stored bytes of the distinct versions they point to)."""
    pages = conn.execute("SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name IN (SELECT name FROM sqlite_master "
                         "WHERE tbl_name = 'snapshot_entries')").fetchone()[0]
    pinned = conn.execute("SELECT coalesce(sum(length(f.frame)), 0) FROM (SELECT DISTINCT tbl, key, lsn FROM "
                          "snapshot_entries) e JOIN frames f ON f.tbl = e.tbl AND f.key = e.key AND f.lsn = e.lsn"
                          ).fetchone()[0]
    return int(pages), int(pinned)


def _woven_storage(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT coalesce(sum(length(data)), 0) FROM woven_pages").fetchone()[0])
    finally:
        conn.close()


def _timed(fn: object, *args: object) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn(*args)  # type: ignore[operator]
    return time.perf_counter() - started, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="draw value sizes from the block-I/O traces here")
    ap.add_argument("--keys", type=int, default=4000, help="keys per table")
    ap.add_argument("--steps", type=int, default=40, help="snapshot intervals of history")
    ap.add_argument("--per-step", type=int, default=400, help="changes per interval")
    ap.add_argument("--partitions", type=int, default=16, help="equal partitions of the shard's keyspace")
    ap.add_argument("--points", type=int, default=8, help="restore points (LSNs after the weave began)")
    ap.add_argument("--max-value", type=int, default=4096)
    args = ap.parse_args()
    sizes = None
    if args.data is not None:
        sizes = [min(n, args.max_value) for _, _, n in writes(args.data)]
    width = (KEYSPACE_MAX + 1) // args.partitions
    mid = width // 2
    halves = {LOWER: (0, mid - 1), UPPER: (mid, width - 1)}  # partition 0 split at its middle
    weave_from = 4
    with tempfile.TemporaryDirectory() as tmp:
        built = build(Path(tmp), keys=args.keys, steps=args.steps, per_step=args.per_step, interval=60.0,
                      full_every=10, value_bytes=512, weave_from_step=weave_from, seed=20, sizes=sizes,
                      ranges=halves)
        conn = sqlite3.connect(f"file:{built.history.path}?mode=ro", uri=True)
        with sqlite3.connect(built.weave_path) as w:
            first_woven = int(w.execute("SELECT min(lsn) FROM woven").fetchone()[0])
        rnd = random.Random(5)
        points = sorted(rnd.randrange(first_woven + 1, built.last_lsn + 1) for _ in range(args.points))
        rng = halves[UPPER]
        woven_s: list[float] = []
        std_s: list[float] = []
        replayed: list[int] = []
        for lsn in points:
            s_std, (std_base, std) = _timed(wovenbase.standard_state, conn, rng, lsn)  # type: ignore[misc]
            s_wov, (base, state) = _timed(wovenbase.state_at, conn, built.weave_path, [rng], lsn)  # type: ignore[misc]
            if base.kind != "woven":
                raise SystemExit(f"LSN {lsn}: no woven snapshot was used ({base})")
            if wovenbase.digest(state) != wovenbase.digest(std):
                raise SystemExit(f"LSN {lsn}: the woven and the standard states differ")
            woven_s.append(s_wov)
            std_s.append(s_std)
            replayed.append(lsn - base.lsn)
        entry_pages, pinned = _snapshot_storage(conn)
        snapshots = conn.execute("SELECT count(*), sum(kind = 'full') FROM snapshots").fetchone()
        conn.close()
        woven_bytes = _woven_storage(built.weave_path)
        keys_in_half = len(state)
        built.history.close()
    standard = entry_pages + pinned
    print(f"history: {built.last_lsn} changes over {args.keys} keys x 2 tables, {args.steps} intervals, "
          f"{snapshots[0]} shadow snapshots ({snapshots[1]} full); value sizes "
          f"{'from ' + str(args.data) if args.data else '512 B'}; partition 0 of {args.partitions} split, "
          f"upper half {keys_in_half} keys at the last point")
    print(f"restore of the upper half to {len(points)} points (digests identical at every one): "
          f"woven + replay median {statistics.median(woven_s) * 1000:.1f} ms (replaying median "
          f"{statistics.median(replayed):.0f} LSNs) vs snapshot + replay median "
          f"{statistics.median(std_s) * 1000:.1f} ms "
          f"(baseline): {sum(std_s) / sum(woven_s):.1f}x faster (goal >= 5x)")
    print(f"storage: woven {woven_bytes} B vs standard snapshots {standard} B (baseline: snapshot_entries pages "
          f"{entry_pages} B + pinned frames {pinned} B): {woven_bytes / standard * 100:.1f}% extra (goal <= 15%)")
    print(f"weaver CPU: {built.weave_cpu:.2f} s vs write path {built.write_cpu:.2f} s (baseline: sealing, capture, "
          f"snapshots): {built.weave_cpu / built.write_cpu * 100:.1f}% share")


if __name__ == "__main__":
    main()
