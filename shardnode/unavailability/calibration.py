"""Calibration of raw scores into probabilities (isotonic, Platt when held-out positives are few) as plain tables
that serialise to JSON, and the reliability table that checks it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

MIN_ISOTONIC_POSITIVES = 20  # below this an isotonic step function is mostly noise: fit a sigmoid instead


@dataclass(frozen=True)
class Calibrator:
    """``kind`` "isotonic": piecewise-linear through (xs, ys); "platt": sigmoid(a * score + b)."""

    kind: str
    xs: tuple[float, ...] = ()
    ys: tuple[float, ...] = ()
    a: float = 1.0
    b: float = 0.0

    def apply(self, scores: NDArray[np.float64]) -> NDArray[np.float64]:
        """Calibrated probabilities of raw scores."""
        if self.kind == "isotonic":
            out: NDArray[np.float64] = np.interp(scores, np.array(self.xs), np.array(self.ys))
            return out
        z = np.clip(self.a * scores + self.b, -50.0, 50.0)
        return 1.0 / (1.0 + np.exp(-z))

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form."""
        return {"kind": self.kind, "xs": list(self.xs), "ys": list(self.ys), "a": self.a, "b": self.b}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Calibrator:
        """The inverse of ``to_json`` (KeyError/TypeError/ValueError on a malformed document)."""
        kind = str(doc["kind"])
        xs = tuple(float(v) for v in doc["xs"])
        ys = tuple(float(v) for v in doc["ys"])
        if kind not in ("isotonic", "platt") or len(xs) != len(ys) or (kind == "isotonic" and not xs):
            raise ValueError("malformed calibrator")
        if any(not 0.0 <= y <= 1.0 for y in ys) or any(b < a for a, b in zip(xs, xs[1:], strict=False)):
            raise ValueError("malformed calibrator")
        return cls(kind=kind, xs=xs, ys=ys, a=float(doc["a"]), b=float(doc["b"]))


def fit_calibrator(scores: NDArray[np.float64], y: NDArray[np.float64]) -> Calibrator:
    """Isotonic on held-out (score, outcome) pairs; Platt scaling when they hold few positives."""
    positives = int(y.sum())
    if positives >= MIN_ISOTONIC_POSITIVES and positives < len(y):
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, y)
        return Calibrator("isotonic", xs=tuple(float(v) for v in iso.X_thresholds_),
                          ys=tuple(float(v) for v in iso.y_thresholds_))
    if 0 < positives < len(y):
        lr = LogisticRegression(C=1e4).fit(scores.reshape(-1, 1), y)
        return Calibrator("platt", a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))
    # Nothing to learn from (no positive or no negative): the base rate, smoothed so it is never 0 or 1.
    rate = (positives + 0.5) / (len(y) + 1.0)
    return Calibrator("platt", a=0.0, b=math.log(rate / (1.0 - rate)))


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability table: predicted range, points, mean prediction, observed frequency."""

    low: float
    high: float
    count: int
    predicted: float
    observed: float


def reliability(p: Sequence[float] | NDArray[np.float64], y: Sequence[float] | NDArray[np.float64],
                bins: int = 10) -> list[ReliabilityBin]:
    """The reliability table of predictions ``p`` against outcomes ``y`` in ``bins`` equal-width bins (empty
    bins left out)."""
    pa, ya = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    which = np.minimum((pa * bins).astype(int), bins - 1)
    table: list[ReliabilityBin] = []
    for b in range(bins):
        sel = which == b
        if sel.any():
            table.append(ReliabilityBin(b / bins, (b + 1) / bins, int(sel.sum()), float(pa[sel].mean()),
                                        float(ya[sel].mean())))
    return table


def brier(p: NDArray[np.float64], y: NDArray[np.float64]) -> float:
    """Mean squared error of probabilities against outcomes (NaN when empty)."""
    return float(np.mean((p - y) ** 2)) if len(p) else math.nan
