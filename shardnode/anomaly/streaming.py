"""Streaming univariate anomaly detectors: ``StreamingDetector`` (ours) and ``WindowedGaussian`` (NAB's baseline).

Both learn one point at a time (``update``), can score a point without learning it (``peek``), keep bounded memory
and survive restarts as plain JSON (``to_state``/``from_state``).

``StreamingDetector`` measures how new each point is against a bounded history: the distance of the value to the
nearest value seen (novelty; a level never reached, a spike), the distance of the recent sub-sequence to its nearest
neighbour among the past sub-sequences (shape, as KNN CAD; a pattern never seen at a familiar level) and how far the
value lies beyond the range of the last ``span`` points (exceed; 0 inside it; by default four histories, kept as
block extremes), and optionally the novelty of the short mean, of the step and of the value against the recent past
only. Each statistic becomes a surprise ``-log10 p``, ``p`` its conformal tail probability among that statistic's
own past values (so no statistic needs a scale, and the scores of different series are comparable); the point's
surprise is Fisher's combination of them (the probability that independent tails are jointly this small), or the
largest one less ``single`` decades when that is more. A surprise not above the largest of the last ``quiet`` points
is damped (a repeat), and an alarm (``alarm`` decades or more) silences the next ``hold`` points that are not
``margin`` decades more surprising still: one incident raises one alarm, not a run of escalating ones. The time
``t`` is not used: the points are taken as evenly spaced, as the change-stream windows and NAB's series are.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

STATE_VERSION = 4
FEATURES = ("novelty", "shape", "exceed", "recent", "mean", "step")
DEFAULT_FEATURES = ("novelty", "shape", "exceed")
RANGE_BLOCKS = 64  # the long range is kept as the extremes of this many blocks of points
LN10 = math.log(10.0)


class _Range:
    """The extremes of about the last ``span`` points, kept per block of ``span / RANGE_BLOCKS`` points: bounded
    memory for a range much longer than the history."""

    def __init__(self, span: int) -> None:
        self.block = max(1, -(-span // RANGE_BLOCKS))
        self.blocks: deque[tuple[float, float]] = deque(maxlen=RANGE_BLOCKS)  # finished blocks' (min, max)
        self.lo, self.hi, self.count = math.inf, -math.inf, 0  # the block being filled

    def add(self, v: float) -> None:
        self.lo, self.hi, self.count = min(self.lo, v), max(self.hi, v), self.count + 1
        if self.count == self.block:
            self.blocks.append((self.lo, self.hi))
            self.lo, self.hi, self.count = math.inf, -math.inf, 0

    def exceed(self, x: float) -> float:
        """How far ``x`` lies beyond the range (0 inside it or when empty)."""
        lo = min([self.lo, *(b[0] for b in self.blocks)])
        hi = max([self.hi, *(b[1] for b in self.blocks)])
        return max(x - hi, lo - x, 0.0) if hi >= lo else 0.0

    def to_state(self) -> dict[str, Any]:
        return {"blocks": [list(b) for b in self.blocks], "lo": self.lo, "hi": self.hi, "count": self.count}

    @classmethod
    def from_state(cls, span: int, state: Any) -> _Range:
        r = cls(span)
        _check(isinstance(state, Mapping), "range")
        blocks = state["blocks"]
        _check(isinstance(blocks, list) and len(blocks) <= RANGE_BLOCKS, "range blocks")
        for b in blocks:
            lo, hi = _floats(b, 2, "range block")
            _check(lo <= hi, "range block")
            r.blocks.append((lo, hi))
        count = state["count"]
        _check(isinstance(count, int) and not isinstance(count, bool) and 0 <= count < r.block, "range count")
        r.count = count
        if count:
            r.lo, r.hi = _floats([state["lo"], state["hi"]], 2, "range extremes")
            _check(r.lo <= r.hi, "range extremes")
        return r


class _Window:
    """The last ``cap`` floats in arrival order and sorted, for order statistics, nearest values and tails in
    O(log n) (plus a memmove of the sorted list)."""

    def __init__(self, cap: int, values: Iterable[float] = ()) -> None:
        self.cap = cap
        self.order: deque[float] = deque()
        self.sorted: list[float] = []
        for v in values:
            self.add(v)

    def __len__(self) -> int:
        return len(self.order)

    def add(self, v: float) -> None:
        self.order.append(v)
        insort(self.sorted, v)
        if len(self.order) > self.cap:
            old = self.order.popleft()
            del self.sorted[bisect_left(self.sorted, old)]

    def nearest(self, x: float) -> float:
        """The distance of ``x`` to the nearest value held (0 when empty)."""
        s, n = self.sorted, len(self.sorted)
        if n == 0:
            return 0.0
        i = bisect_left(s, x)
        return min(s[i] - x if i < n else math.inf, x - s[i - 1] if i > 0 else math.inf)

    def surprise(self, v: float) -> float:
        """``-log10`` of the conformal tail probability of ``v`` among the values held (larger = more unusual);
        beyond the largest the probability keeps falling exponentially, in units of the upper spread."""
        s, n = self.sorted, len(self.sorted)
        above = n - bisect_left(s, v)
        p = (above + 1) / (n + 1)
        if above == 0 and n:
            top = s[-1]
            spread = top - s[n // 2]
            if spread <= 0.0:
                spread = abs(top) * 1e-3 + 1e-12
            p *= math.exp(-min((v - top) / spread, 700.0))
        return -math.log10(p)

    def to_list(self) -> list[float]:
        return list(self.order)


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(f"bad detector state: {what}")


class StreamingDetector:
    """Streaming anomaly detector of one numeric series; ``update`` returns a score in [0, 1]."""

    def __init__(
        self,
        *,
        probation: int = 150,
        history: int = 4000,
        shape: int = 8,
        recent: int = 288,
        mean: int = 6,
        features: Iterable[str] = DEFAULT_FEATURES,
        single: float = 1.0,
        settle: int = 0,
        quiet: int = 0,
        damp: float = 0.7,
        span: int = 0,
        alarm: float = 1.5,
        hold: int = 0,
        margin: float = 0.5,
        scale: float = 4.0,
        **params: Any,
    ) -> None:
        if params:
            raise TypeError(f"unknown parameters: {sorted(params)}")
        features = tuple(features)
        if (
            probation < 0
            or history < 50
            or not 2 <= shape < history // 4
            or not 2 <= recent <= history
            or not 2 <= mean <= history
            or not features
            or not set(features) <= set(FEATURES)
            or len(set(features)) != len(features)
            or not 0.0 < damp <= 1.0
            or scale <= 0
            or quiet < 0
            or single < 0
            or settle < 0
            or alarm < 0
            or hold < 0
            or margin < 0
            or span < 0
        ):
            raise ValueError(
                f"probation >= 0, history >= 50, 2 <= shape < history / 4, 2 <= recent, mean <= "
                f"history, features a subset of {FEATURES}, single >= 0, quiet >= 0, 0 < damp <= 1, "
                "span >= 0, alarm >= 0, hold >= 0, margin >= 0, scale > 0"
            )
        self.probation = probation
        self.history = history
        self.span = span if span > 0 else 4 * history  # the range that `exceed` measures against
        self.shape = shape
        self.recent_len = recent
        self.mean_len = mean
        self.feature_names = features
        self.single = single
        # The statistics of the first points are inflated (little history to be near): learning them makes the
        # calibration deaf for a while, so it may start later.
        self.settle = settle
        self.quiet = quiet if quiet > 0 else max(probation, 100)
        self.damp = damp
        # An alarm (a damped surprise of at least `alarm` decades) silences the next `hold` points unless one is
        # `margin` decades more surprising still: one incident, one alarm, however its points escalate.
        self.alarm = alarm
        self.hold = hold if hold > 0 else self.quiet // 4
        self.margin = margin
        self.scale = scale
        self.seen = 0
        self.values = _Window(history)  # the learnt values, for novelty and the sub-sequences
        self.range = _Range(self.span)
        self.recent = _Window(recent)
        self.means = _Window(history)
        self.steps = _Window(history)
        self.calibration = {name: _Window(history) for name in features}  # each statistic's own past values
        self.alarms: deque[float] = deque(maxlen=self.quiet)  # the last points' surprises, for damping repeats
        self.since_alarm = -1  # points since the last alarm (-1: none yet)
        self.alarm_surprise = 0.0  # that alarm's (damped) surprise

    # -- scoring -------------------------------------------------------------------------------------------------

    def _statistics(self, x: float) -> dict[str, float] | None:
        """The point's statistics against the history, or None while there is too little of it."""
        n = len(self.values)
        if n < 2 * self.shape:
            return None
        order = self.values.order
        stats: dict[str, float] = {}
        for name in self.feature_names:
            if name == "novelty":
                stats[name] = self.values.nearest(x)
            elif name == "exceed":  # beyond the long range, 0 inside it
                stats[name] = self.range.exceed(x)
            elif name == "recent":
                stats[name] = self.recent.nearest(x)
            elif name == "step":
                stats[name] = self.steps.nearest(x - order[-1])
            elif name == "mean":
                stats[name] = self.means.nearest(self._mean(x))
            else:  # shape: the last `shape` values (x included) against every earlier sub-sequence
                h = np.fromiter(order, dtype=np.float64, count=n)
                q = np.append(h[n - self.shape + 1 :], x)
                past = np.lib.stride_tricks.sliding_window_view(h[: n - self.shape + 1], self.shape)
                stats[name] = float(np.sqrt(np.min(np.sum((past - q) ** 2, axis=1))))
        return stats

    def _mean(self, x: float) -> float:
        order, m = self.values.order, self.mean_len
        return (x + sum(order[i] for i in range(len(order) - m + 1, len(order)))) / m

    def _surprise(self, stats: dict[str, float] | None) -> float:
        if stats is None or len(self.calibration[self.feature_names[0]]) < 20:
            return 0.0
        each = [self.calibration[k].surprise(v) for k, v in stats.items()]
        # Agreement of the statistics, or one of them alone when it is `single` decades more surprising than that.
        return max(fisher(each), max(each) - self.single)

    def _damped(self, surprise: float) -> tuple[float, bool]:
        """The point's surprise after damping repeats, and whether it raises an alarm."""
        if self.alarms and surprise <= max(self.alarms):
            surprise *= self.damp  # not above the recent points' surprise: a repeat of them
        if 0 <= self.since_alarm < self.hold and surprise <= self.alarm_surprise + self.margin:
            return 0.0, False  # within the hold of a larger alarm: part of its incident
        return surprise, surprise >= self.alarm

    def _score(self, surprise: float) -> float:
        if self.seen < self.probation:
            return 0.0
        return 1.0 - math.exp(-surprise / self.scale)

    def peek(self, t: float, x: float) -> float:
        """The score ``x`` would get now; the state is unchanged."""
        x = float(x)
        if not math.isfinite(x):
            return 0.0
        return self._score(self._damped(self._surprise(self._statistics(x)))[0])

    def update(self, t: float, x: float) -> float:
        """Score ``x`` and learn it."""
        x = float(x)
        if not math.isfinite(x):
            return 0.0  # a missing reading is neither scored nor learnt
        stats = self._statistics(x)
        surprise = self._surprise(stats)
        damped, alarm = self._damped(surprise)
        score = self._score(damped)
        if alarm:
            self.since_alarm, self.alarm_surprise = 0, damped
        elif self.since_alarm >= 0:
            self.since_alarm += 1
        if stats is not None and self.seen >= self.settle:
            for k, v in stats.items():
                self.calibration[k].add(v)
        # The optional statistics' histories are kept only when used.
        if "mean" in self.feature_names and len(self.values) >= self.mean_len:
            self.means.add(self._mean(x))
        if "step" in self.feature_names and len(self.values):
            self.steps.add(x - self.values.order[-1])
        if "recent" in self.feature_names:
            self.recent.add(x)
        self.values.add(x)
        if "exceed" in self.feature_names:
            self.range.add(x)
        self.alarms.append(surprise)
        self.seen += 1
        return score

    # -- persistence ---------------------------------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """The construction parameters (JSON-serialisable)."""
        return {
            "probation": self.probation,
            "history": self.history,
            "shape": self.shape,
            "recent": self.recent_len,
            "mean": self.mean_len,
            "features": list(self.feature_names),
            "single": self.single,
            "settle": self.settle,
            "quiet": self.quiet,
            "damp": self.damp,
            "span": self.span,
            "alarm": self.alarm,
            "hold": self.hold,
            "margin": self.margin,
            "scale": self.scale,
        }

    def to_state(self) -> dict[str, Any]:
        """The detector as plain JSON-serialisable data."""
        return {
            "kind": "streaming",
            "version": STATE_VERSION,
            "params": self.params(),
            "seen": self.seen,
            "values": self.values.to_list(),
            "range": self.range.to_state(),
            "recent": self.recent.to_list(),
            "means": self.means.to_list(),
            "steps": self.steps.to_list(),
            "calibration": {k: w.to_list() for k, w in self.calibration.items()},
            "alarms": list(self.alarms),
            "since_alarm": self.since_alarm,
            "alarm_surprise": self.alarm_surprise,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> StreamingDetector:
        """A detector from ``to_state``'s data; ValueError when it is not a valid state."""
        try:
            _check(state.get("kind") == "streaming" and state.get("version") == STATE_VERSION, "kind/version")
            params = state["params"]
            _check(isinstance(params, Mapping), "params")
            d = cls(**params)
            seen = state["seen"]
            _check(isinstance(seen, int) and not isinstance(seen, bool) and seen >= 0, "seen")
            d.seen = seen
            d.values = _Window(d.history, _floats(state["values"], d.history, "values"))
            d.range = _Range.from_state(d.span, state["range"])
            d.recent = _Window(d.recent_len, _floats(state["recent"], d.recent_len, "recent"))
            d.means = _Window(d.history, _floats(state["means"], d.history, "means"))
            d.steps = _Window(d.history, _floats(state["steps"], d.history, "steps"))
            cal = state["calibration"]
            _check(isinstance(cal, Mapping) and set(cal) == set(d.feature_names), "calibration")
            d.calibration = {k: _Window(d.history, _floats(cal[k], d.history, k)) for k in d.feature_names}
            d.alarms = deque(_floats(state["alarms"], d.quiet, "alarms"), maxlen=d.quiet)
            since = state["since_alarm"]
            _check(isinstance(since, int) and not isinstance(since, bool) and since >= -1, "since_alarm")
            d.since_alarm = since
            d.alarm_surprise = _floats([state["alarm_surprise"]], 1, "alarm_surprise")[0]
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"bad detector state: {e}") from e
        return d


def fisher(surprises: list[float]) -> float:
    """Fisher's combination of independent tail probabilities given as ``-log10 p``: the ``-log10`` of the
    probability that their product is as small by chance (chi-squared tail with 2k degrees of freedom)."""
    s = sum(surprises) * LN10  # -ln of the product
    term, tail = 1.0, 1.0
    for i in range(1, len(surprises)):
        term *= s / i
        tail += term
    return (s - math.log(tail)) / LN10


def _floats(values: Any, cap: int, what: str) -> list[float]:
    _check(isinstance(values, list) and len(values) <= cap, what)
    out = []
    for v in values:
        _check(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), what)
        out.append(float(v))
    return out


class WindowedGaussian:
    """NAB's windowed Gaussian baseline: a point's score is 1 minus the two-sided Gaussian tail probability of its
    value under the mean and standard deviation of the last ``window`` values, refreshed every ``step`` points."""

    def __init__(self, *, probation: int = 150, window: int = 6400, step: int = 100, **params: Any) -> None:
        if params:
            raise TypeError(f"unknown parameters: {sorted(params)}")
        if window < 1 or step < 1:
            raise ValueError("window >= 1, step >= 1")
        self.probation = probation  # kept for the shared interface: NAB's version scores from the second point
        self.window = window
        self.step = step
        self.data: list[float] = []
        self.pending: list[float] = []
        self.mean = 0.0
        self.std = 1.0

    def _refresh(self) -> None:
        a = np.asarray(self.data)
        self.mean = float(a.mean())
        std = float(a.std())
        self.std = std if std > 0.0 else 1e-6

    def peek(self, t: float, x: float) -> float:
        """The score ``x`` would get now; the state is unchanged."""
        if not self.data:
            return 0.0
        z = abs(float(x) - self.mean) / self.std
        return 1.0 - 0.5 * math.erfc(z / math.sqrt(2.0))

    def update(self, t: float, x: float) -> float:
        """Score ``x`` and learn it."""
        score = self.peek(t, x)
        if len(self.data) < self.window:
            self.data.append(float(x))
            self._refresh()
        else:
            self.pending.append(float(x))
            if len(self.pending) == self.step:
                self.data = self.data[self.step :] + self.pending
                self.pending = []
                self._refresh()
        return score

    def to_state(self) -> dict[str, Any]:
        """The detector as plain JSON-serialisable data."""
        return {
            "kind": "windowed_gaussian",
            "version": STATE_VERSION,
            "params": {"probation": self.probation, "window": self.window, "step": self.step},
            "data": list(self.data),
            "pending": list(self.pending),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> WindowedGaussian:
        """A detector from ``to_state``'s data; ValueError when it is not a valid state."""
        try:
            _check(state.get("kind") == "windowed_gaussian" and state.get("version") == STATE_VERSION, "kind/version")
            d = cls(**state["params"])
            d.data = _floats(state["data"], d.window, "data")
            d.pending = _floats(state["pending"], d.step - 1, "pending")
            _check(not d.pending or len(d.data) == d.window, "pending before the window is full")
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"bad detector state: {e}") from e
        if d.data:
            d._refresh()
        return d
