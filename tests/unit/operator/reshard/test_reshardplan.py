"""The pure layout changes and the rebalance planner (operator/reshardplan.py): split, move and merge rules, and
for random maps and shard counts a plan whose every step applies, that covers the keyspace once at every step,
raises the epoch by one per step, and ends with every kept shard within 1% of 2^64/shards."""

from __future__ import annotations

import pytest
from chronoshard.operator import reshardplan as rp
from chronoshard.operator.spec.reshard import MergeStep, MoveStep, SplitStep
from chronoshard.shardnode.keyspace.partitioning import (
    KEYSPACE_MAX,
    KEYSPACE_SIZE,
    Partition,
    PartitionMap,
    initial_map,
    rescale,
)
from hypothesis import given, settings
from hypothesis import strategies as st


def test_split_keeps_the_id_below_and_gives_the_upper_half_the_next_id():
    m = initial_map(2)
    applied = rp.split(m, 0, 100)
    assert applied.pmap.epoch == 2 and applied.partitions == (0, 2) and applied.split_at == 100
    assert rp.partition(applied.pmap, 0) == Partition(0, 0, 99, 0)
    assert rp.partition(applied.pmap, 2) == Partition(2, 100, m.partitions[0].end, 0)


@pytest.mark.parametrize("at", [0, KEYSPACE_SIZE // 2])  # start (empty lower half), past the end
def test_split_refuses_a_point_that_leaves_a_half_empty(at):
    with pytest.raises(rp.LayoutError, match="split point"):
        rp.split(initial_map(2), 0, at)


def test_default_split_point_is_the_median_inside_the_range_else_the_middle():
    p = Partition(0, 10, 19, 0)
    assert rp.default_split_point(p, 15) == 15
    assert rp.default_split_point(p, 10) == 15  # would leave the lower half empty: the middle
    assert rp.default_split_point(p, None) == 15
    with pytest.raises(rp.LayoutError):
        rp.default_split_point(Partition(0, 5, 5, 0), None)


def test_move_and_its_refusals():
    m = rescale(initial_map(2), 3)
    moved = rp.move(m, 1, 2).pmap
    assert rp.partition(moved, 1).shard == 2 and moved.epoch == m.epoch + 1
    with pytest.raises(rp.LayoutError, match="already on"):
        rp.move(m, 1, 1)
    with pytest.raises(rp.LayoutError, match="outside"):
        rp.move(m, 1, 3)
    with pytest.raises(rp.LayoutError, match="not in the partition map"):
        rp.move(m, 9, 0)


def test_merge_keeps_the_lower_id_and_needs_adjacent_partitions_on_one_shard():
    m = rp.split(rp.split(initial_map(1), 0, 100).pmap, 1, 200).pmap  # 0: ..99, 1: 100..199, 2: 200..
    merged = rp.merge(m, 2, 1)
    assert merged.partitions == (1,) and rp.partition(merged.pmap, 1) == Partition(1, 100, KEYSPACE_MAX, 0)
    with pytest.raises(rp.LayoutError, match="not adjacent"):
        rp.merge(m, 0, 2)
    two = rp.move(rescale(m, 2), 1, 1).pmap
    with pytest.raises(rp.LayoutError, match="different shards"):
        rp.merge(two, 0, 1)


def test_apply_step_split_without_at_uses_the_median():
    applied = rp.apply_step(initial_map(1), SplitStep(0), median=12345)
    assert applied.split_at == 12345


def test_scale_up_three_to_five_is_balanced():
    start = rescale(initial_map(3), 5)
    steps = rp.rebalance_steps(start, 5)
    end = rp.simulate(start, steps)
    assert rp.balanced(end, 5) and not rp.balanced(start, 5)
    assert any(isinstance(s, MoveStep) and s.to_shard in (3, 4) for s in steps)
    assert rp.rebalance_steps(end, 5) == []  # nothing more to do


def test_scale_down_five_to_three_empties_the_removed_shards_and_merges_neighbours():
    grown = rescale(initial_map(3), 5)
    grown = rp.simulate(grown, rp.rebalance_steps(grown, 5))
    steps = rp.rebalance_steps(grown, 3)
    end = rp.simulate(grown, steps)
    assert rp.balanced(end, 3)
    assert not end.partitions_of(3) and not end.partitions_of(4)
    assert rescale(end, 3).shards == 3  # no stranded partitions left
    assert any(isinstance(s, MergeStep) for s in steps)
    parts = end.partitions
    assert all(a.shard != b.shard for a, b in zip(parts, parts[1:], strict=False))


def test_rebalance_refuses_more_shards_than_the_map_has():
    with pytest.raises(rp.LayoutError, match="rescale it first"):
        rp.rebalance_steps(initial_map(2), 3)


def test_a_long_plan_is_cut_and_the_next_plan_goes_on():
    m = rescale(initial_map(1), 40)
    first = rp.rebalance_steps(m, 40, max_steps=10)
    assert len(first) == 10
    m = rp.simulate(m, first)
    for _ in range(20):
        steps = rp.rebalance_steps(m, 40, max_steps=10)
        if not steps:
            break
        m = rp.simulate(m, steps)
    assert rp.balanced(m, 40)


@st.composite
def maps(draw: st.DrawFn) -> PartitionMap:
    """A random valid map: random cut points, random owners among ``shards``."""
    shards = draw(st.integers(1, 12))
    cuts = sorted(set(draw(st.lists(st.integers(1, KEYSPACE_MAX), max_size=20))))
    starts = [0, *cuts]
    ends = [c - 1 for c in cuts] + [KEYSPACE_MAX]
    owners = draw(st.lists(st.integers(0, shards - 1), min_size=len(starts), max_size=len(starts)))
    ids = draw(st.permutations(range(len(starts))))
    parts = tuple(Partition(i, s, e, o) for i, s, e, o in zip(ids, starts, ends, owners, strict=True))
    return PartitionMap(draw(st.integers(1, 1000)), shards, parts)


@settings(max_examples=300, deadline=None)
@given(maps(), st.data())
def test_any_rebalance_keeps_coverage_raises_the_epoch_by_one_and_ends_balanced(pmap, data):
    shards = data.draw(st.integers(1, pmap.shards))
    steps = rp.rebalance_steps(pmap, shards, max_steps=10_000)
    current = pmap
    for step in steps:
        nxt = rp.apply_step(current, step).pmap  # PartitionMap itself refuses a gap or an overlap
        assert nxt.epoch == current.epoch + 1
        assert sum(p.end - p.start + 1 for p in nxt.partitions) == KEYSPACE_SIZE
        current = nxt
    assert rp.balanced(current, shards)
    assert all(not current.partitions_of(s) for s in range(shards, pmap.shards))
    assert len({p.id for p in current.partitions}) == len(current.partitions)


@settings(max_examples=200, deadline=None)
@given(maps(), st.data())
def test_random_steps_never_break_the_map(pmap, data):
    for _ in range(data.draw(st.integers(1, 10))):
        pid = data.draw(st.sampled_from([p.id for p in pmap.partitions]))
        kind = data.draw(st.sampled_from(["split", "move", "merge"]))
        step = (SplitStep(pid) if kind == "split" else MoveStep(pid, data.draw(st.integers(0, pmap.shards - 1)))
                if kind == "move" else MergeStep((pid, data.draw(st.sampled_from([p.id for p in pmap.partitions])))))
        try:
            nxt = rp.apply_step(pmap, step).pmap
        except rp.LayoutError:
            continue  # refused: the map in force stays as it was
        assert nxt.epoch == pmap.epoch + 1
        pmap = nxt
