"""The forecasting models: each turns a regular series into a point forecast and simulated paths over h steps.

The paths carry the model's own predictive distribution; the split forecast reads crossing probabilities and
intervals from them. ``growth`` marks a series that trends by nature (stored bytes) as against one that wanders
round a level (request rate). Baselines (naive, seasonal-naive, drift) live here too, for the benchmark.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

REPETITIONS = 200  # simulated paths per forecast: enough for a probability to ±0.035, cheap at h <= 60
LINEAR_RECENT = 60  # the linear model fits the most recent this many points (growth rates drift)


@dataclass(frozen=True)
class Paths:
    """A point forecast for steps 1..h and simulated paths (repetitions x h)."""

    mean: np.ndarray
    paths: np.ndarray


ModelFn = Callable[[np.ndarray, int, np.random.Generator, bool, int], Paths]


def _noise(sigma: float, h: int, rng: np.random.Generator, integrated: bool) -> np.ndarray:
    """Gaussian path noise: independent per step, or summed (a random walk) when errors accumulate."""
    e = rng.normal(0.0, max(sigma, 0.0), size=(REPETITIONS, h))
    return np.cumsum(e, axis=1) if integrated else e


def _sd(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if len(x) > 1 else 0.0


def naive(y: np.ndarray, h: int, rng: np.random.Generator, growth: bool, season: int) -> Paths:
    """The last value, with a random walk's spread."""
    mean = np.full(h, y[-1])
    return Paths(mean, mean + _noise(_sd(np.diff(y)), h, rng, True))


def seasonal_naive(y: np.ndarray, h: int, rng: np.random.Generator, growth: bool, season: int) -> Paths:
    """The value one season earlier (for a growth series: the increments one season earlier)."""
    n = len(y)
    if season < 1 or season >= n - 1:
        return naive(y, h, rng, growth, season)
    idx = n - season + (np.arange(h) % season)
    if growth:
        d = np.diff(y)
        inc = d[idx - 1]
        err = d[season:] - d[:-season]
        return Paths(y[-1] + np.cumsum(inc), y[-1] + np.cumsum(inc) + _noise(_sd(err), h, rng, True))
    mean = y[idx]
    return Paths(mean, mean + _noise(_sd(y[season:] - y[:-season]), h, rng, False))


def drift(y: np.ndarray, h: int, rng: np.random.Generator, growth: bool, season: int) -> Paths:
    """The straight line from the first value to the last, extended (the classic 'drift' baseline)."""
    n = len(y)
    slope = (y[-1] - y[0]) / max(n - 1, 1)
    mean = y[-1] + slope * np.arange(1, h + 1)
    return Paths(mean, mean + _noise(_sd(np.diff(y) - slope), h, rng, True))


def linear(y: np.ndarray, h: int, rng: np.random.Generator, growth: bool, season: int) -> Paths:
    """A least-squares line over the recent points with AR(1) errors; the slope's own uncertainty is simulated."""
    z = y[-LINEAR_RECENT:]
    n = len(z)
    x = np.arange(n, dtype=float)
    xm = x.mean()
    sxx = float(((x - xm) ** 2).sum()) or 1.0
    b = float(((x - xm) * (z - z.mean())).sum() / sxx)
    a = float(z.mean() - b * xm)
    r = z - (a + b * x)
    phi = 0.0
    if n > 3 and _sd(r) > 0:
        phi = float(np.clip(np.corrcoef(r[:-1], r[1:])[0, 1], 0.0, 0.999))
        phi = 0.0 if np.isnan(phi) else phi
    innov = r[1:] - phi * r[:-1]
    sigma = _sd(innov)
    # the slope's standard error, inflated by the errors' autocorrelation (fewer effective points)
    se_b = _sd(r) / np.sqrt(sxx) * np.sqrt((1 + phi) / max(1 - phi, 1e-3))
    k = np.arange(1, h + 1, dtype=float)
    decay = phi**k
    mean = a + b * (n - 1 + k) + decay * r[-1]
    slopes = rng.normal(0.0, se_b, size=(REPETITIONS, 1))
    e = np.zeros((REPETITIONS, h))
    prev = np.zeros(REPETITIONS)
    eps = rng.normal(0.0, sigma, size=(REPETITIONS, h))
    for j in range(h):
        prev = phi * prev + eps[:, j]
        e[:, j] = prev
    return Paths(mean, mean + slopes * k + e)


def _simulate(res: object, h: int, rng: np.random.Generator) -> np.ndarray:
    sims = res.simulate(h, repetitions=REPETITIONS, anchor="end", rng=rng)  # type: ignore[attr-defined]
    return np.asarray(sims, dtype=float).reshape(h, REPETITIONS).T


def exponential_smoothing(y: np.ndarray, h: int, rng: np.random.Generator, growth: bool, season: int) -> Paths:
    """ETS with additive errors and trend (damped for a load series), fitted by statsmodels."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel  # type: ignore[import-untyped]

    res = ETSModel(y, error="add", trend="add", damped_trend=not growth).fit(disp=False, maxiter=200)
    return Paths(np.asarray(res.forecast(h), dtype=float), _simulate(res, h, rng))


def arima(y: np.ndarray, h: int, rng: np.random.Generator, growth: bool, season: int) -> Paths:
    """ARIMA by statsmodels, with drift: (1,1,0) for a growth series, (2,1,0) for a load series.

    Pure autoregressions in the differences, fitted by Burg's method: a tenth of the state-space likelihood fit's
    time, with the same parameters to three places on our series (an MA term would need that slower fit).
    """
    from statsmodels.tsa.arima.model import ARIMA  # type: ignore[import-untyped]

    res = ARIMA(y, order=(1, 1, 0) if growth else (2, 1, 0), trend="t").fit(method="burg")
    return Paths(np.asarray(res.forecast(h), dtype=float), _simulate(res, h, rng))


MODEL_FUNCTIONS: dict[str, ModelFn] = {
    "naive": naive,
    "seasonal-naive": seasonal_naive,
    "drift": drift,
    "linear": linear,
    "exponential-smoothing": exponential_smoothing,
    "arima": arima,
}


def run_model(
    name: str, y: np.ndarray, h: int, rng: np.random.Generator, growth: bool, season: int = 0
) -> tuple[Paths, str]:
    """The named model's forecast of ``y`` (standardised for the fit), and the model that actually ran.

    A flat series is forecast flat by every model; a library model that fails or returns non-finite values
    falls back to the linear model (named so in the result).
    """
    base = float(y[-1])
    scale = float(np.std(y))
    if len(y) < 3 or scale == 0.0:
        flat = np.full(h, base)
        return Paths(flat, np.tile(flat, (REPETITIONS, 1))), name
    z = (y - base) / scale
    try:
        with warnings.catch_warnings():
            # the libraries warn on every hard fit (convergence, frequency); a bad fit is caught below instead
            warnings.simplefilter("ignore")
            out = MODEL_FUNCTIONS[name](z, h, rng, growth, season)
        if not (np.isfinite(out.mean).all() and np.isfinite(out.paths).all()):
            raise ValueError("non-finite forecast")
        used = name
    except (ValueError, np.linalg.LinAlgError, IndexError):
        out = linear(z, h, rng, growth, season)
        used = f"linear (fallback from {name})"
    return Paths(base + scale * out.mean, base + scale * out.paths), used
