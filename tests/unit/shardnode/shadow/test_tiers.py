"""The pure tier decisions: horizons, thinning to buckets, expiry, snapshot due/kind/keep/chain."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from chronoshard.shardnode.shadow import tiers
from chronoshard.shardnode.shadow.tiers import Candidate, Horizons, SnapshotRef, Survivor
from hypothesis import given
from hypothesis import strategies as st


@dataclass(frozen=True)
class Ret:
    hot_seconds: float = 3600.0
    warm_seconds: float = 7 * 86400.0
    cold_seconds: float = 30 * 86400.0


def C(key, lsn, t, op="put", table="t"):
    return Candidate(table, key, lsn, t, op)


def test_horizons_are_aligned_to_their_grid_and_ordered():
    now = 10 * 86400.0 + 1234.5
    h = tiers.horizons(now, Ret(), 60.0)
    assert h.warm_before == tiers.floor_to(now - 3600, 60) == 10 * 86400.0 - 3600 + 1200
    assert h.cold_before == tiers.floor_to(now - 7 * 86400, 3600) and h.cold_before % 3600 == 0
    assert h.expire_before <= h.cold_before <= h.warm_before
    # A warm retention shorter than hot cannot put the cold horizon after the warm one.
    odd = tiers.horizons(now, Ret(hot_seconds=7200, warm_seconds=60, cold_seconds=30), 60.0)
    assert odd.expire_before <= odd.cold_before <= odd.warm_before
    with pytest.raises(ValueError):
        tiers.horizons(now, Ret(), 0)


@pytest.mark.parametrize("t, step, expected", [(0.0, 60, 0.0), (59.999, 60, 0.0), (60.0, 60, 60.0),
                                               (-1.0, 60, -60.0), (7199.0, 3600, 3600.0)])
def test_floor_to(t, step, expected):
    assert tiers.floor_to(t, step) == expected


def test_thin_keeps_the_last_version_of_each_bucket_per_key():
    rows = [C("a", 1, 0.0), C("a", 2, 10.0), C("b", 3, 20.0), C("a", 4, 70.0), C("a", 5, 119.0),
            C("b", 6, 130.0, "delete"), C("a", 7, 125.0)]
    out = tiers.thin(rows, 60.0)
    assert sorted((s.key, s.lsn, s.op) for s in out) == [("a", 2, "put"), ("a", 5, "put"), ("a", 7, "put"),
                                                         ("b", 3, "put"), ("b", 6, "delete")]


def test_a_delete_last_in_its_bucket_is_kept_as_a_tombstone_and_an_earlier_one_goes():
    out = tiers.thin([C("k", 1, 0.0), C("k", 2, 1.0, "delete"), C("k", 3, 61.0), C("k", 4, 62.0, "delete")], 60.0)
    assert [(s.lsn, s.op) for s in out] == [(2, "delete"), (4, "delete")]
    out = tiers.thin([C("k", 1, 0.0, "delete"), C("k", 2, 1.0)], 60.0)
    assert [(s.lsn, s.op) for s in out] == [(2, "put")]


def test_a_surviving_rewrap_stands_for_the_content_change_dropped_before_it():
    out = tiers.thin([C("k", 1, 0.0, "put"), C("k", 2, 1.0, "rewrap")], 60.0)
    assert out == [Survivor("t", "k", 2, "put")]
    out = tiers.thin([C("k", 1, 0.0, "seed"), C("k", 2, 1.0, "rewrap"), C("k", 3, 2.0, "rewrap")], 60.0)
    assert out == [Survivor("t", "k", 3, "seed")]
    # Only rewraps in the bucket: the content did not change there, the survivor stays a rewrap.
    out = tiers.thin([C("k", 1, 0.0, "put"), C("k", 2, 61.0, "rewrap"), C("k", 3, 62.0, "rewrap")], 60.0)
    assert [(s.lsn, s.op) for s in out] == [(1, "put"), (3, "rewrap")]


def test_protected_versions_survive_and_reset_the_pending_op():
    rows = [C("k", 1, 0.0), C("k", 2, 1.0, "rewrap"), C("k", 3, 2.0), C("k", 4, 3.0, "rewrap")]
    out = tiers.thin(rows, 60.0, frozenset({("t", "k", 2)}))
    assert out == [Survivor("t", "k", 2, "put"), Survivor("t", "k", 4, "put")]


def test_tables_with_the_same_key_are_separate():
    out = tiers.thin([C("k", 1, 0.0, table="x"), C("k", 2, 1.0, table="y")], 60.0)
    assert sorted((s.table, s.lsn) for s in out) == [("x", 1), ("y", 2)]


def _state(rows, t):
    """(table, key) -> lsn of the live version with time < t (reference)."""
    live = {}
    for r in sorted(rows, key=lambda r: r.lsn):
        if r.time < t:
            if r.op == "delete":
                live.pop((r.table, r.key), None)
            else:
                live[(r.table, r.key)] = r.lsn
    return live


histories = st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from(["put", "delete", "rewrap"]),
                               st.floats(0, 40)), max_size=40)


def _rows(steps):
    """A plausible history: a rewrap only of a live key (the node rewraps what it holds)."""
    t, out, live = 0.0, [], set()
    for key, op, dt in steps:
        t += dt
        if op == "rewrap" and key not in live:
            continue
        if op == "delete":
            live.discard(key)
        else:
            live.add(key)
        out.append(C(key, len(out) + 1, t, op))
    return out


@given(histories, st.sampled_from([10.0, 60.0]))
def test_thinning_keeps_the_state_at_every_bucket_boundary(steps, bucket):
    rows = _rows(steps)
    kept = {s.lsn for s in tiers.thin(rows, bucket)}
    survivors = [r for r in rows if r.lsn in kept]
    end = rows[-1].time + bucket if rows else bucket
    for b in itertools.takewhile(lambda b: b <= end, (i * bucket for i in itertools.count())):
        assert _state(survivors, b) == _state(rows, b)


@given(histories, st.floats(0, 800))
def test_expiry_keeps_exactly_the_state_at_the_horizon(steps, horizon):
    rows = [r for r in _rows(steps) if r.time < horizon]
    out = tiers.expire(rows)
    assert {(s.table, s.key): s.lsn for s in out} == _state(rows, float("inf"))
    assert all(s.op != "delete" for s in out)


def test_expire_relabels_a_rewrap_base():
    assert tiers.expire([C("k", 1, 0.0), C("k", 2, 1.0, "rewrap")]) == [Survivor("t", "k", 2, "put")]
    assert tiers.expire([C("k", 1, 0.0), C("k", 2, 1.0, "delete")]) == []


@pytest.mark.parametrize("last, latest, expected", [
    (None, None, None), (None, 125.0, 120.0), (120.0, 179.0, None), (120.0, 180.0, 180.0), (60.0, 300.5, 300.0)])
def test_due_boundary(last, latest, expected):
    assert tiers.due_boundary(last, latest, 60.0) == expected


@pytest.mark.parametrize("boundary, last_full, full_every, granularity, kind", [
    (600.0, None, 10, "differential", "full"),
    (660.0, 600.0, 10, "differential", "differential"),
    (1140.0, 600.0, 10, "differential", "differential"),
    (1200.0, 600.0, 10, "differential", "full"),
    (1260.0, 600.0, 10, "differential", "full"),  # the full of 1200 was skipped (quiet): the next one is full
    (660.0, 600.0, 10, "full", "full"),
    (660.0, 600.0, 1, "differential", "full"),
])
def test_snapshot_kind(boundary, last_full, full_every, granularity, kind):
    assert tiers.snapshot_kind(boundary, last_full, 60.0, full_every, granularity) == kind


def S(i, b, kind="full", base=None, lsn=0):
    return SnapshotRef(i, b, lsn, kind, base)


def test_snapshots_to_keep_per_range():
    h = Horizons(warm_before=20000.0, cold_before=10800.0, expire_before=3600.0, interval=600.0)
    snaps = [S(1, 0.0), S(2, 3600.0), S(3, 4200.0, "differential", 2), S(4, 4800.0), S(5, 7200.0),
             S(6, 10800.0), S(7, 11400.0, "differential", 6), S(8, 12000.0, "differential", 7),
             S(9, 12600.0, "differential", 3)]
    keep = tiers.snapshots_to_keep(snaps, h)
    # expired range: none; cold range: the first full of each hour (2 and 5, not 4); warm/hot: all, except a
    # differential whose chain lost a member (9's base 3 was a cold differential).
    assert keep == {2, 5, 6, 7, 8}


def test_restore_chain_reads_back_to_a_full_snapshot():
    snaps = [S(1, 0.0), S(2, 60.0, "differential", 1), S(3, 120.0, "differential", 2), S(4, 180.0, "differential")]
    assert [s.id for s in tiers.restore_chain(snaps, 3)] == [1, 2, 3]
    assert [s.id for s in tiers.restore_chain(snaps, 1)] == [1]
    for broken in (4, 99):
        with pytest.raises(ValueError):
            tiers.restore_chain(snaps, broken)
