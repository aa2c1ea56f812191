"""The sign-in failure limit (pure): at most ``limit`` failed sign-ins per client address in any ``window``
seconds; past it, sign-ins from that address are refused (429) without a TokenReview until the oldest failure
leaves the window. Successful sign-ins are not counted. At most ``size`` addresses are remembered (the least
recently failing is forgotten first), so a flood of addresses cannot grow the console's memory."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

FAILURES_PER_MINUTE = 10
WINDOW_SECONDS = 60.0
MAX_ADDRESSES = 10_000


class FailureLimiter:
    """Failed sign-ins per address in a sliding window; ``retry_after`` says whether (and how long) to refuse."""

    def __init__(self, *, limit: int = FAILURES_PER_MINUTE, window: float = WINDOW_SECONDS,
                 size: int = MAX_ADDRESSES, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or window <= 0 or size < 1:
            raise ValueError("a failure limiter needs limit >= 1, window > 0 and size >= 1")
        self.limit, self.window, self.size, self.clock = limit, window, size, clock
        # Per address, the times of its recent failures (at most ``limit``: older ones cannot matter).
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def retry_after(self, address: str) -> float | None:
        """Seconds until ``address`` may try again (> 0), or None when it may sign in now."""
        now = self.clock()
        times = self._recent(address, now)
        if times is None or len(times) < self.limit:
            return None
        return max(times[0] + self.window - now, 0.001)

    def failed(self, address: str) -> None:
        """Count one failed sign-in from ``address``."""
        now = self.clock()
        times = self._recent(address, now)
        if times is None:
            times = self._failures[address] = deque(maxlen=self.limit)
        times.append(now)
        self._failures.move_to_end(address)
        while len(self._failures) > self.size:
            self._failures.popitem(last=False)

    def __len__(self) -> int:
        return len(self._failures)
