"""When a series crosses a split threshold: on simulated paths (forecast) and on observed samples (the truth)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from chronoshard.shardnode.forecasting.series import Grid, to_grid
from chronoshard.shardnode.forecasting.types import PartitionSample, SplitThresholds

NEVER = np.iinfo(np.int64).max  # the step index of a path that does not cross


def steps_to_sustain(step: float, sustain_seconds: float) -> int:
    """How many consecutive grid steps above the load threshold make a sustained crossing."""
    return max(1, int(np.ceil(sustain_seconds / step - 1e-9)))


def trailing_run(above: np.ndarray) -> int:
    """How many of the last values of a boolean series are True in a row."""
    if not len(above) or not above[-1]:
        return 0
    falses = np.flatnonzero(~above)
    return int(len(above) - 1 - falses[-1]) if len(falses) else int(len(above))


def first_true(mask: np.ndarray) -> np.ndarray:
    """Per row, the index of the first True (NEVER when there is none)."""
    hit = mask.any(axis=1)
    return np.where(hit, mask.argmax(axis=1), NEVER)


def size_crossing(paths: np.ndarray, size_bytes: float) -> np.ndarray:
    """Per path, the first step at which the stored bytes reach the size threshold."""
    return first_true(paths >= size_bytes)


def load_crossing(paths: np.ndarray, load_rps: float, need: int, carried: int) -> np.ndarray:
    """Per path, the step at which load has stayed above the threshold for ``need`` steps (``carried`` of them
    already in the history)."""
    run = np.full(paths.shape[0], carried, dtype=np.int64)
    done = np.full(paths.shape[0], NEVER, dtype=np.int64)
    for j in range(paths.shape[1]):
        run = np.where(paths[:, j] >= load_rps, run + 1, 0)
        done = np.where((done == NEVER) & (run >= need), j, done)
    return done


def observed_crossing(
    samples: Sequence[PartitionSample], start: float, end: float, thresholds: SplitThresholds, step: float
) -> tuple[float, str] | None:
    """The first time in (start, end] the observed samples cross a threshold (and which), on a grid of ``step``."""
    grid = to_grid([s for s in samples if s.time <= end], step)
    return first_observed(grid, start, thresholds)


def first_observed(grid: Grid, start: float, thresholds: SplitThresholds) -> tuple[float, str] | None:
    """The first grid time after ``start`` at which the grid's bytes or sustained load crossed."""
    after = grid.times > start
    size_hits = np.flatnonzero(after & (grid.bytes >= thresholds.size_bytes))
    need = steps_to_sustain(grid.step, thresholds.sustain_seconds)
    above = grid.load >= thresholds.load_rps
    runs = np.zeros(len(above), dtype=np.int64)
    run = 0
    for i, a in enumerate(above):
        run = run + 1 if a else 0
        runs[i] = run
    load_hits = np.flatnonzero(after & (runs >= need))
    best: tuple[float, str] | None = None
    if len(size_hits):
        best = (float(grid.times[size_hits[0]]), "size")
    if len(load_hits) and (best is None or grid.times[load_hits[0]] < best[0]):
        best = (float(grid.times[load_hits[0]]), "load")
    return best
