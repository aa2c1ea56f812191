"""Scorers: feature rows -> probability that the candidate is requested within the horizon.

`stats` is the strong simple baseline (empirical hit rates per candidate kind / run length /
successor strength, updated online by feedback); `gbm` and `logreg` are learned rankers from
scikit-learn. `fit_auto` picks whichever ranks a held-out tail of the log best.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cache
from typing import Protocol

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import ThreadpoolController

from .features import FEATURE_NAMES, N_FEATURES

MODEL_KINDS = ("stats", "gbm", "logreg")
_COL = {name: i for i, name in enumerate(FEATURE_NAMES)}
_RUN_EDGES = np.array([0.5, 1.5, 2.5, 4.5, 8.5, 16.5])
_RATIO_EDGES = np.array([0.25, 0.5, 0.75, 0.99])


class Scorer(Protocol):
    kind: str

    def fit(self, x: np.ndarray, y: np.ndarray) -> Scorer: ...

    def predict(self, x: np.ndarray) -> np.ndarray: ...


def _check(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != N_FEATURES:
        raise ValueError(f"expected rows of {N_FEATURES} features, got shape {x.shape}")
    return x


class StatsScorer:
    """Beta-smoothed hit rate per (kind, run-length bucket, write, successor-ratio bucket)."""

    kind = "stats"

    def __init__(self, prior_hits: float = 1.0, prior_misses: float = 4.0) -> None:
        self.prior = (prior_hits, prior_misses)
        self.hits: dict[int, float] = {}
        self.total: dict[int, float] = {}

    @staticmethod
    def _buckets(x: np.ndarray) -> np.ndarray:
        kind = np.argmax(x[:, 0:3], axis=1)
        run = np.searchsorted(_RUN_EDGES, x[:, _COL["run_len"]])
        write = x[:, _COL["write"]].astype(int)
        ratio = np.searchsorted(_RATIO_EDGES, x[:, _COL["succ_ratio"]])
        return ((kind * 8 + run) * 2 + write) * 8 + ratio

    def fit(self, x: np.ndarray, y: np.ndarray) -> StatsScorer:
        """Count outcomes per bucket (replaces earlier counts)."""
        self.hits, self.total = {}, {}
        self.update(x, y)
        return self

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add observed outcomes (feedback) to the counts."""
        b = self._buckets(_check(x))
        y = np.asarray(y, dtype=np.float64)
        for key, hit in zip(b.tolist(), y.tolist(), strict=True):
            self.hits[key] = self.hits.get(key, 0.0) + hit
            self.total[key] = self.total.get(key, 0.0) + 1.0

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Posterior mean hit rate of each row's bucket."""
        b = self._buckets(_check(x)).tolist()
        a0, b0 = self.prior
        return np.array([(self.hits.get(k, 0.0) + a0) / (self.total.get(k, 0.0) + a0 + b0) for k in b])


class SklearnScorer:
    """A scikit-learn classifier behind the Scorer interface."""

    def __init__(self, kind: str) -> None:
        if kind == "gbm":
            self.model = HistGradientBoostingClassifier(max_iter=120, learning_rate=0.1, max_leaf_nodes=31,
                                                        random_state=0)
        elif kind == "logreg":
            self.model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
        else:
            raise ValueError(f"unknown learned model {kind!r}")
        self.kind = kind
        self._constant: float | None = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> SklearnScorer:
        """Fit the classifier; a log with one class only yields that class's rate."""
        x, y = _check(x), np.asarray(y)
        if len(np.unique(y)) < 2:
            self._constant = float(y.mean()) if len(y) else 0.0
        else:
            self._constant = None
            with _one_thread():
                self.model.fit(x, y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probability of the positive class."""
        x = _check(x)
        if self._constant is not None:
            return np.full(len(x), self._constant)
        if len(x) == 0:
            return np.zeros(0)
        # One thread: OpenMP start-up costs ~50 ms per call on a busy machine, more than the work itself.
        with _one_thread():
            return self.model.predict_proba(x)[:, 1]


@cache
def _threadpools() -> ThreadpoolController:
    # Finding the loaded BLAS/OpenMP libraries reads the process's memory map: ~5 ms, more than a prediction, so
    # once per process (scikit-learn, imported above, has loaded its OpenMP runtime by then).
    return ThreadpoolController()


def _one_thread() -> AbstractContextManager[object]:
    """Limit BLAS and OpenMP to one thread for a block."""
    return _threadpools().limit(limits=1)


def make_scorer(kind: str) -> StatsScorer | SklearnScorer:
    """A fresh, unfitted scorer of the given kind."""
    if kind == "stats":
        return StatsScorer()
    return SklearnScorer(kind)


@dataclass(frozen=True)
class AutoChoice:
    """What `fit_auto` chose and the held-out log loss of every contender (lower is better)."""

    scorer: StatsScorer | SklearnScorer
    validation_loss: dict[str, float]


def fit_auto(x: np.ndarray, y: np.ndarray, kinds: tuple[str, ...] = MODEL_KINDS,
             holdout: float = 0.25) -> AutoChoice:
    """Fit each kind on the head of the log, rank them on its tail, refit the winner on everything.

    Log loss, not a ranking metric, decides: the threshold and the feedback loop read scores as
    probabilities, so a well-ranked but badly calibrated model sends the wrong number of hints.
    """
    x, y = _check(x), np.asarray(y)
    if len(x) < 20:
        raise ValueError("too few labelled candidates to train on (need at least 20)")
    cut = int(len(x) * (1.0 - holdout))
    loss: dict[str, float] = {}
    for kind in kinds:
        model = make_scorer(kind).fit(x[:cut], y[:cut])
        p = np.clip(model.predict(x[cut:]), 1e-6, 1 - 1e-6)
        loss[kind] = float(log_loss(y[cut:], p, labels=[0, 1]))
    # Ties go to the simplest model (order of `kinds`).
    best = min(kinds, key=lambda k: (loss[k], kinds.index(k)))
    return AutoChoice(make_scorer(best).fit(x, y), loss)
