"""Consumer slots: the pure trim decision against a brute-force model, and the slot table on a real store."""

import itertools
from fractions import Fraction

import pytest
from chronoshard.shardnode.node import changelog, consumers
from chronoshard.shardnode.node.consumers import ACTIVE, BEHIND, Slot, TrimBounds, TrimPlan, plan_trim
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.stores import open_store, ring


def model(last, first, slots, bounds, held_bytes):
    """The decision spelled out entry by entry: what must go, what nobody wants, who loses what they need."""
    held = [] if first == 0 else list(range(first, last + 1))
    acks = [s.acked_lsn for s in slots if s.state == ACTIVE]
    must_go = set()
    for i, e in enumerate(held):
        if e <= last - bounds.max_entries:
            must_go.add(e)
        # frames taken as equal in size: entry i goes while the rest from i on would still be over the byte bound
        if held and Fraction(held_bytes, len(held)) * (len(held) - i) > bounds.max_bytes:
            must_go.add(e)
    unwanted = {e for e in held if e <= last - bounds.retain and all(e <= a for a in acks)}
    gone = must_go | unwanted
    assert gone == set(held[:len(gone)])  # a prefix of the log, never a hole in it
    cutoff = max(gone) if gone else 0
    remaining = set(held) - gone
    behind = tuple(s.name for s in slots if s.state == ACTIVE
                   and any(e not in remaining for e in range(s.acked_lsn + 1, last + 1)))
    return TrimPlan(cutoff, behind)


def slot(name, ack, state=ACTIVE):
    return Slot(name, ack, 0, 0.0, 0.0, state)


def small_cases():
    for last in range(0, 6):
        for first in [0, *range(1, last + 1)]:
            for acks in itertools.chain([()], itertools.product(range(0, last + 1), repeat=1),
                                        itertools.product(range(0, last + 1), repeat=2)):
                for states in itertools.product((ACTIVE, BEHIND), repeat=len(acks)):
                    pairs = enumerate(zip(acks, states, strict=True))
                    yield last, first, tuple(slot(f"c{i}", a, s) for i, (a, s) in pairs)


@pytest.mark.parametrize("retain, max_entries, max_bytes, held_bytes",
                         [(r, m, mb, hb) for r in (1, 2, 4) for m in (1, 3, 6) for mb, hb in
                          ((100, 0), (100, 100), (100, 101), (10, 35), (1, 1000))])
def test_plan_matches_the_model_exhaustively(retain, max_entries, max_bytes, held_bytes):
    bounds = TrimBounds(retain, max_entries, max_bytes)
    n = 0
    for last, first, slots in small_cases():
        hb = held_bytes if first else 0  # an empty log holds no bytes
        assert plan_trim(last, first, slots, bounds, hb) == model(last, first, slots, bounds, hb), \
            (last, first, slots)
        n += 1
    assert n > 1000


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 150), st.integers(0, 150), st.lists(st.tuples(st.integers(0, 300), st.booleans()),
                                                           max_size=4),
       st.integers(1, 200), st.integers(1, 200), st.integers(1, 10_000), st.integers(0, 20_000))
def test_plan_matches_the_model_on_larger_logs(held, gap, acks, retain, max_entries, max_bytes, held_bytes):
    first = 0 if held == 0 else gap + 1
    last = gap + held
    slots = tuple(slot(f"c{i}", min(a, last), ACTIVE if active else BEHIND) for i, (a, active) in enumerate(acks))
    hb = held_bytes if held else 0
    bounds = TrimBounds(retain, max_entries, max_bytes)
    assert plan_trim(last, first, slots, bounds, hb) == model(last, first, slots, bounds, hb)


def test_without_slots_the_old_retention_applies():
    assert plan_trim(10, 1, (), TrimBounds(4, 100, 1 << 30), 0) == TrimPlan(6, ())
    assert plan_trim(10, 7, (), TrimBounds(4, 100, 1 << 30), 0) == TrimPlan(0, ())  # already trimmed


def test_slots_extend_retention_and_bounds_put_them_behind():
    wide = TrimBounds(2, 100, 1 << 30)
    assert plan_trim(10, 1, (slot("a", 3), slot("b", 7)), wide, 0) == TrimPlan(3, ())
    assert plan_trim(10, 1, (slot("a", 3), slot("old", 0, BEHIND)), wide, 0) == TrimPlan(3, ())  # behind holds nothing
    tight = TrimBounds(2, 5, 1 << 30)
    assert plan_trim(10, 1, (slot("a", 3), slot("b", 7)), tight, 0) == TrimPlan(5, ("a",))
    by_bytes = TrimBounds(2, 100, 40)  # 10 entries of 10 bytes: 6 must go
    assert plan_trim(10, 1, (slot("a", 3), slot("b", 7)), by_bytes, 100) == TrimPlan(6, ("a",))
    # a slot whose entries are already gone (e.g. from before a crash) is behind at the next pass
    assert plan_trim(10, 6, (slot("a", 2),), wide, 0).behind == ("a",)
    assert plan_trim(10, 0, (slot("a", 10), slot("b", 9)), wide, 0) == TrimPlan(0, ("b",))


# ---- the slot table -------------------------------------------------------------------------------
@pytest.fixture
async def store(tmp_path):
    s, _ = open_store(tmp_path, ring(1, (1,)))
    yield s
    s.close()


async def test_registration_point_ack_and_unregister(store):
    await store.put("t", "early", b"no frame: nobody consumes yet")
    assert not store.frames_enabled
    slot, written = await store.write(lambda c: consumers.register(c, "a", None, False, 1.0))
    assert written and (slot.acked_lsn, slot.registered_lsn, slot.state) == (1, 1, ACTIVE)
    store.frames_enabled = True  # what the API's register job does
    assert await store.read(changelog.frames_from) == 2
    with pytest.raises(consumers.StartUnavailable) as err:  # LSN 1 has no frame
        await store.write(lambda c: consumers.register(c, "b", 0, False, 1.0))
    assert err.value.earliest == 1
    with pytest.raises(consumers.BeyondLog):
        await store.write(lambda c: consumers.register(c, "b", 2, False, 1.0))
    await store.put("t", "k", b"v")
    again, written = await store.write(lambda c: consumers.register(c, "a", None, False, 2.0))
    assert not written and again == slot  # idempotent: unchanged
    moved, written = await store.write(lambda c: consumers.register(c, "a", 2, True, 3.0))
    assert written and moved.acked_lsn == 2 and moved.created == 1.0
    acked = await store.write(lambda c: consumers.ack(c, "a", 1, 4.0))
    assert acked.acked_lsn == 2  # never backwards
    with pytest.raises(consumers.BeyondLog):
        await store.write(lambda c: consumers.ack(c, "a", 3, 4.0))
    with pytest.raises(consumers.UnknownConsumer):
        await store.write(lambda c: consumers.ack(c, "nobody", 1, 4.0))
    await store.write(lambda c: consumers.unregister(c, "a"))
    assert await store.read(changelog.frames_from) is None and not await store.read(consumers.has_consumers)


async def test_trim_marks_behind_and_deletes_in_chunks(store):
    await store.write(lambda c: consumers.register(c, "a", None, False, 1.0))
    store.frames_enabled = True
    for i in range(10):
        await store.put("t", f"k{i}", b"x" * 10)
    held = await store.read(changelog.frame_bytes)
    assert held > 100
    bounds = TrimBounds(retain=1, max_entries=6, max_bytes=1 << 30)
    res = await store.write(lambda c: consumers.trim_in_txn(c, bounds, 3, 5.0))
    assert (res.deleted, res.behind, res.more) == (3, ("a",), True)
    assert (await store.read(lambda c: consumers.get(c, "a"))).state == BEHIND
    res = await store.write(lambda c: consumers.trim_in_txn(c, bounds, 3, 5.0))
    assert (res.deleted, res.behind) == (3, ())
    # the slot is behind, so it no longer holds anything: retain (1 entry) applies
    while (await store.write(lambda c: consumers.trim_in_txn(c, bounds, 3, 5.0))).more:
        pass
    assert await store.read(changelog.first_lsn) == 10
    one_frame = held // 10
    assert await store.read(changelog.frame_bytes) == one_frame  # the byte total follows the deletes exactly
