"""NAB's scoring rules on hand-computed cases: one 100-row file (probation 15 rows) with one window, rows 40..49."""

from __future__ import annotations

import math

import pytest

from tests.bench.nab_scoring import (
    PROFILES,
    FileLabels,
    Profile,
    normalised,
    null_scores,
    perfect_scores,
    probation_length,
    raw_score,
    scaled_sigmoid,
    sweep,
    window_rows,
)

STANDARD, LOW_FP, LOW_FN = PROFILES
FILE = FileLabels("a/x.csv", 100, ((40, 49),))


def detections(*rows: int, n: int = 100) -> list[float]:
    s = [0.0] * n
    for r in rows:
        s[r] = 1.0
    return s


def test_profiles_are_nabs() -> None:
    assert [(p.name, p.tp, p.fp, p.fn) for p in PROFILES] == [
        ("standard", 1.0, 0.11, 1.0),
        ("reward_low_FP_rate", 1.0, 0.22, 1.0),
        ("reward_low_FN_rate", 1.0, 0.11, 2.0),
    ]


def test_scaled_sigmoid_values() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert scaled_sigmoid(3.5) == -1.0


def test_probation_is_15_percent_capped_at_750_rows() -> None:
    assert probation_length(100) == 15
    assert probation_length(4033) == 604
    assert probation_length(22695) == 750


def test_detection_at_the_window_start_scores_the_tp_weight() -> None:
    assert raw_score([FILE], [detections(40)], STANDARD, 0.5) == pytest.approx(1.0)


def test_detection_at_the_window_end_scores_less() -> None:
    # position -(49 - 49 + 1) / 10 = -0.1: (2 * sigmoid(0.5) - 1) / (2 * sigmoid(5) - 1)
    expected = (2 / (1 + math.exp(-0.5)) - 1) / (2 / (1 + math.exp(-5)) - 1)
    assert expected == pytest.approx(0.248242, abs=1e-6)
    assert raw_score([FILE], [detections(49)], STANDARD, 0.5) == pytest.approx(expected)
    middle = raw_score([FILE], [detections(45)], STANDARD, 0.5)
    assert expected < middle < 1.0


def test_only_the_earliest_detection_in_a_window_counts() -> None:
    assert raw_score([FILE], [detections(42, 43, 44, 49)], STANDARD, 0.5) == pytest.approx(
        raw_score([FILE], [detections(42)], STANDARD, 0.5)
    )
    assert raw_score([FILE], [detections(42, 43, 44, 49)], STANDARD, 0.5) < 1.0


def test_false_positive_before_any_window_costs_exactly_the_fp_weight() -> None:
    # the miss of the window (-1) plus the FP
    assert raw_score([FILE], [detections(20)], STANDARD, 0.5) == -1.0 - 0.11
    assert raw_score([FILE], [detections(20)], LOW_FP, 0.5) == -1.0 - 0.22


def test_false_positive_long_after_a_window_costs_about_the_fp_weight() -> None:
    # row 85: (85 - 49) / (10 - 1) = 4 window widths past the end: -1 exactly beyond 3
    assert raw_score([FILE], [detections(40, 85)], STANDARD, 0.5) == pytest.approx(1.0 - 0.11)
    # right after the window the cost is small: (50 - 49) / 9 -> 2 * sigmoid(-5 / 9) - 1
    just_after = (2 / (1 + math.exp(5 / 9)) - 1) * 0.11
    assert raw_score([FILE], [detections(40, 50)], STANDARD, 0.5) == pytest.approx(1.0 + just_after)
    assert -0.11 < just_after < 0


def test_a_missed_window_costs_the_fn_weight() -> None:
    assert raw_score([FILE], [detections()], STANDARD, 0.5) == -1.0
    assert raw_score([FILE], [detections()], LOW_FN, 0.5) == -2.0


def test_probation_rows_are_not_scored() -> None:
    assert raw_score([FILE], [detections(3, 14, 40)], STANDARD, 0.5) == pytest.approx(1.0)
    in_probation = FileLabels("a/y.csv", 100, ((5, 10),))  # a window inside the probation period counts for nothing
    assert raw_score([in_probation], [detections()], STANDARD, 0.5) == 0.0


def test_detection_means_score_at_or_above_the_threshold() -> None:
    s = detections()
    s[40] = 0.7
    assert raw_score([FILE], [s], STANDARD, 0.7) == pytest.approx(1.0)
    assert raw_score([FILE], [s], STANDARD, 0.7000001) == -1.0


def test_the_sweep_finds_the_best_threshold_over_all_files() -> None:
    a = [0.0] * 100
    a[20], a[40] = 0.95, 0.9  # an FP scored higher than the TP: worth taking both
    other = FileLabels("b/z.csv", 100, ((60, 69),))
    b = [0.0] * 100
    b[60] = 0.8  # worth it too: lowering to 0.8 adds a TP
    b[30] = 0.85  # an FP before that
    best = sweep([FILE, other], [a, b], STANDARD)
    assert best.threshold == 0.8
    assert best.raw == pytest.approx(2.0 - 0.22)
    # with only FPs above the TPs costing more than they bring, no detection at all is best
    costly = Profile("costly", tp=1.0, fp=5.0, fn=1.0)
    assert sweep([FILE, other], [a, b], costly).raw == pytest.approx(max(-2.0, 2.0 - 10.0))


def test_window_rows_from_timestamps() -> None:
    ts = list(range(0, 100, 5))
    assert window_rows(ts, [(50, 60), (10, 20)]) == [(2, 4), (10, 12)]
    assert window_rows(ts, [(11, 14)]) == []  # no row inside


def test_normalisation_gives_0_for_null_and_100_for_perfect() -> None:
    other = FileLabels("b/z.csv", 300, ((100, 129), (200, 229)))
    files = [FILE, other]
    for profile in PROFILES:
        null_raw = sweep(files, null_scores(files), profile).raw
        assert null_raw == -3 * profile.fn
        assert normalised(null_raw, null_raw, files, profile) == 0.0
        perfect = sweep(files, perfect_scores(files), profile)
        assert normalised(perfect.raw, null_raw, files, profile) == pytest.approx(100.0)
        half = raw_score(files, [detections(40), detections(n=300)], profile, 0.5)
        assert 0.0 < normalised(half, null_raw, files, profile) < 100.0
