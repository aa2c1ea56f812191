"""Test and benchmark helper: a shadow history written through the shadow's own code (HistoryStore.apply, its
snapshots every ``interval`` with ``fullEvery``), and a weave of a split of the whole keyspace woven at every
snapshot through the weaver's own code (weave/weaving.py rows, weave/store.py points), as the runner does."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chronoshard.shardnode.serving.changestream import StreamChange
from chronoshard.shardnode.shadow.history import HistoryStore
from chronoshard.shardnode.weave import weaving
from chronoshard.shardnode.weave.store import DIFFERENTIAL, FULL, LOWER, UPPER, Weave, WeaveStore

from tests.support.shadow_history import delete, open_history, put
from tests.support.stores import ring

KEYSPACE_MAX = (1 << 64) - 1
SPLIT = 1 << 63
RANGES = {LOWER: (0, SPLIT - 1), UPPER: (SPLIT, KEYSPACE_MAX)}
T0 = 1_000_000 * 3600.0
R = ring(1, (1,))


@dataclass
class Built:
    """What was built: the files, the last LSN, the snapshot LSNs, the CPU seconds of writing and of weaving."""

    history: HistoryStore
    weave_path: Path
    last_lsn: int
    snapshot_lsns: list[int] = field(default_factory=list)
    write_cpu: float = 0.0
    weave_cpu: float = 0.0


def _weave_point(store: WeaveStore, shadow_path: Path, last: dict[str, int], prev_lsn: int | None,
                 ranges: dict[str, tuple[int, int]]) -> int | None:
    """Weave the newest shadow snapshot if it is newer than the previous point (the runner's step)."""
    conn = weaving.open_shadow(shadow_path)
    try:
        snap = weaving.newest_snapshot(conn)
        if snap is None or (prev_lsn is not None and snap.lsn <= prev_lsn):
            return prev_lsn
        if prev_lsn is None:
            rows, kind = weaving.full_rows(conn, snap.id, ranges), FULL
        else:
            rows, kind = weaving.diff_rows(conn, prev_lsn, snap.lsn, ranges), DIFFERENTIAL
    finally:
        conn.close()
    points = store.add_points([("w-0-1", half, snap.boundary, snap.lsn, kind, last.get(half), snap.id, rows[half])
                               for half in ranges])
    last.update({p.half: p.id for p in points})
    return snap.lsn


def build(tmp: Path, *, keys: int, steps: int, per_step: int, interval: float = 60.0, full_every: int = 10,
          tables: Sequence[str] = ("t", "u"), value_bytes: int = 64, delete_share: float = 0.05,
          weave_from_step: int = 0, seed: int = 1, sizes: Sequence[int] | None = None,
          ranges: dict[str, tuple[int, int]] | None = None) -> Built:
    """A history of ``steps`` intervals with ``per_step`` changes each over ``keys`` keys per table (random puts,
    some deletes), snapshots with the shadow's defaults, and the weave of the split at 2^63 from ``weave_from_step``.
    ``sizes``: value sizes to draw from (a trace's request sizes) instead of ``value_bytes``; ``ranges``: the
    halves woven (default: the whole keyspace split at 2^63)."""
    halves = RANGES if ranges is None else ranges
    rnd = random.Random(seed)
    h, _ = open_history(tmp / "shadow.sqlite3")
    store = WeaveStore(tmp / "weave.sqlite3")
    store.add_weave(Weave("w-0-1", 0, halves[UPPER][0], halves[LOWER], halves[UPPER], 0.9, None, 86400.0, T0,
                          "active"))
    built = Built(h, tmp / "weave.sqlite3", 0)
    last: dict[str, int] = {}
    prev: int | None = None
    lsn = 0
    for step in range(steps):
        changes: list[StreamChange] = []
        c0 = time.process_time()  # the write's CPU: sealing as the node does, then the shadow's capture
        for i in range(per_step):
            lsn += 1
            at = T0 + step * interval + (i + 1) * interval / (per_step + 1)
            table, key = rnd.choice(tables), f"k{rnd.randrange(keys):07}"
            if rnd.random() < delete_share:
                changes.append(delete(lsn, at, table, key))
            else:
                size = rnd.choice(sizes) if sizes else value_bytes
                changes.append(put(R, lsn, at, table, key, rnd.randbytes(size)))
        h.apply(changes)
        snap = h.take_snapshot(interval, full_every)
        built.write_cpu += time.process_time() - c0
        if snap is not None:
            built.snapshot_lsns.append(snap.lsn)
        if step >= weave_from_step:
            c0 = time.process_time()
            prev = _weave_point(store, h.path, last, prev, halves)
            built.weave_cpu += time.process_time() - c0
    store.close()
    built.last_lsn = lsn
    return built
