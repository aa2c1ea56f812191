"""Adaptive rewrap pacing: rewrap with the capacity client traffic leaves, back off when it would hurt it.

A routine rotation's rewrap shares the node's writer thread, its GIL and the pod's CPU with the clients. A fixed
pause between batches either wastes the idle time (no clients: it could run flat out) or still hurts a busy node.
Instead the node measures its own foreground requests (block reads, writes, scans: their latency and how many are
in flight) and after every batch decides the next batch size and pause, the way compaction pacing in RocksDB or
admission control in CockroachDB steer background work by foreground signals:

- no foreground request in flight or in the last ``idle_after`` seconds: full batches, no pause;
- clients active: batches that hold the writer for at most ``busy_batch_seconds``, and a duty cycle (the share of
  wall time spent in batches) steered by additive increase / multiplicative decrease on the ratio of the foreground
  latency, averaged over a ``window``, to its baseline (measured while no rewrap ran): above ``target_ratio`` the
  duty shrinks by ``backoff``, within it grows by ``duty_step``, never under ``min_duty``.

``next_pace`` is pure; ``ForegroundGauge`` is the node's only mutable state for it (updated on the event loop).
``Pacer`` applies the same steering to other background work in chunks (a move's snapshot on the source, its
import on the target: docs/resharding.md#pacing), with a fixed pause instead when one is configured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ForegroundGauge", "ForegroundSample", "Pace", "PaceSettings", "Pacer", "next_pace"]


@dataclass(frozen=True)
class PaceSettings:
    """The steering constants (documented in docs/key-rotation.md#pacing)."""

    idle_after: float = 0.2  # seconds without a foreground request before the node counts as idle
    # While clients are active one batch holds the writer (so queued writes) at most about this long. Not less:
    # each batch is one commit with its fsync, and reads do not wait for the writer (WAL) nor long for the GIL
    # (the batch offers it every few blocks).
    busy_batch_seconds: float = 0.025
    min_batch: int = 16
    window: float = 0.25  # the duty changes at most once per window, on the window's mean latency
    target_ratio: float = 1.2  # foreground latency during rewrap / baseline, the goal the duty is steered to
    start_duty: float = 0.5
    # The floor keeps a routine rotation finishing under constant load (at a fifth of its idle pace at worst).
    min_duty: float = 0.2
    backoff: float = 0.7  # multiplicative decrease of the duty on a window over target
    duty_step: float = 0.1  # additive increase on a window within target
    max_pause: float = 0.5  # a pause longer than this would only stall the rotation; the duty floor bounds it


@dataclass(frozen=True)
class Pace:
    """What the next batch does: how many blocks, how long to pause after the previous one, and the duty cycle."""

    batch: int
    pause: float
    duty: float
    busy: bool


@dataclass(frozen=True)
class ForegroundSample:
    """The foreground as the gauge saw it right after a batch."""

    busy: bool
    latency: float | None  # mean latency of the window just closed (seconds); None: no window closed, or empty
    baseline: float | None  # their mean latency while no rewrap ran (else the lowest window mean), None before any


def next_pace(prev: Pace, fg: ForegroundSample, batch_seconds: float, blocks: int, max_batch: int,
              s: PaceSettings = PaceSettings()) -> Pace:
    """The next batch's size and the pause before it, from the batch just done (``blocks`` in ``batch_seconds``)."""
    if not fg.busy:
        return Pace(max_batch, 0.0, 1.0, False)
    duty = s.start_duty if not prev.busy else prev.duty
    if prev.busy and fg.latency is not None and fg.baseline:
        if fg.latency > s.target_ratio * fg.baseline:
            duty = max(s.min_duty, duty * s.backoff)
        else:
            duty = min(1.0, duty + s.duty_step)
    per_block = batch_seconds / blocks if blocks > 0 else 0.0
    batch = max_batch if per_block <= 0 else int(s.busy_batch_seconds / per_block)
    # The floor never exceeds the work's own batch (a snapshot paces whole chunks: max_batch 1).
    batch = min(max_batch, max(s.min_batch, batch))
    # The pause that makes this batch's share of wall time ``duty``, for a batch of the new size.
    expected = per_block * batch
    pause = min(s.max_pause, expected * (1.0 - duty) / duty)
    return Pace(batch, pause, round(duty, 6), True)


class ForegroundGauge:
    """Foreground request latency and concurrency, as the node's middleware reports them (event loop only)."""

    BASELINE_WEIGHT = 0.02  # per request, and only while no rewrap runs: a steady reference

    def __init__(self, settings: PaceSettings = PaceSettings(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._now = clock
        self.in_flight = 0
        self.last_seen = float("-inf")
        self.baseline: float | None = None
        # The lowest window mean seen: the reference when a rewrap runs from start-up, before any baseline.
        self.floor: float | None = None
        self.rewrap_running = False
        self.background = 0  # other paced work running (Pacer.running): the baseline holds still meanwhile too
        self._window_start = clock()
        self._window_sum = 0.0
        self._window_n = 0

    def begin(self) -> float:
        """A foreground request started; returns its start time for ``end``."""
        self.in_flight += 1
        now = self._now()
        self.last_seen = now
        return now

    def end(self, started: float) -> None:
        """The foreground request that ``begin`` returned ``started`` for has finished."""
        now = self._now()
        self.in_flight = max(0, self.in_flight - 1)
        self.last_seen = now
        latency = now - started
        self._window_sum += latency
        self._window_n += 1
        if not self.rewrap_running and not self.background:
            b = self.baseline
            self.baseline = latency if b is None else b + self.BASELINE_WEIGHT * (latency - b)

    def sample(self) -> ForegroundSample:
        """The foreground now; closes the latency window if it is at least ``settings.window`` old."""
        now = self._now()
        busy = self.in_flight > 0 or now - self.last_seen < self.settings.idle_after
        latency = None
        if now - self._window_start >= self.settings.window:
            if self._window_n:
                latency = self._window_sum / self._window_n
                self.floor = latency if self.floor is None else min(self.floor, latency)
            self._window_start, self._window_sum, self._window_n = now, 0.0, 0
        return ForegroundSample(busy, latency, self.baseline if self.baseline is not None else self.floor)


class Pacer:
    """Paces one kind of chunked background work by a node's ``ForegroundGauge`` (event loop only).

    ``pause``: None adapts (``next_pace``); a number is a fixed pause after every chunk (0: full speed).
    ``on_pause`` is told every pause taken (the node counts them in a metric).
    """

    def __init__(self, gauge: ForegroundGauge, pause: float | None = None,
                 on_pause: Callable[[float], None] = lambda _s: None) -> None:
        self.gauge, self.pause, self.on_pause = gauge, pause, on_pause

    def running(self) -> _Running:
        """A context manager for one run of the work (the gauge's baseline holds still while any runs)."""
        return _Running(self.gauge)

    def next(self, prev: Pace | None, seconds: float, units: int, max_batch: int) -> Pace:
        """The pace after a chunk of ``units`` that took ``seconds``; ``prev`` is the last one (None at first)."""
        if self.pause is not None:
            pace = Pace(max_batch, self.pause, 1.0, False)
        else:
            start = prev or Pace(max_batch, 0.0, 1.0, False)
            pace = next_pace(start, self.gauge.sample(), seconds, units, max_batch, self.gauge.settings)
        if pace.pause > 0:
            self.on_pause(pace.pause)
        return pace


class _Running:
    def __init__(self, gauge: ForegroundGauge) -> None:
        self.gauge = gauge

    def __enter__(self) -> None:
        self.gauge.background += 1

    def __exit__(self, *exc: object) -> None:
        self.gauge.background -= 1
