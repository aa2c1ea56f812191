"""The sign-in failure limiter (pure): per address, a sliding window, successes never counted, memory bounded."""

from __future__ import annotations

import pytest
from chronoshard.shardnode.console.ratelimit import FailureLimiter


class Clock:
    """A clock the test moves by hand (the limiter takes any callable)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limit_refuses_after_limit_failures_and_only_for_that_address():
    clock = Clock()
    lim = FailureLimiter(limit=3, window=60, clock=clock)
    for _ in range(3):
        assert lim.retry_after("10.0.0.1") is None
        lim.failed("10.0.0.1")
        clock.now += 1
    assert lim.retry_after("10.0.0.1") == pytest.approx(57.0)
    assert lim.retry_after("10.0.0.2") is None


def test_the_window_slides_one_failure_at_a_time():
    clock = Clock()
    lim = FailureLimiter(limit=2, window=10, clock=clock)
    lim.failed("a")
    clock.now += 5
    lim.failed("a")
    assert lim.retry_after("a") == pytest.approx(5.0)
    clock.now += 5  # the first failure leaves the window: one more try
    assert lim.retry_after("a") is None
    lim.failed("a")
    assert lim.retry_after("a") == pytest.approx(5.0)
    clock.now += 10
    assert lim.retry_after("a") is None and len(lim) == 0  # an address with no recent failure is forgotten


def test_memory_is_bounded_by_size_dropping_the_least_recent_address():
    lim = FailureLimiter(limit=1, window=60, size=2, clock=Clock())
    for address in ("a", "b", "c"):
        lim.failed(address)
    assert len(lim) == 2
    assert lim.retry_after("a") is None  # forgotten
    assert lim.retry_after("b") is not None and lim.retry_after("c") is not None


def test_nonsense_settings_are_refused():
    with pytest.raises(ValueError):
        FailureLimiter(limit=0)
    with pytest.raises(ValueError):
        FailureLimiter(window=0)
    with pytest.raises(ValueError):
        FailureLimiter(size=0)
