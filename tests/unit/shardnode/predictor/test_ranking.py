"""Read-ahead range lengths and the budget cutoff that ranks hints by benefit per fetch."""

from __future__ import annotations

import math
import random

import pytest
from chronoshard.shardnode.predictor.ranking import BudgetRanker, range_benefit, range_length, tail_threshold


def test_range_length_keeps_blocks_over_the_tail_threshold():
    # 0.95 ** 6 = 0.735 >= 0.7 > 0.95 ** 7 = 0.698
    assert range_length(0.95, run_len=10, threshold=0.5, tail=0.7) == 6
    assert range_length(0.95, run_len=10, threshold=0.5) == 13  # tail defaults to the threshold
    assert range_length(0.4, run_len=10, threshold=0.5) == 0  # under the threshold: nothing
    assert range_length(0.6, run_len=10, threshold=0.5, tail=0.9) == 1  # a plain hint, no read-ahead


def test_range_grows_with_the_run_and_is_capped():
    assert [range_length(0.999, r, 0.5) for r in (0, 1, 2, 3, 10)] == [1, 2, 4, 8, 32]
    assert range_length(1.0, 50, 0.5) == 32


def test_tail_threshold_bounds_the_waste_of_a_range():
    t = tail_threshold(0.15)
    assert t == pytest.approx(1 / 1.15)
    for score in (0.9, 0.95, 0.99):
        k = range_length(score, 10, 0.5, t)
        used = range_benefit(score, k)
        assert (k - used) / used <= 0.15  # wasted blocks per block read


def test_range_benefit():
    assert range_benefit(0.5, 3) == pytest.approx(0.5 + 0.25 + 0.125)
    assert range_benefit(0.5, 3, skip=1) == pytest.approx(0.25 + 0.125)


def test_ranker_passes_everything_while_the_budget_covers_the_offers():
    r = BudgetRanker()
    for i in range(100):
        r.offer(random.random(), i * 0.1)  # 10 offers/s
    assert r.cutoff(20.0) == 0.0


def test_ranker_cutoff_lets_through_the_best_share_the_budget_affords():
    rng = random.Random(1)
    r = BudgetRanker(memory=4000)
    benefits = [rng.random() for _ in range(4000)]
    for i, b in enumerate(benefits):
        r.offer(b, i * 0.01)  # 100 offers/s
    cut = r.cutoff(25.0)  # a quarter of them
    share = sum(b >= cut for b in benefits) / len(benefits)
    assert share == pytest.approx(0.25, abs=0.02)
    assert math.isclose(r.offered_rate(), 100.0, rel_tol=0.01)
