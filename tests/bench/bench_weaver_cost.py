"""The weaver's cost and storage beside the shadow's own work on the same history, measured in the same run.

    python -m tests.bench.bench_weaver_cost --data /work/shared/data [--interval 60] [--max-value 4096]
                                            [--max-snapshots 10] [--limit 0]

Changes: the write requests of every block-I/O trace CSV under DATA in libCacheSim's format (header
``version,time,op,size,lbn``: SCSI opcodes 2a/aa/8a, or w/write, are writes), in time order; the key is the lbn, the
value ``min(size, MAX_VALUE)`` pseudo-random bytes (incompressible: a conservative case for storage), the change's
time the trace's. A real shadow history (``shardnode/shadow/history.py`` on disk, the node's frames opened and
resealed as the capture does) takes them in one batch per snapshot interval of trace time, then takes its snapshot
(fullEvery 10); after each snapshot the weaver's step runs on the same file opened read-only, as
``chronoshard-weaver`` does: the next woven point of one weave (the whole keyspace split at the median keyspace id
of the keys written in the first interval; a full point first, then differentials), written to weave.sqlite3, then
its retention (MAX_SNAPSHOTS points).

Figures: the weaver's time ÷ the shadow's (capture + snapshots) time on the same changes (what the weaver adds to
the shard's CPU, the forecasts aside), the first (full) point and the mean differential point; woven bytes after
retention ÷ the shadow's stored history bytes. A check: each half's woven state at the last point equals the
shadow's snapshot state there, filtered to the half.
"""

from __future__ import annotations

import argparse
import csv
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from chronoshard.shardnode.keyspace.partitioning import keyspace_id
from chronoshard.shardnode.serving.changestream import StreamChange
from chronoshard.shardnode.weave import retention, weaving
from chronoshard.shardnode.weave.store import DIFFERENTIAL, FULL, LOWER, UPPER, Point, WeaveStore

from tests.support.shadow_history import open_history, put
from tests.support.stores import ring

HEADER = ["version", "time", "op", "size", "lbn"]
WRITE_OPS = {"2a", "aa", "8a", "w", "write"}
TABLE = "blocks"
TOP = (1 << 64) - 1


def writes(data: Path) -> Iterator[tuple[float, str, int]]:
    """(time, key, size) of every write of every trace CSV under ``data``, per file in file order."""
    files = [f for f in sorted(data.rglob("*.csv")) if f.open().readline().strip().split(",") == HEADER]
    if not files:
        raise SystemExit(f"no block-I/O trace CSV (header {','.join(HEADER)}) under {data}")
    for f in files:
        with f.open() as fh:
            for row in csv.DictReader(fh):
                if row["op"].strip().lower() in WRITE_OPS:
                    yield float(row["time"]), f"{f.stem}-{row['lbn']}", int(row["size"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--interval", type=float, default=60.0, help="snapshot interval, trace seconds")
    ap.add_argument("--max-value", type=int, default=4096)
    ap.add_argument("--max-snapshots", type=int, default=10)
    ap.add_argument("--limit", type=int, default=0, help="at most this many writes (0: all)")
    args = ap.parse_args()
    rows = sorted(writes(args.data))
    if args.limit:
        rows = rows[:args.limit]
    t0 = rows[0][0]
    groups: dict[int, list[tuple[float, str, int]]] = {}
    for t, k, n in rows:
        groups.setdefault(int((t - t0) // args.interval), []).append((t, k, n))
    keyring = ring(1, (1,))
    rng = random.Random(20)
    base = 1_000_000 * 3600.0  # an hour boundary, so snapshot boundaries fall on the trace's intervals
    with tempfile.TemporaryDirectory() as tmp:
        h, _ = open_history(Path(tmp) / "shadow.sqlite3", keyring)
        store = WeaveStore(Path(tmp) / "weave.sqlite3")
        capture = snap = weave = full_s = 0.0
        diffs: list[float] = []
        lsn = 0
        ranges: dict[str, tuple[int, int]] = {}
        prev: dict[str, Point] = {}
        for g in sorted(groups):
            changes: list[StreamChange] = []
            for t, k, n in groups[g]:
                lsn += 1
                changes.append(put(keyring, lsn, base + (t - t0), TABLE, k, rng.randbytes(min(n, args.max_value))))
            started = time.process_time()
            h.apply(changes)
            capture += time.process_time() - started
            started = time.process_time()
            while h.take_snapshot(args.interval, 10) is not None:
                pass
            snap += time.process_time() - started
            if not ranges:  # the split: the median keyspace id of the first interval's keys
                ids = sorted(keyspace_id(TABLE, c.key) for c in changes)
                at = retention.split_key(0, TOP, ids[(len(ids) - 1) // 2])
                assert at is not None
                lo, up = retention.halves(0, TOP, at)
                ranges = {LOWER: lo, UPPER: up}
            started = time.process_time()
            conn = weaving.open_shadow(h.path)
            point = weaving.newest_snapshot(conn)
            if point is None or (prev and prev[LOWER].point_time >= point.boundary):
                conn.close()
                continue
            full = not prev
            got = (weaving.full_rows(conn, point.id, ranges) if full
                   else weaving.diff_rows(conn, prev[LOWER].lsn, point.lsn, ranges))
            conn.close()
            made = store.add_points([("w", half, point.boundary, point.lsn, FULL if full else DIFFERENTIAL,
                                      None if full else prev[half].id, point.id, got[half]) for half in (LOWER, UPPER)])
            prev = {p.half: p for p in made}
            plan = retention.plan_retention([retention.PointRef(p.id, p.half, p.point_time, p.kind)
                                             for p in store.points("w")], args.max_snapshots, 1e12, 0.0)
            if plan.drop:
                store.apply_retention(plan.materialize, plan.drop)
            spent = time.process_time() - started
            weave += spent
            if full:
                full_s = spent
            else:
                diffs.append(spent)
        history_bytes = int(h.stats()["tiers"]["hot"]["storedBytes"])
        final = h.snapshots()[-1]
        want = h.snapshot_state(final.id)
        woven: dict[tuple[str, str], int] = {}
        for half, p in prev.items():
            state = {k: r.lsn for k, r in store.state(p.id).items()}
            lo_id, hi_id = ranges[half]
            assert all(lo_id <= keyspace_id(*k) <= hi_id for k in state)
            woven |= state
        assert woven == want, "the woven halves differ from the shadow's state"
        woven_bytes = store.total_bytes()
        points = len({p.point_time for p in store.points("w")})
        store.close()
        h.close()
    shadow_s = capture + snap
    print(f"changes: {lsn} writes of {len({k for _, k, _ in rows})} keys over {rows[-1][0] - t0:.0f} s of trace; "
          f"{len(groups)} intervals of {args.interval:g} s; live keys at the end {len(want)}")
    print(f"{'':34}{'seconds (CPU)':>16}")
    print(f"{'shadow capture (baseline)':34}{capture:16.3f}")
    print(f"{'shadow snapshots (baseline)':34}{snap:16.3f}")
    print(f"{'weaver, all points + retention':34}{weave:16.3f}")
    print(f"{'  first (full) point':34}{full_s:16.3f}")
    mean = sum(diffs) / len(diffs) if diffs else 0.0
    print(f"{'  differential point, mean':34}{mean:16.4f}   ({len(diffs)} points)")
    print(f"weaver time / shadow time (capture + snapshots): {weave / shadow_s:.3f}")
    print(f"woven bytes after retention ({points} points): {woven_bytes:,}; shadow history: {history_bytes:,}; "
          f"ratio {woven_bytes / history_bytes:.3f}")
    print("check: each half's woven state at the last point equals the shadow's snapshot state there: OK")


if __name__ == "__main__":
    main()
