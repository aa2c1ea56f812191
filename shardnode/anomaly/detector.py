"""The window detector: a model learned from one table's own history of windows, scores calibrated to [0, 1].

Each scored feature gets its own tail model (sparse event counts a Poisson / negative binomial tail, dense counts
and continuous features an empirical body with an exponential tail) and, unless ``spec.anomaly.model`` is
"zscore", a multivariate model (scikit-learn's IsolationForest, or a small MLPRegressor autoencoder for
"autoencoder") adds one more statistic. The rare event counts (ciphertext-like and distorted overwrites, keys of
new identities) are also scored summed over the last ``SUSTAIN_WINDOWS`` windows, so a slow drip adds up: the
caller passes the recent windows to ``score``. Every statistic becomes ``-log10`` of its p-value; the window's
statistic is their maximum, which is calibrated once more on the training windows themselves (its 90th percentile
and an exponential tail no lighter than that of a true p-value), so the many-features effect and any misfit of
the per-feature models are measured, not assumed. The score is ``-log10(p) / 5``: 0.8 is a window rarer than 1 in
10,000 on every table.

The benchmark (tests/bench/bench_incidents.py) decides the combination: the isolation forest alone misses every
injected incident (a point far beyond the training range is isolated no sooner than the training extremes, so its
score saturates), the per-feature tails find them; "isolation-forest" is both (the forest adds little),
"zscore" the tails alone.

Only increases are anomalous (a quiet window destroys nothing), so features are clipped from below at their
training median before the multivariate model sees them. ``fit`` is a pure function of the windows (fixed
random_state), so the state keeps the windows and a checksum and ``from_state`` refits: no pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .calibration import Tail, count_sf, score_of_p
from .features import FEATURE_NAMES, RATE_NAMES, SCORED_NAMES
from .rules import RuleDetector
from .types import Driver, Score, WindowFeatures

MODELS = ("isolation-forest", "zscore", "autoencoder")
MIN_WINDOWS = 60  # an hour of 1-minute windows: fewer and the rules decide
STATE_VERSION = 1
NOMINAL_BETA = 1 / math.log(10)  # -log10 of a uniform p-value has an exponential tail of this scale
SPARSE_MEAN = 5.0  # counts averaging fewer per window are rare events (Poisson-like), more are traffic volume
DRIVER_MIN = 2.0  # a feature drives a score when its own p-value is <= 1e-2
# The smallest excess above the usual that still counts as different, per continuous feature (raw units) and for
# counts on the log1p scale: a floor for the tail's scale when training shows (almost) no variation.
_FLOORS: dict[str, float] = {
    "delete_share": 0.02,
    "size_shift": 0.1,
    "size_dist_shift": 0.05,
    "entropy_rise": 0.1,
    "encrypted_share": 0.02,
    "hist_distance": 0.02,
    "distorted_share": 0.02,
    "identity_surprise": 1.0,
}
_LOG_FLOOR = 0.25
# A slow drip of a few bad changes a minute hides in one window's noise but not in the sum of several: these rare
# event counts are also scored summed over the last SUSTAIN_WINDOWS windows (the caller passes the recent ones).
SUSTAINED = ("encrypted_rate", "distorted_rate", "new_identity_rate")
SUSTAIN_WINDOWS = 10


class Detector(Protocol):
    """What the shadow calls: a name and a pure ``score``."""

    name: str

    def score(self, features: WindowFeatures, recent: Sequence[WindowFeatures] = ()) -> Score:
        """The window's calibrated score and its drivers (``recent``: the windows before it, oldest first)."""
        ...


@dataclass(frozen=True)
class _FeatureModel:
    name: str
    count: bool
    mean: float
    var: float
    tail: Tail  # on log1p(count) for counts, on the raw value otherwise
    median: float  # raw units, the "usual" of a driver

    def neglog_p(self, value: float, span: float) -> float:
        if self.count:
            k = value * span
            p = count_sf(k, self.mean, self.var)
            if self.mean >= SPARSE_MEAN:
                p = max(p, self.tail.p(math.log1p(k)))
        else:
            p = self.tail.p(value)
        return -math.log10(max(p, 1e-300))


def _matrix(windows: Sequence[WindowFeatures]) -> np.ndarray:
    rows = [list(w.values) if w.names == FEATURE_NAMES else [w.as_dict()[n] for n in FEATURE_NAMES] for w in windows]
    return np.asarray(rows, dtype=float).reshape(len(rows), len(FEATURE_NAMES))


def _counts(x: np.ndarray, spans: np.ndarray) -> np.ndarray:
    col = [FEATURE_NAMES.index(n) for n in SUSTAINED]
    out: np.ndarray = x[:, col] * spans[:, None]
    return out


def _sustained(x: np.ndarray, spans: np.ndarray, prefix: np.ndarray) -> np.ndarray:
    """Each window's SUSTAINED counts summed with the windows before it (``prefix`` first), up to SUSTAIN_WINDOWS."""
    allc = np.vstack([prefix, _counts(x, spans)])
    csum = np.vstack([np.zeros((1, allc.shape[1])), np.cumsum(allc, axis=0)])
    idx = np.arange(len(prefix), len(allc)) + 1
    out: np.ndarray = csum[idx] - csum[np.maximum(idx - SUSTAIN_WINDOWS, 0)]
    return out


def _checksum(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class WindowDetector:
    """A fitted detector of one table; build it with ``fit`` or ``from_state``."""

    def __init__(
        self,
        model: str,
        windows: np.ndarray,
        span: float,
        features: tuple[_FeatureModel, ...],
        multi: Any,
        multi_tail: Tail | None,
        clip: np.ndarray,
        scale: np.ndarray,
        final: Tail,
        random_state: int,
        per_feature: bool = True,
    ) -> None:
        self.name = model
        self.model = model
        self._windows = windows
        self._span = span
        self._features = features
        self._multi = multi
        self._multi_tail = multi_tail
        self._clip = clip
        self._scale = scale
        self._final = final
        self._random_state = random_state
        self._per_feature = per_feature or multi is None

    @property
    def trained_windows(self) -> int:
        """How many windows the model learned from."""
        return len(self._windows)

    # -- fitting ----------------------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        windows: Sequence[WindowFeatures],
        model: str = "isolation-forest",
        *,
        random_state: int = 0,
        per_feature: bool = True,
    ) -> WindowDetector:
        """Learn from a table's windows (at least ``MIN_WINDOWS``); ValueError for an unknown model or too few.
        ``per_feature=False`` scores by the multivariate model alone (per-feature tails then only explain)."""
        if not windows:
            raise ValueError("no training windows")
        spans = [w.end - w.start for w in windows]
        return cls._fit(_matrix(windows), float(np.median(spans)), model, random_state, per_feature)

    @classmethod
    def _fit(
        cls, x: np.ndarray, span: float, model: str, random_state: int, per_feature: bool = True
    ) -> WindowDetector:
        if model not in MODELS:
            raise ValueError(f"unknown anomaly model {model!r} (one of {', '.join(MODELS)})")
        if len(x) < MIN_WINDOWS:
            raise ValueError(f"{len(x)} training windows, at least {MIN_WINDOWS} needed")
        if not np.isfinite(x).all() or span <= 0:
            raise ValueError("training windows hold a non-finite value")
        col = {n: i for i, n in enumerate(FEATURE_NAMES)}
        feats = []
        for n in SCORED_NAMES:
            v = x[:, col[n]]
            if n in RATE_NAMES:
                k = v * span
                feats.append(
                    _FeatureModel(
                        n,
                        True,
                        (k.sum() + 0.5) / len(k),
                        float(k.var()),
                        Tail.fit(np.log1p(k), _LOG_FLOOR),
                        float(np.median(v)),
                    )
                )
            else:
                feats.append(_FeatureModel(n, False, 0.0, 0.0, Tail.fit(v, _FLOORS[n]), float(np.median(v))))
        sus = _sustained(x, np.full(len(x), span), np.zeros((0, len(SUSTAINED))))
        for j, n in enumerate(SUSTAINED):
            k = sus[:, j]
            feats.append(
                _FeatureModel(
                    f"{n}_sustained",
                    True,
                    (k.sum() + 0.5) / len(k),
                    float(k.var()),
                    Tail.fit(np.log1p(k), _LOG_FLOOR),
                    float(np.median(k)) / (SUSTAIN_WINDOWS * span),
                )
            )
        z = cls._transform(x, span)
        clip = np.median(z, axis=0)
        zc = np.maximum(z, clip)
        scale = np.maximum(np.quantile(zc, 0.9, axis=0) - clip, 1e-3)
        multi: Any = None
        multi_tail = None
        if model != "zscore":
            multi = cls._fit_multi(model, (zc - clip) / scale, random_state)
            raw = cls._multi_raw(multi, model, (zc - clip) / scale)
            multi_tail = Tail.fit(raw, max(float(np.std(raw)) * 0.1, 1e-4))
        det = cls(
            model,
            x,
            span,
            tuple(feats),
            multi,
            multi_tail,
            clip,
            scale,
            Tail.fit(np.zeros(1), 1.0),
            random_state,
            per_feature,
        )
        stats = det._combined(det._stats(x, np.full(len(x), span), sus))
        final = Tail.fit(stats, NOMINAL_BETA)
        det._final = final
        return det

    @staticmethod
    def _transform(x: np.ndarray, span: float) -> np.ndarray:
        col = {n: i for i, n in enumerate(FEATURE_NAMES)}
        cols = []
        for n in SCORED_NAMES:
            v = x[..., col[n]]
            cols.append(np.log1p(v * span) if n in RATE_NAMES else v)
        return np.stack(cols, axis=-1)

    @staticmethod
    def _fit_multi(model: str, z: np.ndarray, random_state: int) -> Any:
        if model == "isolation-forest":
            from sklearn.ensemble import IsolationForest

            return IsolationForest(n_estimators=100, max_samples=min(256, len(z)), random_state=random_state).fit(z)
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPRegressor

        hidden = max(2, z.shape[1] // 3)
        net = MLPRegressor(hidden_layer_sizes=(hidden,), max_iter=400, random_state=random_state, tol=1e-4)
        # Its reconstruction error is calibrated on the training windows, so a fit stopped early is a weaker model,
        # never a mis-scaled one: not worth a warning on every background refit.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return net.fit(z, z)

    @staticmethod
    def _multi_raw(multi: Any, model: str, z: np.ndarray) -> np.ndarray:
        if model == "isolation-forest":
            return np.asarray(-multi.score_samples(z), dtype=float)
        return np.asarray(((multi.predict(z) - z) ** 2).mean(axis=1), dtype=float)

    # -- scoring ----------------------------------------------------------------------------------------------

    def _stats(self, x: np.ndarray, spans: np.ndarray, sus: np.ndarray) -> np.ndarray:
        """-log10 p of each scored feature, each sustained count and the multivariate model, one row per window."""
        col = {n: i for i, n in enumerate(FEATURE_NAMES)}
        single = len(SCORED_NAMES)
        rows = []
        for row, span, srow in zip(x, spans, sus, strict=True):
            out = [f.neglog_p(float(row[col[f.name]]), float(span)) for f in self._features[:single]]
            out += [f.neglog_p(float(c), 1.0) for f, c in zip(self._features[single:], srow, strict=True)]
            rows.append(out)
        stats = np.asarray(rows, dtype=float).reshape(len(x), len(self._features))
        if self._multi is not None and self._multi_tail is not None:
            z = np.maximum(self._transform(x, self._span), self._clip)
            raw = self._multi_raw(self._multi, self.model, (z - self._clip) / self._scale)
            mp = np.array([[-math.log10(max(self._multi_tail.p(float(r)), 1e-300))] for r in raw])
            stats = np.hstack([stats, mp.reshape(len(x), 1)])
        return stats

    def _combined(self, stats: np.ndarray) -> np.ndarray:
        """The window statistic: the largest -log10 p, or the multivariate model's alone without per-feature."""
        return stats.max(axis=1) if self._per_feature else stats[:, -1]

    def score(self, features: WindowFeatures, recent: Sequence[WindowFeatures] = ()) -> Score:
        """The window's score in [0, 1] and the features that pushed it up (weights summing to 1). ``recent``: the
        table's windows just before it, oldest first (the last ``SUSTAIN_WINDOWS - 1`` are used; without them a
        slow drip is judged on this window alone)."""
        return self.score_many([features], recent)[0]

    def score_many(self, windows: Sequence[WindowFeatures], recent: Sequence[WindowFeatures] = ()) -> list[Score]:
        """``score`` of each of consecutive ``windows`` (``recent`` before the first), in one pass of the model."""
        if not windows:
            return []
        x = _matrix(windows)
        if not np.isfinite(x).all():
            raise ValueError("a window feature is not finite")
        spans = np.array([w.end - w.start if w.end > w.start else self._span for w in windows])
        tail = list(recent)[-(SUSTAIN_WINDOWS - 1) :] if SUSTAIN_WINDOWS > 1 else []
        if tail:
            px = _matrix(tail)
            pspans = np.array([w.end - w.start if w.end > w.start else self._span for w in tail])
            prefix = _counts(px, pspans)
        else:
            prefix = np.zeros((0, len(SUSTAINED)))
        sus = _sustained(x, spans, prefix)
        stats = self._stats(x, spans, sus)
        return [
            Score(score_of_p(self._final.p(float(c))), self.name, self._drivers(row, st, srow, span))
            for row, st, c, srow, span in zip(x, stats, self._combined(stats), sus, spans, strict=True)
        ]

    def _drivers(self, row: np.ndarray, stats: np.ndarray, srow: np.ndarray, span: float) -> tuple[Driver, ...]:
        col = {n: i for i, n in enumerate(FEATURE_NAMES)}
        single = len(SCORED_NAMES)

        def value(i: int, f: _FeatureModel) -> float:
            if i < single:
                return float(row[col[f.name]])
            return float(srow[i - single] / (SUSTAIN_WINDOWS * span))

        per = sorted(
            ((float(stats[i]), i, f) for i, f in enumerate(self._features) if stats[i] > 0.5), key=lambda t: -t[0]
        )
        strong = [t for t in per if t[0] >= DRIVER_MIN] or per[:3]
        strong = strong[:5]
        total = sum(t[0] for t in strong)
        if total <= 0:
            return ()
        return tuple(Driver(f.name, value(i, f), f.median, st / total) for st, i, f in strong)

    # -- state ------------------------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """A JSON-serialisable state: the training windows, model, random_state and a checksum (no pickle)."""
        payload = {
            "version": STATE_VERSION,
            "model": self.model,
            "random_state": self._random_state,
            "per_feature": self._per_feature,
            "span": self._span,
            "names": list(FEATURE_NAMES),
            "windows": self._windows.tolist(),
        }
        return {**payload, "checksum": _checksum(payload)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> WindowDetector:
        """Refit the detector ``to_state`` described; ValueError on anything corrupt."""
        if not isinstance(state, Mapping):
            raise ValueError("detector state is not an object")
        payload = {k: v for k, v in state.items() if k != "checksum"}
        if state.get("checksum") != _checksum(payload):
            raise ValueError("detector state checksum mismatch")
        if payload.get("version") != STATE_VERSION or payload.get("names") != list(FEATURE_NAMES):
            raise ValueError("detector state of another version or feature set")
        try:
            x = np.asarray(payload["windows"], dtype=float)
            span = float(payload["span"])
            rs = int(payload["random_state"])
            model = str(payload["model"])
            per_feature = bool(payload["per_feature"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed detector state: {e}") from e
        if x.ndim != 2 or x.shape[1] != len(FEATURE_NAMES):
            raise ValueError("malformed detector state: windows")
        return cls._fit(x, span, model, rs, per_feature)


def fit_detector(
    windows: Sequence[WindowFeatures], model: str = "isolation-forest", *, random_state: int = 0
) -> Detector:
    """The learned detector once ``MIN_WINDOWS`` windows exist, the rules (usual counts from ``windows``) before.
    ValueError for an unknown model."""
    if model not in MODELS:
        raise ValueError(f"unknown anomaly model {model!r} (one of {', '.join(MODELS)})")
    if len(windows) < MIN_WINDOWS:
        return RuleDetector.fit(windows)
    return WindowDetector.fit(windows, model, random_state=random_state)


def load_detector(state: Any, windows: Sequence[WindowFeatures] = ()) -> tuple[Detector, str | None]:
    """The detector ``state`` describes and None, or, when it is corrupt, the rules (usual counts from ``windows``)
    and why (for the one log line the caller writes)."""
    try:
        return WindowDetector.from_state(state), None
    except ValueError as e:
        return RuleDetector.fit(windows), f"anomaly model unusable ({e}); using the rule-based detector"
