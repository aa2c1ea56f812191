"""The weaver's decisions (pure, docs/weaving.md, "The weaver"): the split key and the halves, whether a weave
continues or a new one supersedes it, when a weave whose forecast fell is dropped, and which points retention folds
and drops."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

BUCKETS = 256  # a weave continues while its split key stays in the same 1/256 of the partition's range
STALE_INTERVALS = 2  # a weave whose forecast stays below the threshold this many intervals is dropped


def split_key(start: int, end: int, median: int | None) -> int | None:
    """The split point from the partition's median keyspace id: the lower half ends at the median (the Reshard's
    ``split.at`` is the upper half's first id); None when no split fits (empty, or the median is the end)."""
    if median is None:
        return None
    at = median + 1
    return at if start < at <= end else None


def halves(start: int, end: int, at: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The lower (``start..at-1``) and upper (``at..end``) ranges of a split at ``at`` (inclusive bounds)."""
    return (start, at - 1), (at, end)


def halves_big_enough(total_bytes: int, lower_bytes: int, min_partition_bytes: int | None) -> bool:
    """Whether both halves hold at least ``min_partition_bytes`` (always, without a minimum)."""
    if not min_partition_bytes:
        return True
    return lower_bytes >= min_partition_bytes and total_bytes - lower_bytes >= min_partition_bytes


def same_bucket(start: int, end: int, a: int, b: int) -> bool:
    """Whether split keys ``a`` and ``b`` fall in the same 1/256 of ``start..end``."""
    width = max((end - start + 1) // BUCKETS, 1)
    return (a - start) // width == (b - start) // width


@dataclass(frozen=True)
class ActiveWeave:
    """What the decisions need of an active weave."""

    id: str
    partition: int
    split_key: int
    start: int  # the partition's range when the weave began
    end: int


def continues(active: ActiveWeave | None, start: int, end: int, key: int) -> bool:
    """A weave goes on when it exists for the same partition range with a split key in the same bucket; otherwise
    a new weave starts and the old one is superseded."""
    return (active is not None and (active.start, active.end) == (start, end)
            and same_bucket(start, end, active.split_key, key))


def realized(lower: tuple[int, int], upper: tuple[int, int], owned: Iterable[tuple[int, ...]]) -> bool:
    """Whether the predicted split happened: a partition of the map in force has one half's range exactly."""
    ranges = set(owned)
    return lower in ranges or upper in ranges


def stale(below_since: float | None, now: float, interval: float) -> bool:
    """A weave whose forecast has been below the threshold since ``below_since`` for two intervals."""
    return below_since is not None and now - below_since >= STALE_INTERVALS * interval - 1e-9


def weave_id(partition: int, now: float) -> str:
    """``w-<partition>-<epoch seconds>``."""
    return f"w-{partition}-{int(now)}"


@dataclass(frozen=True)
class PointRef:
    """One stored point of one half, as retention sees it."""

    id: int
    half: str
    point_time: float
    kind: str


@dataclass(frozen=True)
class RetentionPlan:
    """What to do to one weave's points: ``materialize`` turns a differential into a full point holding its whole
    state (before the points it depends on go), then ``drop`` deletes points."""

    materialize: tuple[int, ...]
    drop: tuple[int, ...]


def trimmed_to(max_snapshots: int) -> int:
    """How many points a weave keeps after going over ``max_snapshots``: about half of it, so the O(state) rewrite
    of the first survivor into a full point is paid once every ``max_snapshots // 2 + 1`` points, not at every one."""
    return max(1, max_snapshots - max_snapshots // 2)


def plan_retention(points: Sequence[PointRef], max_snapshots: int, max_age: float, now: float) -> RetentionPlan:
    """Keep at most ``max_snapshots`` points (a point: both halves at one time) of a weave and none older than
    ``max_age``: over the limit the oldest go down to ``trimmed_to(max_snapshots)``, and the first survivor of each
    half becomes full if it was a differential."""
    times = sorted({p.point_time for p in points})
    excess = len(times) - trimmed_to(max_snapshots) if len(times) > max_snapshots else 0
    old = sum(1 for t in times if t < now - max_age)
    gone = set(times[:max(excess, old)])
    if not gone:
        return RetentionPlan((), ())
    materialize: list[int] = []
    drop: list[int] = []
    for half in sorted({p.half for p in points}):
        chain = sorted((p for p in points if p.half == half), key=lambda p: p.point_time)
        dropped = [p for p in chain if p.point_time in gone]
        kept = [p for p in chain if p.point_time not in gone]
        drop += [p.id for p in dropped]
        if dropped and kept and kept[0].kind != "full":
            materialize.append(kept[0].id)
    return RetentionPlan(tuple(materialize), tuple(drop))
