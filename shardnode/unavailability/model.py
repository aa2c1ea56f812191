"""The predicted-unavailability model: one scorer per window on the sliding-window features, each calibrated on
held-out time, risks made non-decreasing in the window length; stored as checksummed JSON (no pickle: loading a
model never runs code, so a model file is data whoever wrote it)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from .calibration import Calibrator, brier, fit_calibrator
from .features import FEATURE_NAMES, FEATURE_TEXT, Columns, columns, feature_matrix, labels, outage_spans
from .rules import rule_risk
from .types import WINDOWS_DEFAULT, HealthPoint, ModelCorrupt, Risk

FORMAT, VERSION = "chronoshard-unavailability", 1
KINDS = ("logistic-regression", "gradient-boosting")
HELD_OUT = 0.25  # the last quarter of each history's time calibrates
MIN_POSITIVES = 5  # per window in the training part: fewer and the model stays untrained (rules answer)
MIN_HELD_OUT_POSITIVES = 5  # fewer in the held-out part: calibrate on the training part instead (reported)
MAX_ROWS = 40_000  # training rows per window, half of each class at most, sampled (fit budget: 30 s)
GBM_ROWS = 12_000  # the boosted trees' share of those rows (their fit costs more per row)
TAIL_SECONDS = 3600.0  # predict reads the last hour: the longest window is 15 min, a restart's trace 10 min
DRIVERS = 3

Array = NDArray[np.float64]


@dataclass(frozen=True)
class FitReport:
    """What a fit did: trained or why not, rows and positives per window, how each window was calibrated and its
    held-out Brier score."""

    trained: bool
    reason: str | None
    points: int
    positives: dict[float, int] = field(default_factory=dict)
    calibration: dict[float, str] = field(default_factory=dict)
    brier: dict[float, float] = field(default_factory=dict)


# ---- scorers: raw score of standardised features, JSON in and out ---------------------------------------------
@dataclass(frozen=True)
class Linear:
    """A logistic regression's coefficients."""

    coef: tuple[float, ...]
    intercept: float

    def score(self, z: Array) -> Array:
        """Raw scores (log-odds) of rows of standardised features."""
        out: Array = z @ np.array(self.coef) + self.intercept
        return out

    def contributions(self, z: Array) -> Array:
        """Each feature's share of the score of one row."""
        out: Array = z * np.array(self.coef)
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form."""
        return {"kind": "linear", "coef": list(self.coef), "intercept": self.intercept}


@dataclass(frozen=True)
class Trees:
    """Gradient-boosted trees as flat node arrays: go left when ``x[feature] <= threshold``."""

    baseline: float
    trees: tuple[dict[str, tuple[Any, ...]], ...]  # feature, threshold, left, right, leaf, value
    importance: tuple[float, ...]

    def score(self, z: Array) -> Array:
        """Raw scores (log-odds) of rows of standardised features."""
        if len(z) <= 4:
            return np.array([self._score_one(row.tolist()) for row in z])
        total = np.full(len(z), self.baseline)
        rows = np.arange(len(z))
        for tree in self.trees:
            feat, thr = np.array(tree["feature"]), np.array(tree["threshold"])
            left, right = np.array(tree["left"]), np.array(tree["right"])
            leaf, value = np.array(tree["leaf"], dtype=bool), np.array(tree["value"])
            node = np.zeros(len(z), dtype=np.intp)
            while not leaf[node].all():
                go_left = z[rows, feat[node]] <= thr[node]
                node = np.where(leaf[node], node, np.where(go_left, left[node], right[node]))
            total += value[node]
        return total

    def _score_one(self, x: list[float]) -> float:
        # A plain walk per tree: for predict's one row, numpy's per-call cost would dominate (measured 19 ms vs 1).
        total = self.baseline
        for tree in self.trees:
            feat, thr, left, right, leaf = tree["feature"], tree["threshold"], tree["left"], tree["right"], tree["leaf"]
            node = 0
            while not leaf[node]:
                node = left[node] if x[feat[node]] <= thr[node] else right[node]
            total += tree["value"][node]
        return float(total)

    def contributions(self, z: Array) -> Array:
        """Importance times how far the feature is from its usual value (trees have no additive shares)."""
        out: Array = np.array(self.importance) * np.abs(z)
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form."""
        return {"kind": "trees", "baseline": self.baseline, "importance": list(self.importance),
                "trees": [{k: list(v) for k, v in t.items()} for t in self.trees]}


Scorer = Linear | Trees


def scorer_from_json(doc: dict[str, Any], width: int) -> Scorer:
    """The inverse of ``to_json`` for ``width`` features (ValueError/KeyError/TypeError when malformed)."""
    if doc["kind"] == "linear":
        coef = tuple(float(c) for c in doc["coef"])
        if len(coef) != width:
            raise ValueError("coefficients do not match the features")
        return Linear(coef, float(doc["intercept"]))
    if doc["kind"] != "trees":
        raise ValueError("unknown scorer")
    trees = []
    for t in doc["trees"]:
        tree = {"feature": tuple(int(v) for v in t["feature"]), "threshold": tuple(float(v) for v in t["threshold"]),
                "left": tuple(int(v) for v in t["left"]), "right": tuple(int(v) for v in t["right"]),
                "leaf": tuple(bool(v) for v in t["leaf"]), "value": tuple(float(v) for v in t["value"])}
        n = len(tree["feature"])
        if n == 0 or any(len(v) != n for v in tree.values()):
            raise ValueError("malformed tree")
        for i in range(n):  # children after their parent: evaluation always ends at a leaf
            if not tree["leaf"][i] and not (i < tree["left"][i] < n and i < tree["right"][i] < n
                                            and 0 <= tree["feature"][i] < width):
                raise ValueError("malformed tree")
        trees.append(tree)
    importance = tuple(float(v) for v in doc["importance"])
    if len(importance) != width:
        raise ValueError("importance does not match the features")
    return Trees(float(doc["baseline"]), tuple(trees), importance)


def _trees_of(clf: HistGradientBoostingClassifier) -> Trees:
    trees = []
    for (pred,) in clf._predictors:  # one tree per iteration for a binary classifier
        nodes = pred.nodes
        trees.append({"feature": tuple(int(v) for v in nodes["feature_idx"]),
                      "threshold": tuple(float(v) for v in nodes["num_threshold"]),
                      "left": tuple(int(v) for v in nodes["left"]), "right": tuple(int(v) for v in nodes["right"]),
                      "leaf": tuple(bool(v) for v in nodes["is_leaf"]),
                      "value": tuple(float(v) for v in nodes["value"])})
    gain = np.zeros(len(FEATURE_NAMES))
    for (pred,) in clf._predictors:
        inner = ~pred.nodes["is_leaf"].astype(bool)
        np.add.at(gain, pred.nodes["feature_idx"][inner], np.maximum(pred.nodes["gain"][inner], 0.0))
    total = gain.sum() or 1.0
    return Trees(float(np.ravel(clf._baseline_prediction)[0]), tuple(trees), tuple(float(g / total) for g in gain))


# ---- the model ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Head:
    """One window's scorer and calibrator."""

    window: float
    scorer: Scorer
    calibrator: Calibrator


@dataclass
class _Rows:
    x: Array
    y: Array  # (windows, rows), NaN unknown
    held_out: NDArray[np.bool_]


def _rows(histories: Sequence[Sequence[HealthPoint]], windows: Sequence[float], down_after: int) -> _Rows:
    xs, ys, hs = [], [], []
    for history in histories:
        if len(history) < 2:
            continue
        cols = columns(history)
        usable, y = labels(cols, windows, down_after)
        cut = cols.time[0] + (1.0 - HELD_OUT) * (cols.time[-1] - cols.time[0])
        held = cols.time > cut
        for k, w in enumerate(windows):
            # A training row whose window reaches into the held-out time would carry its outcome across the cut.
            y[k, (~held) & (cols.time + w > cut) & (y[k] != 1.0)] = math.nan
        xs.append(feature_matrix(cols)[usable])
        ys.append(y[:, usable])
        hs.append(held[usable])
    if not xs:
        return _Rows(np.zeros((0, len(FEATURE_NAMES))), np.zeros((len(windows), 0)), np.zeros(0, dtype=bool))
    return _Rows(np.vstack(xs), np.hstack(ys), np.concatenate(hs))


class UnavailabilityModel:
    """P(unavailable within each window) of one copy from its health history (docs/tokens.md)."""

    def __init__(self, windows: Sequence[float] = WINDOWS_DEFAULT, seed: int = 0, *,
                 kind: str = "logistic-regression", down_after: int = 3) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        self.windows = tuple(sorted(float(w) for w in windows))
        self.seed, self.kind, self.down_after = seed, kind, down_after
        self.mean = np.zeros(len(FEATURE_NAMES))
        self.scale = np.ones(len(FEATURE_NAMES))
        self.heads: tuple[Head, ...] = ()

    @property
    def trained(self) -> bool:
        """Whether predictions come from the model (else from the rules)."""
        return bool(self.heads)

    # -- fit --
    def fit(self, histories: Sequence[Sequence[HealthPoint]]) -> FitReport:
        """Learn from copies' histories: a point is positive for window w when an outage starts within (t, t+w];
        points inside an outage are left out. The last quarter of each history's time calibrates."""
        rows = _rows(histories, self.windows, self.down_after)
        train = ~rows.held_out
        positives = {w: int(np.nansum(rows.y[k, train] == 1.0)) for k, w in enumerate(self.windows)}
        short = [w for w, p in positives.items() if p < MIN_POSITIVES]
        if short:
            self.heads = ()
            return FitReport(False, f"fewer than {MIN_POSITIVES} positive points for windows {short}",
                             len(rows.x), positives)
        self.mean = rows.x[train].mean(axis=0)
        self.scale = rows.x[train].std(axis=0)
        self.scale[self.scale < 1e-9] = 1.0
        z = (rows.x - self.mean) / self.scale
        heads, how, scores = [], {}, {}
        for k, w in enumerate(self.windows):
            head, how[w], scores[w] = self._fit_head(k, w, z, rows)
            heads.append(head)
        self.heads = tuple(heads)
        return FitReport(True, None, len(rows.x), positives, how, scores)

    def _fit_head(self, k: int, w: float, z: Array, rows: _Rows) -> tuple[Head, str, float]:
        known = ~np.isnan(rows.y[k])
        train = np.flatnonzero(known & ~rows.held_out)
        rng = np.random.default_rng(self.seed + k)
        pos, neg = train[rows.y[k, train] == 1.0], train[rows.y[k, train] == 0.0]
        # Classes are weighed equally below (outages are rare), so sampling each one changes no weight; the
        # calibration afterwards restores the base rate.
        half = MAX_ROWS // 2
        pos = rng.choice(pos, size=half, replace=False) if len(pos) > half else pos
        neg = rng.choice(neg, size=MAX_ROWS - len(pos), replace=False) if len(pos) + len(neg) > MAX_ROWS else neg
        sel = np.concatenate((pos, neg))
        scorer = self._fit_scorer(z[sel], rows.y[k, sel])
        held = np.flatnonzero(known & rows.held_out)
        if int(rows.y[k, held].sum()) >= MIN_HELD_OUT_POSITIVES:
            cal, how = fit_calibrator(scorer.score(z[held]), rows.y[k, held]), "held-out"
        else:
            cal, how = fit_calibrator(scorer.score(z[train]), rows.y[k, train]), "training (too few held-out)"
        p = cal.apply(scorer.score(z[held]))
        return Head(w, scorer, cal), f"{cal.kind} on {how}", brier(p, rows.y[k, held])

    def _fit_scorer(self, z: Array, y: Array) -> Scorer:
        if self.kind == "logistic-regression":
            lr = LogisticRegression(C=0.1, class_weight="balanced", max_iter=200, tol=1e-3, random_state=self.seed)
            lr.fit(z, y)
            return Linear(tuple(float(c) for c in lr.coef_[0]), float(lr.intercept_[0]))
        # 60 rounds on at most GBM_ROWS rows: 150 rounds on 40,000 took 426 s wall on 20 copy-days (load 14);
        # 60 on 12,000 take 29 s of CPU on 7 days x 10 copies, the fit budget.
        if len(y) > GBM_ROWS:
            keep = np.random.default_rng(self.seed).choice(len(y), size=GBM_ROWS, replace=False)
            z, y = z[keep], y[keep]
        gb = HistGradientBoostingClassifier(max_iter=60, learning_rate=0.2, max_leaf_nodes=15,
                                            min_samples_leaf=40, l2_regularization=1.0, class_weight="balanced",
                                            early_stopping=False, random_state=self.seed)
        # One thread: the model trains in the background beside serving processes on a shared node, and
        # OpenMP's one-thread-per-core on a busy machine was measured 4x slower than one thread.
        with threadpool_limits(limits=1):
            gb.fit(z, y)
        return _trees_of(gb)

    # -- predict --
    def predict(self, history: Sequence[HealthPoint], now: float) -> Risk:
        """The risk of the copy at ``now`` from its samples up to ``now``; the rules' while untrained."""
        pts = _tail(history, now)
        if not pts:
            return rule_risk(pts, now, self.windows)
        cols = columns(pts)
        spans = outage_spans(cols.time, cols.up, self.down_after)
        if spans and spans[-1][1] == len(pts) - 1:
            return Risk({w: 1.0 for w in self.windows}, "model" if self.trained else "rules", ["unavailable now"])
        if not self.trained:
            return rule_risk(pts, now, self.windows)
        return self._model_risk(cols)

    def _model_risk(self, cols: Columns) -> Risk:
        x = feature_matrix(cols, np.array([len(cols.time) - 1]))
        z = (x - self.mean) / self.scale
        probs: dict[float, float] = {}
        running = 0.0
        for head in self.heads:
            p = float(head.calibrator.apply(head.scorer.score(z))[0])
            running = max(running, p)  # P(within a longer window) >= P(within a shorter one)
            probs[head.window] = running
        anchor = self.heads[min(1, len(self.heads) - 1)].scorer  # the 15-min head with the default windows
        contrib = anchor.contributions(z[0])
        order = np.argsort(-contrib)
        drivers = [FEATURE_TEXT[FEATURE_NAMES[i]] for i in order[:DRIVERS] if contrib[i] > 0]
        return Risk(probs, "model", drivers)

    def risk_series(self, history: Sequence[HealthPoint]) -> Array:
        """P(unavailable within each window) at every sample of ``history`` at once (``windows`` x points, in
        time order; 1 inside an outage): what ``predict`` answers at each sample's time, for benchmarks and
        back-tests. The model must be trained."""
        if not self.trained:
            raise ValueError("untrained: the rules answer (rule_risk)")
        cols = columns(history)
        z = (feature_matrix(cols) - self.mean) / self.scale
        out = np.maximum.accumulate(np.vstack([h.calibrator.apply(h.scorer.score(z)) for h in self.heads]), axis=0)
        for s, e in outage_spans(cols.time, cols.up, self.down_after):
            out[:, s + self.down_after - 1:e + 1] = 1.0  # predict's "unavailable now" from the down_after-th sample
        return out

    # -- bytes --
    def to_bytes(self) -> bytes:
        """The model as checksummed JSON (untrained models too)."""
        body = {"format": FORMAT, "version": VERSION, "kind": self.kind, "windows": list(self.windows),
                "seed": self.seed, "downAfter": self.down_after, "features": FEATURE_NAMES,
                "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "heads": [{"window": h.window, "scorer": h.scorer.to_json(), "calibrator": h.calibrator.to_json()}
                          for h in self.heads]}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return json.dumps({"sha256": hashlib.sha256(canonical.encode()).hexdigest(), "model": body},
                          sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_bytes(cls, b: bytes) -> UnavailabilityModel:
        """A model from ``to_bytes``; ModelCorrupt when the bytes are not one (or were made for other features)."""
        try:
            doc = json.loads(b)
            body = doc["model"]
            canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
            if hashlib.sha256(canonical.encode()).hexdigest() != doc["sha256"]:
                raise ModelCorrupt("checksum mismatch")
            return cls._from_body(body)
        except ModelCorrupt:
            raise
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ModelCorrupt(f"not a model: {type(exc).__name__}") from None

    @classmethod
    def _from_body(cls, body: dict[str, Any]) -> UnavailabilityModel:
        if body["format"] != FORMAT or body["version"] != VERSION:
            raise ModelCorrupt("unknown format or version")
        if list(body["features"]) != FEATURE_NAMES:
            raise ModelCorrupt("made for other features")
        model = cls(tuple(body["windows"]), int(body["seed"]), kind=str(body["kind"]),
                    down_after=int(body["downAfter"]))
        width = len(FEATURE_NAMES)
        model.mean = np.array(body["mean"], dtype=np.float64)
        model.scale = np.array(body["scale"], dtype=np.float64)
        if model.mean.shape != (width,) or model.scale.shape != (width,) or not np.all(model.scale > 0):
            raise ModelCorrupt("malformed scaling")
        heads = tuple(Head(float(h["window"]), scorer_from_json(h["scorer"], width),
                           Calibrator.from_json(h["calibrator"])) for h in body["heads"])
        if heads and tuple(h.window for h in heads) != model.windows:
            raise ModelCorrupt("heads do not match the windows")
        model.heads = heads
        return model


def _tail(history: Sequence[HealthPoint], now: float) -> list[HealthPoint]:
    """The samples of the last ``TAIL_SECONDS`` up to ``now``, in time order."""
    pts = list(history)
    times = np.array([p.time for p in pts])
    if len(times) > 1 and not bool(np.all(times[1:] >= times[:-1])):
        order = np.argsort(times, kind="stable")
        pts, times = [pts[i] for i in order], times[order]
    lo = int(np.searchsorted(times, now - TAIL_SECONDS, side="left"))
    hi = int(np.searchsorted(times, now, side="right"))
    return pts[lo:hi]
