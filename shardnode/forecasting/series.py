"""Partition samples as regular series: stored bytes and request rate on one time grid, counter resets undone."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from chronoshard.shardnode.forecasting.types import PartitionSample

MAX_HISTORY_STEPS = 320  # the models see at most this many recent grid points: cheap, and a day at 5 min
MAX_HORIZON_STEPS = 60  # the window is cut into at most this many forecast steps


@dataclass(frozen=True)
class Grid:
    """Bytes and load (requests/s) at ``times`` (regular, ``step`` apart, the last one at the last sample)."""

    times: np.ndarray
    bytes: np.ndarray
    load: np.ndarray  # mean request rate over the step ending at each time (the first is the second's)
    step: float


def unreset(counter: np.ndarray) -> np.ndarray:
    """A cumulative counter with its resets undone: after a drop the counter counts again from zero."""
    d = np.diff(counter)
    # a drop is a restart: the new value is what was counted since it (not a negative load)
    d = np.where(d < 0, counter[1:], d)
    return np.concatenate(([0.0], np.cumsum(d)))


def choose_step(times: np.ndarray, window_seconds: float) -> float:
    """The grid step: no finer than the samples, and the window in at most MAX_HORIZON_STEPS steps."""
    dt = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    return max(dt, window_seconds / MAX_HORIZON_STEPS, 1e-3)


def to_grid(samples: Sequence[PartitionSample], step: float, max_steps: int = MAX_HISTORY_STEPS) -> Grid:
    """The samples on a regular grid ending at the last sample (at most ``max_steps`` + 1 points)."""
    ordered = sorted(samples, key=lambda s: s.time)
    t = np.array([s.time for s in ordered], dtype=float)
    size = np.array([s.bytes for s in ordered], dtype=float)
    requests = unreset(np.array([s.writes for s in ordered], dtype=float)) + unreset(
        np.array([s.reads for s in ordered], dtype=float)
    )
    n = min(int(math.floor((t[-1] - t[0]) / step + 1e-9)), max_steps)
    times = t[-1] - step * np.arange(n, -1, -1, dtype=float)
    grid_bytes = np.interp(times, t, size)
    cum = np.interp(times, t, requests)
    load = np.diff(cum) / step
    load = np.concatenate((load[:1], load)) if len(load) else np.zeros(1)
    return Grid(times, grid_bytes, load, step)
