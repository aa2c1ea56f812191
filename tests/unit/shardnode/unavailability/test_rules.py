import random

from chronoshard.shardnode.unavailability.rules import BASE_RISK, rule_risk
from chronoshard.shardnode.unavailability.types import HealthPoint

from .histories import STEP, down, healthy

WINDOWS = (300.0, 900.0, 1800.0)


def _healthy(n: int = 180, seed: int = 1) -> list[HealthPoint]:
    rng = random.Random(seed)
    return [healthy(rng, i * STEP) for i in range(n)]


def _filling(n: int = 180, per_step: float = 0.003) -> list[HealthPoint]:
    rng = random.Random(2)
    return [HealthPoint(**{**healthy(rng, i * STEP).__dict__, "capacity_free_ratio": 0.6 - per_step * i})
            for i in range(n)]  # 0.06 free left, 10 min to full


def _monotone(p: dict[float, float]) -> bool:
    vals = [p[w] for w in WINDOWS]
    return all(a <= b for a, b in zip(vals, vals[1:], strict=False))


def test_a_filling_disk_ranks_above_a_healthy_one() -> None:
    ok, filling = _healthy(), _filling()
    r_ok, r_fill = rule_risk(ok, ok[-1].time, WINDOWS), rule_risk(filling, filling[-1].time, WINDOWS)
    assert r_ok.source == r_fill.source == "rules"
    for w in WINDOWS:
        assert r_fill.probabilities[w] > r_ok.probabilities[w]
    assert r_ok.probabilities[300.0] == BASE_RISK and r_ok.drivers == []
    assert r_fill.probabilities[900.0] >= 0.85 and r_fill.drivers[0] == "projected time to disk full"
    assert _monotone(r_fill.probabilities) and _monotone(r_ok.probabilities)


def test_a_slow_fill_is_risk_only_for_the_longer_windows() -> None:
    slow = _filling(per_step=0.00025)  # 0.555 free left at 0.025%/sample: ~6 h to full
    assert rule_risk(slow, slow[-1].time, WINDOWS).probabilities == {w: BASE_RISK for w in WINDOWS}
    close = _filling(per_step=0.0024)  # 0.17 free, 0.15 to the 2% mark at 0.024%/s: full in ~626 s
    p = rule_risk(close, close[-1].time, WINDOWS).probabilities
    assert p[300.0] == BASE_RISK and p[900.0] == p[1800.0] > 0.85


def test_a_crash_loop_and_a_rising_latency_raise_the_risk() -> None:
    rng = random.Random(4)
    loop = [healthy(rng, i * STEP, restarts=i // 30) for i in range(90)]  # a restart every 5 min
    r = rule_risk(loop, loop[-1].time, WINDOWS)
    assert r.probabilities[900.0] >= 0.8 and r.drivers[0] == "recent restarts"
    rising = [HealthPoint(time=i * STEP, up=True, latency_p99_ms=20.0 * 1.05 ** i) for i in range(90)]
    r = rule_risk(rising, rising[-1].time, WINDOWS)
    assert r.probabilities[900.0] >= 0.75 and "p99 write latency trend" in r.drivers


def test_the_rules_read_only_the_samples_up_to_now() -> None:
    pts = _healthy() + [down(180 * STEP + i * STEP) for i in range(2)]
    before = rule_risk(pts, 179 * STEP, WINDOWS)
    after = rule_risk(pts, 181 * STEP, WINDOWS)
    assert before.probabilities[300.0] == BASE_RISK
    assert after.probabilities[300.0] > 0.5 and after.drivers == ["failed probes"]
    assert rule_risk([], 0.0, WINDOWS).probabilities == {w: BASE_RISK for w in WINDOWS}
