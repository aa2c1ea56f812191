"""Feedback: which hints were used within the horizon, and how the threshold and budget react.

Every candidate scored at or above the configured threshold is tracked, sent or not ("shadow"
candidates): the log says whether it was requested in time either way. That is what lets the
loop recover: after a bad phase has raised the threshold and cut the budget, the unsent
candidates show when precision is back, and the threshold comes down again.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class _Pending:
    deadline: float
    score: float
    sent: bool
    size: int
    features: np.ndarray | None
    done: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """A resolved candidate: used within the horizon or not."""

    score: float
    sent: bool
    used: bool
    size: int
    features: np.ndarray | None


@dataclass
class OutcomeTracker:
    """Pending candidates per block until they are requested (used) or their horizon passes (wasted)."""

    pending: dict[tuple[str, str], list[_Pending]] = field(default_factory=dict)
    _heap: list[tuple[float, int, tuple[str, str]]] = field(default_factory=list)
    _n: int = 0

    def add(self, table: str, key: str, score: float, sent: bool, size: int, now: float, horizon_s: float,
            features: np.ndarray | None = None) -> None:
        """Track one candidate proposed at `now`; a block already pending is counted once (a sent hint upgrades it)."""
        tk = (table, key)
        live = [p for p in self.pending.get(tk, ()) if not p.done]
        if live:
            # The same block proposed again (a run's 2nd-next block becomes the next one): one outcome, not two.
            if sent and not live[0].sent:
                live[0].sent, live[0].score, live[0].size = True, max(score, live[0].score), size
                live[0].deadline = now + horizon_s
                self._n += 1
                heapq.heappush(self._heap, (now + horizon_s, self._n, tk))
            return
        self.pending[tk] = [_Pending(now + horizon_s, score, sent, size, features)]
        self._n += 1
        heapq.heappush(self._heap, (now + horizon_s, self._n, tk))

    def is_pending(self, table: str, key: str) -> bool:
        """True if a candidate for this block still waits for its request."""
        return any(not p.done for p in self.pending.get((table, key), ()))

    def is_pending_sent(self, table: str, key: str) -> bool:
        """True if a sent hint for this block is still waiting for its request."""
        return any(p.sent and not p.done for p in self.pending.get((table, key), ()))

    def access(self, table: str, key: str, now: float) -> list[Outcome]:
        """A request for the block: every candidate for it still inside its horizon was used."""
        out: list[Outcome] = []
        for p in self.pending.pop((table, key), ()):
            if not p.done:
                p.done = True
                out.append(Outcome(p.score, p.sent, p.deadline >= now, p.size, p.features))
        return out

    def evicted(self, table: str, key: str) -> list[Outcome]:
        """The cache dropped the block before it was requested: its sent hints are wasted."""
        out: list[Outcome] = []
        for p in self.pending.get((table, key), ()):
            if p.sent and not p.done:
                p.done = True
                out.append(Outcome(p.score, True, False, p.size, p.features))
        return out

    def expire(self, now: float) -> list[Outcome]:
        """Candidates whose horizon has passed without a request: wasted."""
        out: list[Outcome] = []
        while self._heap and self._heap[0][0] < now:
            _, _, tk = heapq.heappop(self._heap)
            lst = self.pending.get(tk)
            if not lst:
                continue
            keep = []
            for p in lst:
                if p.done:
                    continue
                if p.deadline < now:
                    p.done = True
                    out.append(Outcome(p.score, p.sent, False, p.size, p.features))
                else:
                    keep.append(p)
            if keep:
                self.pending[tk] = keep
            else:
                del self.pending[tk]
        return out


PAUSED = 1.01  # above any probability: no candidate is sent


@dataclass
class FeedbackController:
    """Per window of resolved candidates, picks the lowest threshold meeting the precision target and the waste cap.

    Waste is what the operator pays for: prefetched bytes never read, as a share of the bytes read. Precision
    alone does not bound it (at a small cache prefetched blocks are evicted before their read, and a budget
    that sends many hints at 50% precision wastes as many bytes as a large share of the demand). So a
    threshold must also keep the window's estimated waste under ``max_waste_share`` of the demand bytes
    (`record_demand`): the unused bytes of the hints sent over it, plus, below the current threshold, the unused
    bytes of the candidates there scaled by the share of candidates the budgets let through. If no threshold up
    to 1.0 meets both, hints pause (threshold above any probability) and the budget is halved (down to a floor);
    the unsent candidates keep being measured, so when the target is met again the threshold comes down and the
    budget grows back. Disabled feedback keeps the base
    settings.
    """

    base_threshold: float
    target_precision: float = 0.5
    window: int = 200
    max_threshold: float = 1.0
    window_s: float | None = None  # set: one adjustment per this many seconds (at least 10 outcomes)
    min_budget_factor: float = 0.05
    max_waste_share: float = 0.15  # below the 20% goal: the estimate is per window, the goal per run
    enabled: bool = True
    threshold: float = field(init=False)
    budget_factor: float = field(init=False, default=1.0)
    last_precision: float | None = field(init=False, default=None)
    _scores: list[float] = field(init=False, default_factory=list)
    _used: list[bool] = field(init=False, default_factory=list)
    _sizes: list[int] = field(init=False, default_factory=list)
    _sent: list[bool] = field(init=False, default_factory=list)
    _demand_bytes: int = field(init=False, default=0)
    _waste_floor: float = field(init=False, default=0.0)
    _floor_hold: int = field(init=False, default=0)
    _window_start: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.threshold = self.base_threshold

    def record(self, outcomes: list[Outcome], now: float | None = None) -> None:
        """Feed resolved candidates; adjusts at the end of each window (a count, or seconds if window_s)."""
        for o in outcomes:
            self._scores.append(o.score)
            self._used.append(o.used)
            self._sizes.append(o.size)
            self._sent.append(o.sent)
            if self.window_s is None and len(self._scores) >= self.window:
                self._adjust()
        if self.window_s is not None and now is not None:
            if self._window_start is None:
                self._window_start = now
            elif now - self._window_start >= self.window_s:
                if len(self._scores) >= 10:
                    self._adjust()
                self._window_start = now

    def record_demand(self, size: int) -> None:
        """Count a demand read of ``size`` bytes (the denominator of the waste share)."""
        self._demand_bytes += max(int(size), 0)

    def _take_window(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        out = (np.array(self._scores), np.array(self._used, dtype=bool), np.array(self._sizes, dtype=np.float64),
               np.array(self._sent, dtype=bool), self._demand_bytes)
        self._scores.clear()
        self._used.clear()
        self._sizes.clear()
        self._sent.clear()
        self._demand_bytes = 0
        return out

    def _adjust(self) -> None:
        scores, used, sizes, was_sent, demand = self._take_window()
        over = scores >= self.threshold
        self.last_precision = float(used[over].mean()) if over.any() else None
        if not self.enabled:
            return
        self._remember_overshoot(over, used, sizes, was_sent, demand)
        gain = used.astype(np.float64)
        # Of the candidates over the current threshold, the share the budgets let through (all, when paused).
        through = min(1.0, float(was_sent.sum()) / int(over.sum())) if over.any() else 1.0
        chosen = None
        for t in np.linspace(self.base_threshold, self.max_threshold, 19):
            sel = scores >= t
            # Fewer than 5 candidates at a threshold say too little to trust.
            if sel.sum() < 5 or gain[sel].mean() < self.target_precision:
                continue
            # Measured waste of the hints sent over t, plus what going below the current threshold would add.
            waste = float(sizes[sel & was_sent & ~used].sum())
            waste += float((sizes * (1.0 - gain))[sel & ~over].sum()) * through
            if demand <= 0 or waste <= self.max_waste_share * demand:
                chosen = float(t)
                break
        if chosen is None:
            self.threshold = PAUSED
            self.budget_factor = max(self.min_budget_factor, self.budget_factor * 0.5)
        else:
            # Up at once, down by at most a sixth of the range per window, and not under a threshold that was
            # measured to waste too much lately: the estimate for candidates under the current threshold cannot
            # see the eviction pressure that sending them would add (a small cache), so jumping down would
            # oscillate between wasting and pausing.
            step_down = min(self.threshold, self.max_threshold) - (self.max_threshold - self.base_threshold) / 6
            self.threshold = max(chosen, step_down, self._waste_floor)
            self.budget_factor = min(1.0, self.budget_factor * 2.0)

    def _remember_overshoot(self, over: np.ndarray, used: np.ndarray, sizes: np.ndarray, was_sent: np.ndarray,
                            demand: int) -> None:
        """A threshold whose sent hints wasted too much stays off limits for a while (as TCP's ssthresh)."""
        step = (self.max_threshold - self.base_threshold) / 18
        measured = float(sizes[over & was_sent & ~used].sum())
        if self.threshold <= self.max_threshold and demand > 0 and measured > self.max_waste_share * demand:
            self._waste_floor = min(self.max_threshold, self.threshold + step)
            self._floor_hold = 8
        elif self._floor_hold > 0:
            self._floor_hold -= 1
        else:
            self._waste_floor = max(0.0, self._waste_floor - step)


@dataclass
class TokenBucket:
    """Rate limit: `rate` units per second, bursts up to `burst`."""

    rate: float
    burst: float
    tokens: float = field(init=False)
    last: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, amount: float, now: float, factor: float = 1.0) -> bool:
        """Take `amount` if the bucket (refilled at rate*factor) holds it."""
        if self.last is not None and now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate * factor)
        self.last = now if self.last is None else max(self.last, now)
        if amount <= self.tokens:
            self.tokens -= amount
            return True
        return False
