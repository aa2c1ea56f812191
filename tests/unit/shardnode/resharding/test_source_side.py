"""The source side's pure pieces and its in-memory state (docs/resharding.md): which pushed map is taken, the map in
force between a mounted file and a push, keyspace range parsing and overlap, and the fence gate's holding, lifting,
lapsing, refusing and in-flight accounting, on a real event loop (no store: the last LSN is a counter the writes move).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap, initial_map, keyspace_id
from chronoshard.shardnode.resharding.fences import (
    FenceGate,
    in_ranges,
    merge_ranges,
    owned_overlap,
    parse_ranges,
)
from chronoshard.shardnode.serving.http_common import ApiError
from chronoshard.shardnode.serving.routing import (
    FenceGone,
    MapConflict,
    PartitionMapSource,
    in_force,
    push_decision,
)

BASE = initial_map(2)
P0, P1 = BASE.partitions


def moved(epoch: int, shard_of_0: int) -> PartitionMap:
    return PartitionMap(epoch, 2, (Partition(P0.id, P0.start, P0.end, shard_of_0), P1))


# ---- maps -------------------------------------------------------------------------------------------------------
def test_push_decision():
    assert push_decision(None, BASE) == "accepted"
    assert push_decision(BASE, moved(2, 1)) == "accepted"
    assert push_decision(moved(2, 1), moved(2, 1)) == "same"
    with pytest.raises(MapConflict) as same_epoch:
        push_decision(moved(2, 1), moved(2, 0))
    assert same_epoch.value.epoch == 2
    with pytest.raises(MapConflict):
        push_decision(moved(2, 1), BASE)


def test_in_force_is_the_higher_epoch_and_the_file_wins_a_tie():
    assert in_force(BASE, None) is BASE
    assert in_force(None, BASE) is BASE
    assert in_force(BASE, moved(2, 1)) == moved(2, 1)
    assert in_force(moved(3, 0), moved(2, 1)) == moved(3, 0)
    tie_file, tie_push = moved(2, 0), moved(2, 1)
    assert in_force(tie_file, tie_push) is tie_file


async def test_source_push_persists_first_and_a_lower_file_does_not_win(tmp_path: Path):
    (tmp_path / "map.json").write_text(BASE.to_json())
    src = PartitionMapSource(tmp_path / "map.json", min_interval=0)
    persisted: list[int] = []
    changes: list[int | None] = []
    src.listeners.append(lambda: changes.append(src.epoch))

    async def persist(pmap: PartitionMap) -> None:
        assert src.epoch == 1  # stored before it is in force
        persisted.append(pmap.epoch)

    src.persist = persist
    assert await src.push(moved(2, 1)) == "accepted"
    assert (persisted, changes, src.require().epoch) == ([2], [2], 2)
    assert await src.push(moved(2, 1)) == "same" and persisted == [2]
    (tmp_path / "map.json").write_text(moved(2, 0).to_json() + "\n")  # the same epoch in the file: it wins a tie
    assert src.require() == moved(2, 0)
    (tmp_path / "map.json").write_text(moved(3, 0).to_json() + "\n\n")
    assert src.require() == moved(3, 0) and src.load_error is None
    with pytest.raises(MapConflict):
        await src.push(moved(2, 1))

    async def broken(pmap: PartitionMap) -> None:
        raise OSError("disk full")

    src.persist = broken  # a failed persist takes nothing
    with pytest.raises(OSError):
        await src.push(moved(4, 1))
    assert src.require().epoch == 3 and src.pushed == moved(2, 1)


def test_adopt_pushed_at_start_up(tmp_path: Path):
    (tmp_path / "map.json").write_text(BASE.to_json())
    src = PartitionMapSource(tmp_path / "map.json")
    src.adopt_pushed(None)
    assert src.require() == BASE
    src.adopt_pushed(moved(5, 1))
    assert src.require() == moved(5, 1) and src.pushed == moved(5, 1)


# ---- ranges -----------------------------------------------------------------------------------------------------
def test_parse_ranges():
    assert parse_ranges([["0000000000000000", "00000000000000ff"]]) == ((0, 255),)
    for bad in (None, [], [["0000000000000001", "0000000000000000"]], [["00", "ff"]], [["0" * 16]],
                [[0, 1]], [["0000000000000000", "000000000000000F"]], [["0" * 16, "0" * 16]] * 257):
        with pytest.raises(ValueError):
            parse_ranges(bad)


def test_merge_and_overlap():
    assert merge_ranges([(10, 20), (0, 5), (6, 8), (15, 30), (40, 40)]) == [(0, 8), (10, 30), (40, 40)]
    assert in_ranges(7, [(0, 5), (7, 7)]) and not in_ranges(6, [(0, 5), (7, 7)])
    assert owned_overlap(BASE, 0, [(P1.start, P1.end)]) == []
    assert owned_overlap(BASE, 0, [(P0.end - 1, P1.start + 1)]) == [(P0.end - 1, P0.end)]
    assert owned_overlap(BASE, 1, [(0, P1.end)]) == [(P1.start, P1.end)]


# ---- the fence gate ---------------------------------------------------------------------------------------------
def key_in(partition: Partition, prefix: str = "k") -> str:
    return next(k for k in (f"{prefix}{i}" for i in range(10_000)) if partition.contains(keyspace_id("t", k)))


class Writes:
    """Writes through a gate to a counter standing in for the store's LSNs."""

    def __init__(self, gate: FenceGate) -> None:
        self.gate, self.lsn = gate, 0
        self.release = asyncio.Event()
        self.release.set()

    async def last(self) -> int:
        return self.lsn

    async def write(self, key: str) -> int:
        async with self.gate.admit("t", key):
            await self.release.wait()  # the commit, which a test may keep in flight
            self.lsn += 1
            return self.lsn


def gate_for(pmap: PartitionMap | None) -> tuple[FenceGate, Writes, PartitionMapSource | None]:
    src = PartitionMapSource.from_map(pmap) if pmap is not None else None
    gate = FenceGate(src, 0 if src is not None else None)
    w = Writes(gate)
    gate.last_lsn = w.last
    return gate, w, src


async def until(predicate) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


async def test_fence_waits_for_writes_in_flight_and_holds_new_ones():
    gate, w, _ = gate_for(BASE)
    k0, k0b, k1 = key_in(P0), key_in(P0, "x"), key_in(P0, "y")
    w.release.clear()
    first = asyncio.create_task(w.write(k0))  # admitted, not committed
    await until(lambda: len(gate._inflight) == 1)
    fenced = asyncio.create_task(gate.put("f", [(P0.start, P0.end)], 30))
    await until(lambda: "f" in gate.fences)
    assert not fenced.done()  # the write in flight has not committed yet
    held = asyncio.create_task(w.write(k0b))
    await until(lambda: gate.held == 1)
    w.release.set()
    assert await first == 1
    assert await fenced == 1  # F covers the write that was in flight
    assert not held.done() and gate.held == 1
    assert gate.lift("f") and not gate.lift("f")
    assert await held == 2
    assert await w.write(k1) == 3


async def test_held_write_is_refused_when_the_map_moves_the_range_away():
    gate, w, src = gate_for(BASE)
    assert src is not None
    await gate.put("f", [(P0.start, P0.end)], 30)
    held = asyncio.create_task(w.write(key_in(P0)))
    await until(lambda: gate.held == 1)
    assert await src.push(moved(2, 1)) == "accepted"
    with pytest.raises(ApiError) as refused:
        await held
    assert refused.value.status == 421 and refused.value.extra == {"owner": 1, "epoch": 2}
    assert refused.value.headers == {"X-Chronoshard-Epoch": "2"}
    assert w.lsn == 0 and gate.refused_total == 1
    # Unfenced, a write to a key the map gives away is refused too (it passed the middleware under epoch 1).
    gate.lift("f")
    with pytest.raises(ApiError):
        await w.write(key_in(P0, "z"))


async def test_fence_lapses_and_only_its_ranges_are_held():
    gate, w, _ = gate_for(None)  # no partition map: every key is ours
    await gate.put("short", [(P0.start, P0.end)], 0.05)
    assert await w.write(key_in(P1)) == 1  # not fenced: never held
    assert gate.held_total == 0
    assert await w.write(key_in(P0)) == 2  # held until the fence lapsed
    assert gate.held_total == 1 and gate.active() == [] and gate.describe() == []


async def test_a_push_conditioned_on_a_fence_needs_it_standing_and_renews_it():
    gate, _, src = gate_for(BASE)
    assert src is not None
    src.fence_renew = gate.renew
    with pytest.raises(FenceGone):
        await src.push(moved(2, 1), fence="cutover")  # never put
    assert src.require() == BASE
    await gate.put("cutover", [(P0.start, P0.end)], 0.2)
    before = gate.fences["cutover"].expires
    await asyncio.sleep(0.05)
    assert await src.push(moved(2, 1), fence="cutover") == "accepted"
    assert gate.fences["cutover"].expires > before  # renewed before the map was stored
    gate.lift("cutover")
    assert await src.push(moved(2, 1), fence="cutover") == "same"  # already in force: no condition
    await gate.put("short", [(P0.start, P0.end)], 0.01)
    await until(lambda: gate.active() == [])
    with pytest.raises(FenceGone):
        await src.push(moved(3, 0), fence="short")
    assert src.require() == moved(2, 1)
