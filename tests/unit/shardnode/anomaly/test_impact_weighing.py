"""The weighing of changes no profile can tell apart (impact.py): per-change traits, likelihood ratios, the
attack's traits recovered from a mix, its excess pace, and a plain burst whose culprit's ordinary work stays out."""

from collections import Counter

from chronoshard.shardnode.anomaly.features import FeatureContext, window_features
from chronoshard.shardnode.anomaly.impact import (
    AGE_BINS,
    BURST_SPAN,
    age_bin,
    analyse,
    deconvolved,
    excess_pace,
    likelihood_ratio,
    trait_counts,
    traits,
)
from chronoshard.shardnode.anomaly.types import PUT, ChangeObservation, Driver, Score

from tests.support.anomaly_streams import Stream, text_value


def _obs(lsn: int, t: float, prev_lsn: int | None, size: int = 100, prev_size: int | None = 100) -> ChangeObservation:
    return ChangeObservation(lsn, t, "t", f"k{lsn}", PUT, size, prev_size, prev_lsn is not None, "a", None, None,
                             prev_lsn=prev_lsn)  # fmt: skip


def test_age_bins_the_time_since_the_keys_previous_version() -> None:
    by_lsn = [(10, 0.0), (11, 5.0), (12, 100.0)]
    assert age_bin(_obs(20, 100.0, None), 10, by_lsn) == 0  # no previous version
    assert age_bin(_obs(20, 100.0, 3), 10, by_lsn) == AGE_BINS + 1  # before the observations
    assert age_bin(_obs(20, 100.0, 12), 10, by_lsn) == 1  # written this second
    assert age_bin(_obs(20, 100.0, 11), 10, by_lsn) == 7  # 95 s: log2(96) = 6.58
    assert age_bin(_obs(20, 1e9, 11), 10, by_lsn) == AGE_BINS  # capped


def test_traits_say_whether_the_size_was_kept() -> None:
    by_lsn = [(1, 0.0)]
    assert traits(_obs(2, 1.0, 1, 100, 100), 1, by_lsn)[1] is True
    assert traits(_obs(2, 1.0, 1, 101, 100), 1, by_lsn)[1] is False


def test_likelihood_ratio_is_the_product_of_smoothed_trait_ratios() -> None:
    attack = trait_counts([(13, True)] * 8 + [(2, True)] * 2)
    usual = trait_counts([(2, False)] * 8 + [(13, True)] * 2)
    # age 13: (8+1)/(10+2) over (2+1)/(10+2) = 3; kept size: (10+1)/(10+2) over (2+1)/(10+2) = 11/3
    assert abs(likelihood_ratio((13, True), attack, usual) - 11.0) < 1e-9
    # age 2: 3/9; a changed size: (0+1)/(8+1)
    assert abs(likelihood_ratio((2, False), attack, usual) - 1 / 27) < 1e-9
    # an age neither side saw weighs nothing: only the size's 11/3 is left
    assert abs(likelihood_ratio((5, True), attack, usual) - 11 / 3) < 1e-9


def test_deconvolved_takes_the_expected_ordinary_changes_out_of_a_mix() -> None:
    usual = [Counter({1: 90, 13: 10}), Counter({False: 100})]
    mixed = [Counter({1: 9, 13: 51}), Counter({False: 10, True: 50})]
    attack = deconvolved(mixed, usual, expected=10.0)
    assert attack[0] == Counter({13: 50.0})  # 9 - 9 young ones left nothing; 51 - 1 old ones
    assert attack[1] == Counter({True: 50})


def test_excess_pace_is_local_when_dense_and_the_incidents_mean_only_inside_it() -> None:
    times = sorted([100.0 + i * 0.1 for i in range(100)] + [float(t) for t in range(0, 300, 10)])
    # within 5 s of 105: 100 burst changes and two ordinary (100, 110); the usual 0.1/s explains 1 of them
    assert abs(excess_pace(times, 105.0, 0.1, (100.0, 110.0), 0.0) - (102 - 1.0) / (2 * BURST_SPAN)) < 1e-9
    assert excess_pace(times, 200.0, 0.1, (100.0, 110.0), 5.0) == 0.0  # outside the span, not dense
    assert excess_pace(times, 109.9 + 30, 0.1, (100.0, 150.0), 5.0) == 5.0  # inside the span: its mean


def test_a_plain_burst_leaves_out_the_culprits_ordinary_rewrites_of_hot_keys() -> None:
    ctx = FeatureContext(frozenset({"app", "etl"}))
    s = Stream(seed=7)
    for i in range(400):
        s.put(-1000.0 + i, f"cold{i}", text_value(s.rng, 512), "app")
    hot = [f"hot{i}" for i in range(5)]
    t = -999.5
    while t < 400.0:  # etl's own work: rewriting five hot keys every 2 s, before, during and after the burst
        s.put(t, hot[int(t) % 5], text_value(s.rng, 512), "etl")
        t += 2.0
    victims = []
    for i in range(300):  # the burst: etl overwrites 300 cold keys in a minute
        victims.append(s.put(200.0 + i * 0.2, f"cold{i}", text_value(s.rng, 512), "etl").key)
    s.out.sort(key=lambda o: (o.time, o.lsn))
    f = window_features("t", 180.0, 240.0, [o for o in s.out if 180.0 <= o.time < 240.0], ctx)
    scored = [(f, Score(0.95, "test", (Driver("overwrite_rate", 5.0, 0.5, 1.0),)))]
    inc = analyse("t", scored, s.out, ctx, table_keys=405)
    got = {k.key for k in inc.keys}
    assert set(victims) <= got
    assert not got - set(victims)  # the hot keys etl rewrote during the burst are its ordinary work
