"""Adaptive rewrap pacing: full speed when idle, bounded batches and a duty cycle steered by foreground latency."""

import pytest
from chronoshard.shardnode.node.pacing import ForegroundGauge, ForegroundSample, Pace, Pacer, PaceSettings, next_pace

S = PaceSettings()
IDLE = Pace(256, 0.0, 1.0, False)


def test_idle_node_rewraps_full_batches_without_pause():
    p = next_pace(Pace(16, 0.2, 0.3, True), ForegroundSample(False, 0.004, 0.002), 0.001, 16, 256)
    assert p == Pace(256, 0.0, 1.0, False)


def test_clients_arriving_bound_the_batch_and_start_at_half_duty():
    # 256 blocks took 256 ms (1 ms each): a 25 ms budget allows 25 blocks; half duty pauses as long as a batch.
    p = next_pace(IDLE, ForegroundSample(True, 0.003, 0.002), 0.256, 256, 256)
    assert p.busy and p.batch == 25 and p.duty == S.start_duty
    assert p.pause == pytest.approx(0.025)
    fast = next_pace(IDLE, ForegroundSample(True, None, None), 0.0128, 256, 256)  # 50 µs a block: the whole batch
    assert fast.batch == 256


def test_a_window_over_target_backs_the_duty_off_and_lengthens_the_pause():
    prev = Pace(25, 0.025, 0.5, True)
    p = next_pace(prev, ForegroundSample(True, 0.003, 0.002), 0.025, 25, 256)  # 1.5x baseline > 1.2x
    assert p.duty == pytest.approx(0.5 * S.backoff) and p.pause > 0.025


def test_a_window_within_target_grows_the_duty_additively_up_to_full():
    prev = Pace(25, 0.025, 0.5, True)
    p = next_pace(prev, ForegroundSample(True, 0.0022, 0.002), 0.025, 25, 256)  # 1.1x baseline
    assert p.duty == pytest.approx(0.5 + S.duty_step) and p.pause < 0.025
    for _ in range(10):
        p = next_pace(p, ForegroundSample(True, 0.0022, 0.002), 0.025, 25, 256)
    assert p.duty == 1.0 and p.pause == 0.0


def test_no_closed_window_keeps_the_duty():
    prev = Pace(25, 0.025, 0.4, True)
    assert next_pace(prev, ForegroundSample(True, None, 0.002), 0.025, 25, 256).duty == 0.4


def test_duty_and_pause_have_floors_and_ceilings():
    p = Pace(25, 0.025, 0.5, True)
    for _ in range(20):
        p = next_pace(p, ForegroundSample(True, 0.1, 0.002), 0.025, 25, 256)
    assert p.duty == S.min_duty and p.pause <= S.max_pause
    slow = next_pace(p, ForegroundSample(True, 0.1, 0.002), 8.0, 16, 256)  # 0.5 s a block: the pause is capped
    assert slow.batch == S.min_batch and slow.pause == S.max_pause


def test_batch_never_exceeds_the_runs_batch_size():
    p = next_pace(IDLE, ForegroundSample(True, None, None), 0.00001, 256, 100)
    assert p.batch == 100


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def request(g: ForegroundGauge, clock: Clock, seconds: float) -> None:
    started = g.begin()
    clock.t += seconds
    g.end(started)


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


def test_gauge_closes_a_window_of_mean_latency_and_its_baseline_moves_only_without_rewrap():
    clock = Clock()
    g = ForegroundGauge(clock=clock)
    request(g, clock, 0.002)
    assert g.baseline == pytest.approx(0.002)
    clock.t += S.window
    first = g.sample()
    assert first.latency == pytest.approx(0.002) and first.baseline == pytest.approx(0.002)
    g.rewrap_running = True
    for _ in range(10):
        request(g, clock, 0.010)
    assert g.sample().latency is None or clock.t - 100 >= S.window  # a window closes only once it is old enough
    clock.t += S.window
    s = g.sample()
    assert s.latency == pytest.approx(0.010)
    assert s.baseline == pytest.approx(0.002)  # the rewrap's own effect never becomes the reference
    clock.t += S.window
    assert g.sample().latency is None  # an empty window says nothing


def test_gauge_without_a_baseline_uses_the_lowest_window_mean():
    clock = Clock()
    g = ForegroundGauge(clock=clock)
    g.rewrap_running = True  # a rewrap resumed at start-up, before any client request
    for seconds in (0.003, 0.009):
        request(g, clock, seconds)
        clock.t += S.window
        g.sample()
    s = g.sample()
    assert s.baseline == pytest.approx(0.003)


def test_a_work_batch_under_the_floor_stays_its_own_size():
    # A snapshot paces whole chunks (max_batch 1): the floor never makes the pause 16 chunks long.
    p = next_pace(IDLE, ForegroundSample(True, None, None), 0.01, 1, 1)
    assert p.batch == 1 and p.pause == pytest.approx(0.01)


def test_pacer_adapts_to_the_gauge_counts_its_pauses_and_a_fixed_pause_overrides():
    clock = Clock()
    g = ForegroundGauge(clock=clock)
    taken: list[float] = []
    pacer = Pacer(g, None, taken.append)
    idle = pacer.next(None, 0.01, 100, 500)
    assert idle == Pace(500, 0.0, 1.0, False) and taken == []  # no client: full chunks, no pause
    g.begin()  # a client request in flight
    busy = pacer.next(idle, 0.01, 100, 500)
    assert busy.busy and busy.batch == 250 and busy.pause > 0 and taken == [busy.pause]
    pacer.pause = 0.0  # movePauseSeconds: 0: full speed whatever the clients do
    assert pacer.next(busy, 0.01, 100, 500) == Pace(500, 0.0, 1.0, False) and len(taken) == 1
    pacer.pause = 0.05
    assert pacer.next(None, 0.01, 100, 500).pause == 0.05 and taken[-1] == 0.05


def test_the_baseline_holds_still_while_paced_work_runs():
    clock = Clock()
    g = ForegroundGauge(clock=clock)
    request(g, clock, 0.002)
    with Pacer(g).running():
        assert g.background == 1
        request(g, clock, 0.050)
    assert g.background == 0 and g.baseline == pytest.approx(0.002)
    request(g, clock, 0.050)
    assert g.baseline > 0.002
