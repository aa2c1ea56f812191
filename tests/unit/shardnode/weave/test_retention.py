"""The weaver's pure decisions: split key and halves, the minimum half size, continuation, staleness, retention."""

from __future__ import annotations

from chronoshard.shardnode.weave import retention as r

TOP = (1 << 64) - 1


def test_split_key_puts_the_median_in_the_lower_half():
    assert r.split_key(0, 99, 49) == 50
    assert r.halves(0, 99, 50) == ((0, 49), (50, 99))
    assert r.split_key(0, 99, None) is None  # empty partition
    assert r.split_key(0, 99, 99) is None  # the median is the last id: no upper half
    assert r.split_key(10, TOP, TOP - 1) == TOP


def test_halves_respect_the_minimum_size():
    assert r.halves_big_enough(100, 10, None)
    assert r.halves_big_enough(100, 50, 50)
    assert not r.halves_big_enough(100, 49, 50)
    assert not r.halves_big_enough(100, 60, 50)


def test_a_weave_continues_within_one_256th_of_the_range():
    w = r.ActiveWeave("w-1-1", 1, 1000 * 256, 0, 256 * 256 * 1000 - 1)
    assert r.continues(w, 0, 256 * 256 * 1000 - 1, 1000 * 256 + 999)
    assert not r.continues(w, 0, 256 * 256 * 1000 - 1, 2000 * 256)  # another bucket: a new weave
    assert not r.continues(w, 0, 1000, 1000 * 256)  # the partition changed
    assert not r.continues(None, 0, 10, 5)
    assert r.same_bucket(0, 10, 3, 3) and not r.same_bucket(0, 10, 3, 4)  # narrower than 256 ids: 1-id buckets
    assert not r.same_bucket(0, 1000, 0, 4)


def test_stale_after_two_intervals_below_the_threshold():
    assert not r.stale(None, 100.0, 10.0)
    assert not r.stale(90.0, 100.0, 10.0)
    assert r.stale(80.0, 100.0, 10.0)
    assert r.weave_id(3, 1765000000.7) == "w-3-1765000000"


def _points(times, kinds=None):
    kinds = kinds or ["full"] + ["differential"] * (len(times) - 1)
    out, i = [], 0
    for half in ("lower", "upper"):
        for t, k in zip(times, kinds, strict=True):
            i += 1
            out.append(r.PointRef(i, half, t, k))
    return out


def test_retention_keeps_max_snapshots_and_materializes_the_first_survivor():
    pts = _points([1.0, 2.0, 3.0, 4.0, 5.0])
    assert r.plan_retention(pts, 5, 1e9, 10.0) == r.RetentionPlan((), ())  # at the limit: nothing to do
    plan = r.plan_retention(_points([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), 5, 1e9, 10.0)
    assert r.trimmed_to(5) == 3 and r.trimmed_to(10) == 5 and r.trimmed_to(1) == 1 and r.trimmed_to(2) == 1
    assert plan.drop == (1, 2, 3, 7, 8, 9)  # over the limit: down to 3 points
    assert plan.materialize == (4, 10)  # the differentials at t=4 become full points


def test_retention_by_age_and_nothing_to_do():
    pts = _points([1.0, 2.0, 3.0])
    assert r.plan_retention(pts, 10, 100.0, 50.0) == r.RetentionPlan((), ())
    plan = r.plan_retention(pts, 10, 5.0, 7.5)  # older than 2.5 goes
    assert plan.drop == (1, 2, 4, 5) and plan.materialize == (3, 6)
    everything = r.plan_retention(pts, 10, 1.0, 100.0)
    assert sorted(everything.drop) == [1, 2, 3, 4, 5, 6] and everything.materialize == ()


def test_a_full_survivor_needs_no_materializing():
    pts = _points([1.0, 2.0, 3.0], ["full", "differential", "full"])
    plan = r.plan_retention(pts, 2, 1e9, 10.0)
    assert plan.drop == (1, 2, 4, 5) and plan.materialize == ()


def test_a_weave_is_realized_once_a_partition_has_a_half_s_range():
    lower, upper = (0, 49), (50, 99)
    assert not r.realized(lower, upper, [(0, 99)])
    assert r.realized(lower, upper, [(0, 49), (100, 200)])  # the lower half kept the id, the upper moved away
    assert r.realized(lower, upper, [(50, 99)])
