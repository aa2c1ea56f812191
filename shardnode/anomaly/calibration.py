"""Tail probabilities from a training sample, so scores from different features, models and tables share one scale.

A statistic's p-value is read from the training sample's empirical distribution in its body and from an
exponential tail fitted to the exceedances over the sample's 90th percentile beyond it (so a value never seen in
training still gets a finite, ordered p-value). Sparse event counts get a Poisson / negative binomial tail instead,
which an exponential fit to a few 0/1 windows would make far too heavy. Pure numpy and math.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# scipy is scikit-learn's own dependency (no new one): the regularised incomplete beta and gamma functions
from scipy.special import betainc, gammainc  # type: ignore[import-untyped]

TAIL_QUANTILE = 0.9
MIN_EXCEEDANCES = 20  # fewer and the exponential tail's scale is a guess: the floor is used


@dataclass(frozen=True)
class Tail:
    """An empirical body and an exponential tail above ``u``: P(T >= x)."""

    sample: np.ndarray  # sorted training values
    u: float
    pu: float  # P(T > u)
    beta: float

    @classmethod
    def fit(cls, values: np.ndarray, floor: float) -> Tail:
        """The tail of ``values``; ``floor`` bounds the exponential scale from below (the smallest excess that
        still counts as a different value)."""
        x = np.sort(np.asarray(values, dtype=float))
        n = len(x)
        if n == 0:
            return cls(x, 0.0, 1.0, floor)
        u = float(np.quantile(x, TAIL_QUANTILE))
        exc = x[x > u] - u
        pu = max(len(exc), 1) / (n + 1)
        beta = float(exc.mean()) if len(exc) >= MIN_EXCEEDANCES else max(float(exc.mean()) if len(exc) else 0.0, floor)
        return cls(x, u, pu, max(beta, floor))

    def p(self, value: float) -> float:
        """P(T >= value) with T from the training distribution (never 0)."""
        if value > self.u:
            return self.pu * math.exp(-(value - self.u) / self.beta)
        n = len(self.sample)
        at_least = n - int(np.searchsorted(self.sample, value, side="left"))
        return max((at_least + 1) / (n + 1), self.pu)


def count_sf(k: float, mean: float, var: float) -> float:
    """P(X >= k) for a count with this mean and variance: Poisson, or negative binomial when over-dispersed."""
    k = math.ceil(k - 1e-9)
    if k <= 0:
        return 1.0
    mean = max(mean, 1e-6)
    if var <= mean * 1.05:
        p = float(gammainc(k, mean))  # P(Poisson(mean) >= k)
    else:
        r = mean * mean / (var - mean)
        q = mean / var  # success probability; X counts failures before the r-th success
        p = float(betainc(k, r, 1 - q))  # P(NB(r, q) >= k)
    return max(p, 1e-300)


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return float(betainc(k, n - k + 1, min(max(p, 0.0), 1.0)))


def score_of_p(p: float, decades: float = 5.0) -> float:
    """A p-value as a score in [0, 1]: ``-log10(p) / decades`` (5 decades: 0.8 is p = 1e-4, about one window in
    seven days of 1-minute windows, so normal traffic stays well under 0.8)."""
    if p <= 0:
        return 1.0
    return min(1.0, max(0.0, -math.log10(p) / decades))
