"""Outcome tracking, the threshold/budget controller and the token bucket."""

from __future__ import annotations

from chronoshard.shardnode.predictor.feedback import PAUSED, FeedbackController, Outcome, OutcomeTracker, TokenBucket


def test_used_within_horizon_wasted_after_or_when_evicted() -> None:
    tr = OutcomeTracker()
    tr.add("t", "a", 0.9, True, 100, now=0.0, horizon_s=5.0)
    tr.add("t", "b", 0.8, True, 100, now=0.0, horizon_s=5.0)
    tr.add("t", "c", 0.7, True, 100, now=0.0, horizon_s=5.0)
    assert [o.used for o in tr.access("t", "a", 1.0)] == [True]
    assert [o.used for o in tr.evicted("t", "b")] == [False]
    assert tr.access("t", "b", 2.0) == []  # already resolved as wasted
    out = tr.expire(6.0)
    assert [(o.used, o.size) for o in out] == [(False, 100)]
    assert tr.pending == {}


def test_same_block_proposed_twice_counts_once_and_upgrades_to_sent() -> None:
    tr = OutcomeTracker()
    tr.add("t", "a", 0.4, False, 10, now=0.0, horizon_s=5.0)
    tr.add("t", "a", 0.9, True, 10, now=1.0, horizon_s=5.0)
    assert tr.is_pending_sent("t", "a")
    out = tr.access("t", "a", 5.5)  # within the upgraded horizon (1 + 5)
    assert [(o.sent, o.used, o.score) for o in out] == [(True, True, 0.9)]


def outcomes(score: float, used: bool, n: int) -> list[Outcome]:
    return [Outcome(score, True, used, 1, None)] * n


def test_controller_raises_threshold_pauses_and_recovers() -> None:
    fb = FeedbackController(base_threshold=0.5, target_precision=0.6, window=100)
    # Low-score candidates fail, high-score ones succeed: the threshold moves above the bad ones.
    fb.record(outcomes(0.55, False, 50) + outcomes(0.9, True, 50))
    assert 0.55 < fb.threshold <= 0.9 and fb.budget_factor == 1.0
    # The pattern stops: nothing comes true at any threshold -> pause and cut the budget.
    fb.record(outcomes(0.9, False, 100))
    fb.record(outcomes(0.9, False, 100))
    assert fb.threshold == PAUSED and fb.budget_factor == 0.25 and fb.last_precision is None
    # Unsent (shadow) candidates come true again -> hints resume and the threshold steps back down to the
    # base (a sixth of the range per window), the budget grows back.
    fb.record([Outcome(0.6, False, True, 1, None)] * 100)
    assert 0.5 < fb.threshold < 1.0 and fb.budget_factor == 0.5
    for _ in range(6):
        fb.record([Outcome(0.6, False, True, 1, None)] * 100)
    assert fb.threshold == 0.5 and fb.budget_factor == 1.0


def test_disabled_controller_only_measures() -> None:
    fb = FeedbackController(base_threshold=0.5, window=10, enabled=False)
    fb.record(outcomes(0.9, False, 10))
    assert fb.threshold == 0.5 and fb.budget_factor == 1.0 and fb.last_precision == 0.0


def test_token_bucket() -> None:
    b = TokenBucket(rate=10, burst=10)
    assert sum(b.take(1, 0.0) for _ in range(20)) == 10
    assert b.take(5, 0.5) and not b.take(1, 0.5)
    assert not b.take(1, 0.6, factor=0.5) and b.take(1, 1.0, factor=0.5)


def test_time_window_adjusts_once_per_window() -> None:
    fb = FeedbackController(base_threshold=0.5, target_precision=0.6, window=10**6, window_s=60.0)
    fb.record(outcomes(0.9, False, 50), now=0.0)
    fb.record(outcomes(0.9, False, 50), now=30.0)
    assert fb.threshold == 0.5  # the window has not ended yet
    fb.record(outcomes(0.9, False, 5), now=61.0)
    assert fb.threshold == PAUSED and fb.budget_factor == 0.5
    fb.record(outcomes(0.9, True, 5), now=130.0)  # fewer than 10 outcomes in a window: no decision
    assert fb.threshold == PAUSED


def sized(score: float, sent: bool, used: bool, size: int, n: int) -> list[Outcome]:
    return [Outcome(score, sent, used, size, None)] * n


def test_controller_keeps_waste_under_its_share_of_the_demand_bytes() -> None:
    fb = FeedbackController(base_threshold=0.5, target_precision=0.5, window=200, max_waste_share=0.15)
    fb.record_demand(10_000)
    # Precision is fine at 0.5 (60%) but the unused sent bytes (4000) are 40% of the demand: too much.
    # Over 0.8 only 500 bytes are wasted (5%): that is where the threshold must go.
    fb.record(sized(0.6, True, True, 100, 60) + sized(0.6, True, False, 100, 35)
              + sized(0.9, True, True, 100, 100) + sized(0.9, True, False, 100, 5))
    assert 0.6 < fb.threshold <= 0.9 and fb.budget_factor == 1.0


def test_controller_pauses_when_no_threshold_keeps_waste_down() -> None:
    fb = FeedbackController(base_threshold=0.5, window=100, max_waste_share=0.15)
    fb.record_demand(1000)
    fb.record(sized(0.95, True, True, 100, 70) + sized(0.95, True, False, 100, 30))  # 3000 B wasted of 1000 read
    assert fb.threshold == PAUSED and fb.budget_factor == 0.5


def test_controller_without_demand_counts_judges_precision_only() -> None:
    fb = FeedbackController(base_threshold=0.5, window=100)
    fb.record(sized(0.95, True, True, 100, 70) + sized(0.95, True, False, 100, 30))
    assert fb.threshold == 0.5


def test_a_threshold_that_wasted_too_much_stays_off_limits_for_a_while() -> None:
    fb = FeedbackController(base_threshold=0.5, target_precision=0.5, window=100, max_waste_share=0.15)
    fb.record_demand(1000)
    # Sent at 0.5: 60% used, but 40 x 100 B unused = 4000 B wasted of 1000 B read.
    fb.record(sized(0.6, True, True, 100, 60) + sized(0.6, True, False, 100, 40))
    assert fb.threshold > 0.5
    raised = fb.threshold
    # Later windows look harmless below the threshold (nothing sent there, all came true)...
    for _ in range(8):
        fb.record_demand(100_000)
        fb.record(sized(0.6, False, True, 100, 50) + sized(0.99, True, True, 100, 50))
    # ...yet the threshold does not go back under the one that was measured to waste.
    assert fb.threshold >= min(raised, 0.5 + 0.5 / 18) - 1e-9 and fb.threshold > 0.5

