"""Calibration of crossing probabilities: isotonic regression (enough history) or Platt scaling (little).

Fitted on the weaver's backtest pairs (predicted probability, did the crossing happen), so that among forecasts
given 0.75 about three in four come true. Persisted as JSON by the weaver.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ISOTONIC_MIN_PAIRS = 50  # fewer and the isotonic steps follow the noise: Platt instead (worse at 150 bench pairs)
EPS = 1e-4
RIDGE = 1.0  # the pull of a Platt fit towards the identity: keeps separable pairs from an infinite slope


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(x, -50.0, 50.0)))


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, EPS, 1 - EPS)
    return np.log(q / (1 - q))


def pool_adjacent_violators(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The non-decreasing least-squares fit of ``y`` (already ordered by x) with weights ``w``."""
    values: list[float] = []
    weights: list[float] = []
    counts: list[int] = []
    for v, wt in zip(y.tolist(), w.tolist(), strict=True):
        values.append(v)
        weights.append(wt)
        counts.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            wsum = weights[-2] + weights[-1]
            merged = (values[-2] * weights[-2] + values[-1] * weights[-1]) / wsum
            c = counts[-2] + counts[-1]
            del values[-1], weights[-1], counts[-1]
            values[-1], weights[-1], counts[-1] = merged, wsum, c
    return np.repeat(np.array(values), counts)


class Calibrator:
    """Maps a model's crossing probability to a calibrated one; the identity until fitted."""

    def __init__(self, method: str = "identity", x: Sequence[float] = (), y: Sequence[float] = (),
                 a: float = 1.0, b: float = 0.0) -> None:
        self.method = method
        self.x = np.asarray(x, dtype=float)
        self.y = np.asarray(y, dtype=float)
        self.a = a
        self.b = b

    def fit(self, predicted: Sequence[float], happened: Sequence[bool]) -> None:
        """Fit on (predicted probability, outcome) pairs: isotonic with enough pairs, Platt with fewer."""
        p = np.asarray(predicted, dtype=float)
        o = np.asarray(happened, dtype=float)
        if len(p) < 2 or o.min() == o.max():
            # one outcome only: nothing to separate; shrink towards the observed rate instead of guessing a curve
            self.method, self.a, self.b = "platt", 0.0, float(_logit(np.array([(o.sum() + 0.5) / (len(o) + 1)]))[0])
            return
        if len(p) >= ISOTONIC_MIN_PAIRS:
            self._fit_isotonic(p, o)
        else:
            self._fit_platt(p, o)

    def _fit_isotonic(self, p: np.ndarray, o: np.ndarray) -> None:
        order = np.argsort(p, kind="stable")
        xs, ys = p[order], o[order]
        fitted = pool_adjacent_violators(ys, np.ones(len(ys)))
        # one knot per distinct x (the mean fit there), so interpolation is well defined
        ux, inv = np.unique(xs, return_inverse=True)
        uy = np.bincount(inv, weights=fitted) / np.bincount(inv)
        self.method, self.x, self.y = "isotonic", ux, np.clip(uy, 0.0, 1.0)

    def _fit_platt(self, p: np.ndarray, o: np.ndarray) -> None:
        # Platt's smoothed targets keep the fit finite when the classes separate
        n1, n0 = o.sum(), len(o) - o.sum()
        t = np.where(o > 0, (n1 + 1) / (n1 + 2), 1 / (n0 + 2))
        z = _logit(p)
        a, b = 1.0, 0.0
        for _ in range(50):  # Newton on the logistic log-loss in (a, b), pulled gently towards the identity
            q = _sigmoid(a * z + b)
            g = np.array([((q - t) * z).sum() + RIDGE * (a - 1.0), (q - t).sum() + RIDGE * b])
            w = q * (1 - q) + 1e-9
            hess = np.array([[(w * z * z).sum(), (w * z).sum()], [(w * z).sum(), w.sum()]]) + RIDGE * np.eye(2)
            step = np.clip(np.linalg.solve(hess, g), -5.0, 5.0)  # a bounded step: no overshoot on separable data
            a, b = a - float(step[0]), b - float(step[1])
            if abs(step).max() < 1e-8:
                break
        self.method, self.a, self.b = "platt", a, b

    def apply(self, p: float) -> float:
        """The calibrated probability for a model probability ``p``."""
        if self.method == "isotonic" and len(self.x):
            return float(np.interp(p, self.x, self.y))
        if self.method == "platt":
            return float(_sigmoid(self.a * _logit(np.array([p])) + self.b)[0])
        return float(p)

    def to_json(self) -> dict[str, Any]:
        """The fitted calibrator as plain JSON values."""
        return {"method": self.method, "x": self.x.tolist(), "y": self.y.tolist(), "a": self.a, "b": self.b}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Calibrator:
        """A calibrator from ``to_json``'s output."""
        return cls(str(d.get("method", "identity")), d.get("x", ()), d.get("y", ()),
                   float(d.get("a", 1.0)), float(d.get("b", 0.0)))
