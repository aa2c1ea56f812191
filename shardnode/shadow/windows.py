"""Which detection windows of a table are complete (pure): windows are [k*I, (k+1)*I) of node commit time, and a
window closes once no change of it can still arrive.

Changes reach the shadow in LSN order, which is commit-time order up to the node's clock steps. While the capture
is caught up, a window is complete ``grace`` seconds after its end; while it is behind (after a restart, or under a
burst) the newest change applied tells how far the stream has got: every window ending ``grace`` before that
change's time is complete. Empty windows close too: they are the quiet minutes a model learns from.
"""

from __future__ import annotations

import math

MAX_CATCH_UP_WINDOWS = 10_080  # a week of 1-minute windows: older gaps are skipped, not replayed as empty windows


def window_start(t: float, interval: float) -> float:
    """The start of the window holding time ``t``."""
    return math.floor(t / interval) * interval


def watermark(now: float, caught_up: bool, newest_change_time: float | None, grace: float) -> float:
    """The time up to which every change has been applied (windows ending at or before it are complete)."""
    if caught_up:
        return now - grace
    return (newest_change_time - grace) if newest_change_time is not None else float("-inf")


def due_windows(closed_through: float, mark: float, interval: float) -> list[float]:
    """Starts of the windows after ``closed_through`` (a window boundary) that end at or before ``mark``, oldest
    first (bounded: a longer gap keeps only the newest ``MAX_CATCH_UP_WINDOWS``)."""
    if not math.isfinite(mark) or mark < closed_through + interval:
        return []
    n = int((mark - closed_through) // interval)
    skip = max(0, n - MAX_CATCH_UP_WINDOWS)
    return [closed_through + i * interval for i in range(skip, n)]
