"""Tier decisions (pure): where the tier horizons lie, which versions survive compaction or expire, which
snapshots are due, full or differential, and which are kept.

The rules (docs/shadow-store.md, "Tiers and snapshots"):

- **hot**: every change, for ``retention.hot`` seconds.
- **warm**: older than the hot horizon; per key the last version of each snapshot interval survives.
- **cold**: older than the warm horizon; per key the last version of each hour survives.
- **expired**: older than the cold horizon; only the base state at that horizon survives (per key the latest
  version before it, unless that is a delete).

Horizons are aligned to their bucket grid (multiples of the interval or the hour from the Unix epoch), so a
compaction only ever touches complete buckets, and the state at each bucket boundary is unchanged by it.
Deletes are versions like any other: a delete that is the last of its bucket survives as a tombstone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

HOT, WARM, COLD = 0, 1, 2
TIER_NAMES = ("hot", "warm", "cold")
COLD_BUCKET_SECONDS = 3600.0
PUT, DELETE, REWRAP, SEED = "put", "delete", "rewrap", "seed"
OPS = (PUT, DELETE, REWRAP, SEED)
FULL, DIFFERENTIAL = "full", "differential"


class Retention(Protocol):
    """How long each tier holds a version (config.RetentionSettings has these fields)."""

    @property
    def hot_seconds(self) -> float: ...
    @property
    def warm_seconds(self) -> float: ...
    @property
    def cold_seconds(self) -> float: ...


@dataclass(frozen=True)
class Horizons:
    """Versions with time < ``warm_before`` leave hot; < ``cold_before`` leave warm; < ``expire_before`` expire."""

    warm_before: float
    cold_before: float
    expire_before: float
    interval: float


@dataclass(frozen=True)
class Candidate:
    """One stored version as the compaction sees it."""

    table: str
    key: str
    lsn: int
    time: float
    op: str


@dataclass(frozen=True)
class Survivor:
    """A version that stays, with the op it stands for once the versions before it in its bucket are gone."""

    table: str
    key: str
    lsn: int
    op: str


def floor_to(t: float, step: float) -> float:
    """``t`` rounded down to a multiple of ``step`` (from the Unix epoch)."""
    return math.floor(t / step) * step


def horizons(now: float, retention: Retention, interval: float) -> Horizons:
    """The three horizons at ``now``, each aligned to its tier's bucket grid and never out of order."""
    if interval <= 0:
        raise ValueError("the snapshot interval must be positive")
    warm_before = floor_to(now - retention.hot_seconds, interval)
    cold_before = min(warm_before, floor_to(now - retention.warm_seconds, COLD_BUCKET_SECONDS))
    expire_before = min(cold_before, floor_to(now - retention.cold_seconds, COLD_BUCKET_SECONDS))
    return Horizons(warm_before, cold_before, expire_before, interval)


def _merged_op(survivor_op: str, pending: str | None) -> str:
    """A surviving rewrap stands for the content change of a dropped version before it (else: its own op)."""
    if survivor_op == REWRAP and pending is not None and pending != DELETE:
        return pending
    return survivor_op


def _by_key(rows: Iterable[Candidate]) -> dict[tuple[str, str], list[Candidate]]:
    groups: dict[tuple[str, str], list[Candidate]] = {}
    for r in rows:
        groups.setdefault((r.table, r.key), []).append(r)
    for g in groups.values():
        g.sort(key=lambda r: r.lsn)
    return groups


def _thin_key(rows: Sequence[Candidate], bucket: float, protected: frozenset[tuple[str, str, int]]) -> list[Survivor]:
    """One key's rows (LSN order): keep the last of each bucket and every protected one."""
    out: list[Survivor] = []
    pending: str | None = None  # the latest content-changing op among dropped rows since the last survivor
    for i, r in enumerate(rows):
        last_of_bucket = i + 1 == len(rows) or floor_to(rows[i + 1].time, bucket) != floor_to(r.time, bucket)
        if last_of_bucket or (r.table, r.key, r.lsn) in protected:
            out.append(Survivor(r.table, r.key, r.lsn, _merged_op(r.op, pending)))
            pending = None
        elif r.op != REWRAP:
            pending = r.op
    return out


def thin(rows: Iterable[Candidate], bucket: float,
         protected: frozenset[tuple[str, str, int]] = frozenset()) -> list[Survivor]:
    """The versions that survive compaction to ``bucket`` seconds: per key the last of each bucket, plus the
    ``protected`` (table, key, lsn) ones (versions a kept snapshot points to). Rows not returned are dropped."""
    out: list[Survivor] = []
    for group in _by_key(rows).values():
        out.extend(_thin_key(group, bucket, protected))
    return out


def expire(rows: Iterable[Candidate]) -> list[Survivor]:
    """Of the versions older than the cold horizon, what survives: per key the latest, unless it is a delete
    (so the state at the horizon, the oldest restorable point, is still complete)."""
    out: list[Survivor] = []
    for group in _by_key(rows).values():
        last = group[-1]
        if last.op == DELETE:
            continue
        pending = next((r.op for r in reversed(group[:-1]) if r.op != REWRAP), None)
        out.append(Survivor(last.table, last.key, last.lsn, _merged_op(last.op, pending)))
    return out


# --- snapshots ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotRef:
    """A stored snapshot: the state at ``boundary`` (every version with time < boundary), LSN ``lsn``."""

    id: int
    boundary: float
    lsn: int
    kind: str
    base: int | None  # the snapshot a differential is relative to (None for a full one)


def due_boundary(last_boundary: float | None, latest_time: float | None, interval: float) -> float | None:
    """The boundary to snapshot now, or None: the latest interval boundary at or before the newest applied
    change, if it is after the last snapshot (a boundary is only safe once a change at or after it arrived)."""
    if latest_time is None:
        return None
    b = floor_to(latest_time, interval)
    if last_boundary is not None and b <= last_boundary:
        return None
    return b


def snapshot_kind(boundary: float, last_full_boundary: float | None, interval: float, full_every: int,
                  granularity: str = DIFFERENTIAL) -> str:
    """``full`` for the first snapshot of each ``full_every`` x ``interval`` period (or always, with
    granularity ``full``), else ``differential``: a restore then reads one full and at most full_every - 1
    differentials."""
    if granularity == FULL or last_full_boundary is None or full_every <= 1:
        return FULL
    period = interval * full_every
    return FULL if floor_to(boundary, period) > floor_to(last_full_boundary, period) else DIFFERENTIAL


def _first_full_per_hour(snaps: Sequence[SnapshotRef], h: Horizons) -> set[int]:
    keep: set[int] = set()
    seen_hours: set[float] = set()
    for s in sorted(snaps, key=lambda s: s.boundary):
        if s.kind != FULL or not h.expire_before <= s.boundary < h.cold_before:
            continue
        hour = floor_to(s.boundary, COLD_BUCKET_SECONDS)
        if hour not in seen_hours:
            seen_hours.add(hour)
            keep.add(s.id)
    return keep


def snapshots_to_keep(snaps: Sequence[SnapshotRef], h: Horizons) -> set[int]:
    """Ids of the snapshots that stay: all of them from the cold horizon on; in the cold range the first full
    snapshot of each hour; none before the expiry horizon. A differential whose base chain lost a member goes
    too (it could no longer be restored)."""
    keep = {s.id for s in snaps if s.boundary >= h.cold_before} | _first_full_per_hour(snaps, h)
    for s in sorted(snaps, key=lambda s: s.boundary):  # a base always has an earlier boundary
        if s.id in keep and s.kind == DIFFERENTIAL and (s.base is None or s.base not in keep):
            keep.discard(s.id)
    return keep


def restore_chain(snaps: Sequence[SnapshotRef], snapshot_id: int) -> list[SnapshotRef]:
    """The snapshots a restore to ``snapshot_id`` reads, full one first; ValueError if the chain is broken."""
    by_id = {s.id: s for s in snaps}
    chain: list[SnapshotRef] = []
    cur = by_id.get(snapshot_id)
    while cur is not None:
        chain.append(cur)
        if cur.kind == FULL:
            return list(reversed(chain))
        cur = by_id.get(cur.base) if cur.base is not None else None
    raise ValueError(f"snapshot {snapshot_id} has no complete chain to a full snapshot")
