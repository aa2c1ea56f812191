"""Adaptive rewrap pacing: full speed when idle, short batches and a duty cycle steered by foreground latency."""

import pytest
from chronoshard.shardnode.node.pacing import ForegroundGauge, ForegroundSample, Pace, PaceSettings, next_pace

S = PaceSettings()
IDLE = Pace(256, 0.0, 1.0, False)


def test_idle_node_rewraps_full_batches_without_pause():
    p = next_pace(Pace(16, 0.2, 0.1, True), ForegroundSample(False, 0.004, 0.002), 0.001, 16, 256)
    assert p == Pace(256, 0.0, 1.0, False)


def test_clients_arriving_shrink_the_batch_to_the_busy_budget_and_start_at_half_duty():
    # 256 blocks took 25.6 ms (0.1 ms each): a 4 ms budget allows 40 blocks; half duty pauses as long as a batch.
    p = next_pace(IDLE, ForegroundSample(True, 0.003, 0.002), 0.0256, 256, 256)
    assert p.busy and p.batch == 40 and p.duty == S.start_duty
    assert p.pause == pytest.approx(0.004)


def test_latency_above_target_halves_the_duty_and_lengthens_the_pause():
    prev = Pace(40, 0.004, 0.5, True)
    p = next_pace(prev, ForegroundSample(True, 0.003, 0.002), 0.004, 40, 256)  # 1.5x baseline > 1.2x
    assert p.duty == 0.25 and p.pause == pytest.approx(0.004 * 3)


def test_latency_within_target_grows_the_duty_additively_up_to_full():
    prev = Pace(40, 0.004, 0.5, True)
    p = next_pace(prev, ForegroundSample(True, 0.0022, 0.002), 0.004, 40, 256)  # 1.1x baseline
    assert p.duty == pytest.approx(0.55) and p.pause < 0.004
    for _ in range(20):
        p = next_pace(p, ForegroundSample(True, 0.0022, 0.002), 0.004, 40, 256)
    assert p.duty == 1.0 and p.pause == 0.0


def test_duty_and_pause_have_floors_and_ceilings():
    p = Pace(40, 0.004, 0.5, True)
    for _ in range(20):
        p = next_pace(p, ForegroundSample(True, 0.1, 0.002), 0.004, 40, 256)
    assert p.duty == S.min_duty and p.pause <= S.max_pause
    slow = next_pace(p, ForegroundSample(True, 0.1, 0.002), 2.0, 8, 256)  # 250 ms a block: the pause is capped
    assert slow.batch == S.min_batch and slow.pause == S.max_pause


def test_batch_never_exceeds_the_runs_batch_size():
    p = next_pace(IDLE, ForegroundSample(True, None, None), 0.00001, 256, 100)
    assert p.batch == 100


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_gauge_counts_in_flight_and_recent_requests_as_busy():
    clock = Clock()
    g = ForegroundGauge(clock=clock)
    assert not g.sample().busy
    started = g.begin()
    clock.t += 5  # a long request: busy while in flight
    assert g.sample().busy
    g.end(started)
    clock.t += S.idle_after / 2
    assert g.sample().busy
    clock.t += S.idle_after
    assert not g.sample().busy


def test_gauge_baseline_moves_only_while_no_rewrap_runs():
    clock = Clock()
    g = ForegroundGauge(clock=clock)

    def request(seconds: float) -> None:
        started = g.begin()
        clock.t += seconds
        g.end(started)

    request(0.002)
    assert g.sample().baseline == pytest.approx(0.002) and g.sample().latency == pytest.approx(0.002)
    g.rewrap_running = True
    for _ in range(10):
        request(0.010)
    s = g.sample()
    assert s.baseline == pytest.approx(0.002)  # the rewrap's own effect never becomes the reference
    assert s.latency is not None and s.latency > 0.008


def test_gauge_without_a_baseline_uses_the_lowest_recent_latency():
    clock = Clock()
    g = ForegroundGauge(clock=clock)
    g.rewrap_running = True  # a rewrap resumed at start-up, before any client request
    for seconds in (0.003, 0.003, 0.009):
        started = g.begin()
        clock.t += seconds
        g.end(started)
    s = g.sample()
    assert s.baseline == pytest.approx(0.003) and s.latency is not None and s.latency > s.baseline
