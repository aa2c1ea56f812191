"""Scorers learn which candidate kinds come true; auto picks by held-out log loss."""

from __future__ import annotations

import numpy as np
import pytest
from chronoshard.shardnode.predictor.features import FEATURE_NAMES, N_FEATURES
from chronoshard.shardnode.predictor.scorers import StatsScorer, fit_auto, make_scorer

RUN = FEATURE_NAMES.index("run_len")


def planted(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """seq1 candidates inside a run come true 90% of the time, everything else 10%."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, N_FEATURES))
    kind = rng.integers(0, 3, n)
    x[np.arange(n), kind] = 1
    x[:, RUN] = rng.integers(0, 5, n)
    good = (kind == 0) & (x[:, RUN] > 0)
    y = (rng.random(n) < np.where(good, 0.9, 0.1)).astype(int)
    return x, y


@pytest.mark.parametrize("kind", ["stats", "gbm", "logreg"])
def test_each_model_ranks_the_planted_pattern_first(kind: str) -> None:
    x, y = planted()
    s = make_scorer(kind).fit(x, y)
    xt, _ = planted(400, seed=1)
    p = s.predict(xt)
    good = (xt[:, 0] == 1) & (xt[:, RUN] > 0)
    assert p[good].mean() > 0.7 and p[~good].mean() < 0.3


def test_stats_recalibrates_online() -> None:
    x, y = planted()
    s = StatsScorer().fit(x, y)
    row = np.zeros((1, N_FEATURES))
    row[0, 0], row[0, RUN] = 1, 3
    before = s.predict(row)[0]
    s.update(np.repeat(row, 500, axis=0), np.zeros(500))  # the pattern stopped coming true
    assert before > 0.8 and s.predict(row)[0] < 0.5


def test_auto_prefers_a_calibrated_model_and_reports_losses() -> None:
    x, y = planted()
    choice = fit_auto(x, y)
    assert set(choice.validation_loss) == {"stats", "gbm", "logreg"}
    assert choice.scorer.kind == min(choice.validation_loss, key=choice.validation_loss.get)


def test_bad_shapes_and_tiny_logs_are_refused() -> None:
    with pytest.raises(ValueError, match="features"):
        StatsScorer().fit(np.zeros((3, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="too few"):
        fit_auto(np.zeros((5, N_FEATURES)), np.zeros(5))
    with pytest.raises(ValueError, match="unknown"):
        make_scorer("forest")


def test_one_class_log_gives_constant_scores() -> None:
    s = make_scorer("gbm").fit(np.zeros((50, N_FEATURES)), np.zeros(50))
    assert s.predict(np.ones((3, N_FEATURES))).tolist() == [0.0, 0.0, 0.0]
