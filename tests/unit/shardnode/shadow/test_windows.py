"""Which detection windows are complete."""

from __future__ import annotations

from chronoshard.shardnode.shadow.windows import MAX_CATCH_UP_WINDOWS, due_windows, watermark, window_start


def test_windows_are_aligned_to_the_interval() -> None:
    assert window_start(125.0, 60.0) == 120.0
    assert window_start(120.0, 60.0) == 120.0


def test_a_window_is_due_only_once_it_ended() -> None:
    assert due_windows(120.0, 179.9, 60.0) == []
    assert due_windows(120.0, 180.0, 60.0) == [120.0]
    assert due_windows(120.0, 305.0, 60.0) == [120.0, 180.0, 240.0]


def test_the_watermark_follows_the_clock_when_caught_up_else_the_newest_change() -> None:
    assert watermark(1000.0, True, 400.0, 2.0) == 998.0
    assert watermark(1000.0, False, 400.0, 2.0) == 398.0
    assert due_windows(0.0, watermark(1000.0, False, None, 2.0), 60.0) == []


def test_a_long_gap_keeps_only_the_newest_windows() -> None:
    starts = due_windows(0.0, 60.0 * (MAX_CATCH_UP_WINDOWS + 5), 60.0)
    assert len(starts) == MAX_CATCH_UP_WINDOWS
    assert starts[0] == 5 * 60.0 and starts[-1] == 60.0 * (MAX_CATCH_UP_WINDOWS + 4)
