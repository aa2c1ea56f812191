"""NAB's scoring rules (Lavin & Ahmad 2015, numenta/NAB ``nab/sweeper.py``), written from their description.

Each row after the probation period gets a weight: inside an anomaly window the scaled sigmoid of its relative
position (the window's first row is worth the full TP weight, its last row nearly 0), outside a window a false
positive's cost: the scaled sigmoid of the distance past the previous window's end (relative to that window's
width) times the FP weight, or the full -FP weight before any window. A detection is a score >= the threshold; per
window only the best (earliest) detection counts, an undetected window costs the FN weight, and every detection
outside the windows adds its (negative) weight. One threshold per profile is swept over all files together, and the
corpus score is normalised as ``100 * (raw - null) / (perfect - null)``.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PROBATION_PERCENT = 0.15
PROBATION_CAP_ROWS = 5000  # NAB caps probation at PROBATION_PERCENT * 5000 = 750 rows
OUTSIDE, PROBATION = -1, -2  # window ids of rows outside any window and of rows in the probation period


@dataclass(frozen=True)
class Profile:
    """A cost matrix of NAB's: the weights of a true positive, a false positive and a false negative."""

    name: str
    tp: float
    fp: float
    fn: float


PROFILES: tuple[Profile, ...] = (
    Profile("standard", tp=1.0, fp=0.11, fn=1.0),
    Profile("reward_low_FP_rate", tp=1.0, fp=0.22, fn=1.0),
    Profile("reward_low_FN_rate", tp=1.0, fp=0.11, fn=2.0),
)


def scaled_sigmoid(position: float) -> float:
    """NAB's score of a relative position: -1 (a window's left edge) -> 0.987, 0 (its right edge) -> 0, past the
    window down to -0.987 at 1 and exactly -1 beyond 3."""
    if position > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def probation_length(rows: int, percent: float = PROBATION_PERCENT) -> float:
    """Rows at the start of a file that are not scored: ``min(floor(percent * rows), percent * 5000)``."""
    return min(math.floor(percent * rows), percent * PROBATION_CAP_ROWS)


def window_rows(timestamps: Sequence[Any], windows: Sequence[tuple[Any, Any]]) -> list[tuple[int, int]]:
    """Each window ``(start, end)`` (inclusive, comparable with the sorted ``timestamps``) as the first and last row
    index inside it, in time order.

    NAB requires the limits to be timestamps of the file; rounding inwards to the rows inside gives the same rows
    when they are, and a window with no row inside is dropped."""
    out = []
    for start, end in sorted(windows, key=lambda w: w[0]):
        left = bisect_left(timestamps, start)
        right = bisect_right(timestamps, end) - 1
        if left <= right:
            out.append((left, right))
    return out


def row_weights(
    rows: int, windows: Sequence[tuple[int, int]], profile: Profile, probation_percent: float = PROBATION_PERCENT
) -> tuple[list[float], list[int]]:
    """Per row: the weight a detection there scores, and the window it belongs to (its index in ``windows``,
    ``OUTSIDE`` or ``PROBATION``)."""
    max_tp = scaled_sigmoid(-1.0)
    probation = probation_length(rows, probation_percent)
    weights: list[float] = []
    ids: list[int] = []
    k = 0  # the next window
    prev_right: int | None = None
    prev_width = 0.0
    for i in range(rows):
        inside = k < len(windows) and windows[k][0] <= i <= windows[k][1]
        if inside:
            left, right = windows[k]
            width = float(right - left + 1)
            weights.append(scaled_sigmoid(-(right - i + 1) / width) * profile.tp / max_tp)
            ids.append(k)
        else:
            if prev_right is None:
                unweighted = -1.0
            else:
                # NAB divides by (width - 1): a one-row window makes the distance infinite, i.e. a plain -1
                unweighted = scaled_sigmoid(abs(prev_right - i) / (prev_width - 1)) if prev_width > 1 else -1.0
            weights.append(unweighted * profile.fp)
            ids.append(OUTSIDE)
        if i < probation:
            ids[-1] = PROBATION
        if inside and i == windows[k][1]:
            prev_right, prev_width = i, float(windows[k][1] - windows[k][0] + 1)
            k += 1
    return weights, ids


@dataclass(frozen=True)
class FileLabels:
    """One scored file: its number of rows and its windows as row ranges."""

    name: str
    rows: int
    windows: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class SweepResult:
    """The best threshold of a profile over a corpus and its raw score (detections are scores >= threshold)."""

    threshold: float
    raw: float


def sweep(
    files: Sequence[FileLabels],
    scores: Sequence[Sequence[float]],
    profile: Profile,
    probation_percent: float = PROBATION_PERCENT,
) -> SweepResult:
    """Sweep one threshold over all files together and return the one with the best raw score (NAB's optimiser;
    ties go to the highest threshold). A threshold above every score means no detection at all."""
    points: list[tuple[float, float, int]] = []  # (score, weight, global window id or OUTSIDE)
    n_windows = 0
    for f, s in zip(files, scores, strict=True):
        if len(s) != f.rows:
            raise ValueError(f"{f.name}: {len(s)} scores for {f.rows} rows")
        weights, ids = row_weights(f.rows, f.windows, profile, probation_percent)
        for x, w, k in zip(s, weights, ids, strict=True):
            if k != PROBATION:
                points.append((float(x), w, OUTSIDE if k == OUTSIDE else n_windows + k))
        n_windows += len(f.windows)
    # Windows entirely in probation never get a scorable row: NAB does not count them as misses either.
    scorable = {k for _, _, k in points if k != OUTSIDE}
    points.sort(key=lambda p: -p[0])
    best_detected = dict.fromkeys(scorable, -profile.fn)
    total = -profile.fn * len(scorable)
    best = SweepResult(threshold=math.inf, raw=total)
    i = 0
    while i < len(points):
        threshold = points[i][0]
        while i < len(points) and points[i][0] == threshold:
            _, w, k = points[i]
            if k == OUTSIDE:
                total += w
            elif w > best_detected[k]:
                total += w - best_detected[k]
                best_detected[k] = w
            i += 1
        if total > best.raw:
            best = SweepResult(threshold=threshold, raw=total)
    return best


def raw_score(
    files: Sequence[FileLabels],
    scores: Sequence[Sequence[float]],
    profile: Profile,
    threshold: float,
    probation_percent: float = PROBATION_PERCENT,
) -> float:
    """The raw score of the corpus at a fixed threshold (detections are scores >= threshold)."""
    total = 0.0
    for f, s in zip(files, scores, strict=True):
        weights, ids = row_weights(f.rows, f.windows, profile, probation_percent)
        best: dict[int, float] = {}
        for x, w, k in zip(s, weights, ids, strict=True):
            if k == PROBATION:
                continue
            if k != OUTSIDE:
                best.setdefault(k, -profile.fn)
            if x >= threshold:
                if k == OUTSIDE:
                    total += w
                else:
                    best[k] = max(best[k], w)
        total += sum(best.values())
    return total


def null_scores(files: Sequence[FileLabels]) -> list[list[float]]:
    """NAB's null detector: a constant 0.5 on every row."""
    return [[0.5] * f.rows for f in files]


def perfect_scores(files: Sequence[FileLabels]) -> list[list[float]]:
    """A perfect detector: 1 on the first row of each window, 0 elsewhere."""
    out = []
    for f in files:
        s = [0.0] * f.rows
        for left, _ in f.windows:
            s[left] = 1.0
        out.append(s)
    return out


def normalised(raw: float, null_raw: float, files: Sequence[FileLabels], profile: Profile) -> float:
    """NAB's normalised score: 0 for the null detector, 100 for a perfect one (every window caught at its start)."""
    perfect = profile.tp * sum(len(f.windows) for f in files)
    if perfect == null_raw:
        raise ValueError("no anomaly window to score against")
    return 100.0 * (raw - null_raw) / (perfect - null_raw)
