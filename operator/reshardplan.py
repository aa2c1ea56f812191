"""Partition map layout changes (pure, no I/O): a Reshard's steps applied to a map, and the rebalance planner.

Shared by the Reshard controller (which applies each step at its turn) and the ShardSet controller (which plans
the steps of a rebalance on scale-up and scale-down), so neither controller package imports the other.

Rules (docs/resharding.md): every change gives a map of ``epoch + 1`` that still covers the keyspace exactly once
(``PartitionMap`` refuses anything else); a split keeps the partition's id for the lower half and gives the upper
half the largest id in the map + 1; a merge keeps the lower id. The planner moves whole partitions or the upper
part of one (split, then move) from shards that own more than their share to those that own less, until every
shard kept owns exactly its share of an equal cut of the keyspace (``equal_ranges``: shares differ by at most 1),
then merges adjacent partitions that ended up on one shard.
"""

from __future__ import annotations

from dataclasses import dataclass

from chronoshard.operator.spec.reshard import MAX_STEPS, MergeStep, MoveStep, ReshardStep, SplitStep
from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap, equal_ranges, format_id

TOLERANCE = 0.01  # a shard's width may differ from 2^64 / shards by this fraction and count as balanced


class LayoutError(ValueError):
    """A step cannot apply to the map in force (unknown partition, bad split point, not adjacent, ...)."""


@dataclass(frozen=True)
class Applied:
    """A step applied to a map: the new map and what status reports about the step."""

    pmap: PartitionMap
    partitions: tuple[int, ...]  # split: (kept, new); move: (moved,); merge: (kept,)
    split_at: int | None = None


def partition(pmap: PartitionMap, pid: int) -> Partition:
    """The partition with id ``pid``; LayoutError if the map has none."""
    for p in pmap.partitions:
        if p.id == pid:
            return p
    raise LayoutError(f"partition {pid} is not in the partition map (epoch {pmap.epoch})")


def width(p: Partition) -> int:
    """How many keyspace ids the partition covers."""
    return p.end - p.start + 1


def _replace(pmap: PartitionMap, drop: set[int], add: list[Partition]) -> PartitionMap:
    kept = [p for p in pmap.partitions if p.id not in drop]
    return PartitionMap(pmap.epoch + 1, pmap.shards, tuple(kept + add))


def default_split_point(p: Partition, median: int | None) -> int:
    """Where a split without ``at`` cuts: the median of the partition's blocks when it leaves both halves some
    keyspace, else the middle of the range."""
    if width(p) < 2:
        raise LayoutError(f"partition {p.id} covers a single keyspace id and cannot be split")
    if median is not None and p.start < median <= p.end:
        return median
    return p.start + width(p) // 2


def split(pmap: PartitionMap, pid: int, at: int) -> Applied:
    """Cut partition ``pid`` into ``start..at-1`` (same id) and ``at..end`` (largest id + 1), both on its shard."""
    p = partition(pmap, pid)
    if not p.start < at <= p.end:
        raise LayoutError(f"split point {format_id(at)} must be in {format_id(p.start + 1)}..{format_id(p.end)} "
                          f"(partition {pid} is {format_id(p.start)}..{format_id(p.end)})")
    new_id = max(q.id for q in pmap.partitions) + 1
    lower, upper = Partition(p.id, p.start, at - 1, p.shard), Partition(new_id, at, p.end, p.shard)
    return Applied(_replace(pmap, {p.id}, [lower, upper]), (p.id, new_id), at)


def move(pmap: PartitionMap, pid: int, to_shard: int) -> Applied:
    """Partition ``pid`` owned by ``to_shard``."""
    p = partition(pmap, pid)
    if not 0 <= to_shard < pmap.shards:
        raise LayoutError(f"shard {to_shard} is outside the map's shards 0..{pmap.shards - 1}")
    if p.shard == to_shard:
        raise LayoutError(f"partition {pid} is already on shard {to_shard}")
    return Applied(_replace(pmap, {p.id}, [Partition(p.id, p.start, p.end, to_shard)]), (p.id,))


def merge(pmap: PartitionMap, a: int, b: int) -> Applied:
    """Join adjacent partitions ``a`` and ``b`` of one shard into one that keeps the lower id."""
    pa, pb = partition(pmap, a), partition(pmap, b)
    if pa.id == pb.id:
        raise LayoutError("merge needs two different partitions")
    if pa.shard != pb.shard:
        raise LayoutError(f"partitions {a} and {b} are on different shards ({pa.shard}, {pb.shard}): move one first")
    lo, hi = (pa, pb) if pa.start < pb.start else (pb, pa)
    if lo.end + 1 != hi.start:
        raise LayoutError(f"partitions {a} and {b} are not adjacent")
    joined = Partition(min(a, b), lo.start, hi.end, lo.shard)
    return Applied(_replace(pmap, {a, b}, [joined]), (joined.id,))


def apply_step(pmap: PartitionMap, step: ReshardStep, median: int | None = None) -> Applied:
    """Apply one step; a split without ``at`` cuts at ``default_split_point`` with the node's ``median``."""
    if isinstance(step, SplitStep):
        at = step.at if step.at is not None else default_split_point(partition(pmap, step.partition), median)
        return split(pmap, step.partition, at)
    if isinstance(step, MoveStep):
        return move(pmap, step.partition, step.to_shard)
    return merge(pmap, *step.partitions)


def shard_widths(pmap: PartitionMap) -> dict[int, int]:
    """Keyspace width owned by each shard of the map (every shard listed, 0 if it owns nothing)."""
    widths = dict.fromkeys(range(pmap.shards), 0)
    for p in pmap.partitions:
        widths[p.shard] += width(p)
    return widths


def balanced(pmap: PartitionMap, shards: int, tolerance: float = TOLERANCE) -> bool:
    """True when shards ``0..shards-1`` each own within ``tolerance`` of 2^64/shards and no other shard owns any."""
    ideal = 2**64 / shards
    for s, w in shard_widths(pmap).items():
        if s >= shards and w:
            return False
        if s < shards and abs(w - ideal) > tolerance * ideal:
            return False
    return True


def targets(shards: int) -> dict[int, int]:
    """Each kept shard's exact share: the widths of an equal cut (they sum to 2^64)."""
    return {s: end - start + 1 for s, (start, end) in enumerate(equal_ranges(shards))}


def rebalance_steps(pmap: PartitionMap, shards: int, max_steps: int = MAX_STEPS) -> list[ReshardStep]:
    """The steps that leave shards ``0..shards-1`` of ``pmap`` each owning exactly its share and the others
    nothing (at most ``max_steps``: a longer plan is cut, and the next rebalance plans the rest from its map)."""
    if not 1 <= shards <= pmap.shards:
        raise LayoutError(f"cannot rebalance onto {shards} shard(s) of a map of {pmap.shards}: rescale it first")
    want = targets(shards)
    have = shard_widths(pmap)
    excess = {s: have[s] - want.get(s, 0) for s in have if have[s] > want.get(s, 0)}
    deficit = {s: want[s] - have[s] for s in want if have[s] < want[s]}
    steps: list[ReshardStep] = []
    work = pmap
    # Removed shards first (they must give everything), then the fullest.
    for donor in sorted(excess, key=lambda s: (s < shards, -excess[s], s)):
        work = _give(work, donor, excess[donor], deficit, steps)
    work = _merge_neighbours(work, steps)
    return steps[:max_steps]


def _give(work: PartitionMap, donor: int, need: int, deficit: dict[int, int], steps: list[ReshardStep]
          ) -> PartitionMap:
    """Hand ``need`` keyspace ids of ``donor`` to the shards in ``deficit`` (largest deficit first), moving
    whole partitions when they fit and the upper part of one (split + move) when they do not."""
    while need > 0:
        p = max(work.partitions_of(donor), key=lambda q: (width(q), -q.id))
        receiver = max(deficit, key=lambda s: (deficit[s], -s))
        amount = min(need, deficit[receiver], width(p))
        if amount < width(p):
            step_split = SplitStep(p.id, p.end - amount + 1)
            applied = apply_step(work, step_split)
            steps.append(step_split)
            work, moved = applied.pmap, applied.partitions[1]
        else:
            moved = p.id
        step_move = MoveStep(moved, receiver)
        work = apply_step(work, step_move).pmap
        steps.append(step_move)
        need -= amount
        deficit[receiver] -= amount
        if deficit[receiver] == 0:
            del deficit[receiver]
    return work


def _merge_neighbours(work: PartitionMap, steps: list[ReshardStep]) -> PartitionMap:
    """Merge every pair of adjacent partitions on one shard, left to right, until none is left."""
    while True:
        parts = work.partitions  # sorted by start
        pair = next(((a, b) for a, b in zip(parts, parts[1:], strict=False) if a.shard == b.shard), None)
        if pair is None:
            return work
        step = MergeStep((pair[0].id, pair[1].id))
        work = apply_step(work, step).pmap
        steps.append(step)


def simulate(pmap: PartitionMap, steps: list[ReshardStep]) -> PartitionMap:
    """The map after every step (splits need their ``at``); LayoutError at the first step that cannot apply."""
    for step in steps:
        pmap = apply_step(pmap, step).pmap
    return pmap
