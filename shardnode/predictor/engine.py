"""The predictor engine: consumes accesses, emits hints within budgets, trains in the background.

Glue around the pure parts (features, scorers, feedback, forecast); the only I/O is the model
file on the shard's volume. The HTTP loop lives in `predictor_main`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .access import Access
from .config import PredictorConfig
from .features import CandidateGenerator, GeneratorSettings
from .feedback import FeedbackController, Outcome, OutcomeTracker, TokenBucket
from .forecast import RateForecaster
from .labels import label_candidates, resolvable
from .metrics import PredictorMetrics
from .modelstore import ModelLoadError, load_model, save_model
from .scorers import StatsScorer, fit_auto, make_scorer

log = logging.getLogger(__name__)
_RETRY_S = 10.0
SHARD = "*"  # forecast series of the whole shard


@dataclass(frozen=True, slots=True)
class Hint:
    """One prefetch hint for the cache."""

    table: str
    key: str
    score: float
    size: int

    def to_json(self) -> dict[str, Any]:
        """Body item of `POST /v1/prefetch`."""
        return {"table": self.table, "key": self.key, "score": round(self.score, 6)}


def _settings(cfg: PredictorConfig) -> GeneratorSettings:
    return GeneratorSettings(block_bytes=cfg.block_bytes, max_streams=cfg.max_streams)


def train_scorer(accesses: list[Access], cfg: PredictorConfig, now: float | None = None) -> tuple[Any, dict[str, Any]]:
    """Fit the configured model (or pick one with `auto`) on a log snapshot taken at `now`; pure apart from CPU."""
    gen = CandidateGenerator(_settings(cfg))
    origin: list[int] = []
    keys: list[tuple[str, str]] = []
    feats: list[np.ndarray] = []
    for i, a in enumerate(accesses):
        for c in gen.observe(a):
            origin.append(i)
            keys.append((c.table, c.key))
            feats.append(c.features)
    if not feats:
        raise ValueError("the log produced no candidates (keys without a numeric suffix and no repeats)")
    return fit_candidates(accesses, origin, keys, feats, cfg, now)


def fit_candidates(accesses: list[Access], origin: list[int], keys: list[tuple[str, str]], feats: list[np.ndarray],
                   cfg: PredictorConfig, now: float | None = None) -> tuple[Any, dict[str, Any]]:
    """Label candidates (proposed after access origin[i]) by the log and fit the configured model on the final ones."""
    y = label_candidates(accesses, origin, keys, cfg.horizon_s)
    ok = resolvable(accesses, origin, cfg.horizon_s, now)
    x = np.vstack(feats)[ok]
    y = y[ok]
    info: dict[str, Any] = {"rows": int(len(y)), "positives": int(y.sum()), "accesses": len(accesses)}
    if cfg.model == "auto":
        choice = fit_auto(x, y)
        info["validationLogLoss"] = choice.validation_loss
        return choice.scorer, info
    if len(y) < 20:
        raise ValueError("too few labelled candidates to train on (need at least 20)")
    return make_scorer(cfg.model).fit(x, y), info


class Predictor:
    """Online state of one shard's predictor."""

    def __init__(self, data_dir: Path, config: PredictorConfig | None = None, executor: Executor | None = None,
                 metrics: PredictorMetrics | None = None) -> None:
        self.data_dir = data_dir
        self.config = config or PredictorConfig()
        self.metrics = metrics or PredictorMetrics()
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="predictor-train")
        self._lock = threading.Lock()
        self.scorer: Any = None
        self.model_info: dict[str, Any] = {}
        self.model_error: str | None = None
        self.training: Future[Any] | None = None
        self.last_train: float = -math.inf
        self.retry_at: float = -math.inf
        self.used = self.wasted = self.sent = self.misses = self.wasted_bytes = 0
        self._reset_state()

    def _reset_state(self) -> None:
        cfg = self.config
        self.generator = CandidateGenerator(_settings(cfg))
        self.log: deque[Access] = deque(maxlen=cfg.max_log_accesses)
        self.tracker = OutcomeTracker()
        self.feedback = FeedbackController(base_threshold=cfg.score_threshold, target_precision=cfg.target_precision,
                                           window=cfg.feedback_window, enabled=cfg.feedback_enabled,
                                           window_s=cfg.feedback_window_s)
        self.hint_bucket = TokenBucket(cfg.hints_per_second, max(1.0, cfg.hints_per_second))
        self.byte_bucket = TokenBucket(cfg.bytes_per_second, max(1.0, cfg.bytes_per_second))
        self.forecaster = RateForecaster(window_s=cfg.forecast_window_s, horizon=cfg.forecast_windows)

    # -- model ---------------------------------------------------------------------------------------
    def load(self) -> bool:
        """Load the saved model; on any problem log why and prefetch nothing until a new one is trained."""
        try:
            scorer, header = load_model(self.data_dir)
        except ModelLoadError as exc:
            with self._lock:
                self.scorer, self.model_error = None, str(exc)
            log.warning("%s; prefetching disabled until a new model is trained", exc)
            self._publish_model()
            return False
        with self._lock:
            self.scorer, self.model_info, self.model_error = scorer, header, None
            self.last_train = float(header.get("saved", time.time()))
        log.info("loaded %s model from %s", getattr(scorer, "kind", "?"), self.data_dir)
        self._publish_model()
        return True

    def _publish_model(self) -> None:
        self.metrics.model_loaded.set(1 if self.scorer is not None else 0)
        kind = getattr(self.scorer, "kind", None)
        for k in ("stats", "gbm", "logreg"):
            self.metrics.model_kind.labels(k).set(1 if k == kind else 0)

    def train_now(self, snapshot: list[Access] | None = None, now: float | None = None) -> dict[str, Any]:
        """Train on a log snapshot (default: the log now), save, and swap the model in (blocking)."""
        snapshot = list(self.log) if snapshot is None else snapshot
        cfg = self.config
        t0 = time.monotonic()
        try:
            scorer, info = train_scorer(snapshot, cfg, now)
        except Exception as exc:
            self.metrics.trainings.labels("error").inc()
            # Not the whole retrain interval: a young log (too few finished horizons) soon has enough.
            self.retry_at = time.time() + _RETRY_S
            log.warning("training failed (%s); keeping the current model, retrying in %ss", exc, _RETRY_S)
            raise
        info["seconds"] = round(time.monotonic() - t0, 3)
        info["model"] = scorer.kind
        try:
            save_model(self.data_dir, scorer, {"info": info})
        except OSError as exc:
            log.error("could not save the model to %s: %s (it is used, but will not survive a restart)",
                      self.data_dir, exc.strerror)
        with self._lock:
            self.scorer, self.model_info, self.model_error = scorer, info, None
        self.metrics.trainings.labels("ok").inc()
        self.metrics.train_seconds.set(info["seconds"])
        self._publish_model()
        log.info("trained %s model on %d accesses (%d rows) in %.1fs", scorer.kind, len(snapshot), info["rows"],
                 info["seconds"])
        return info

    def maybe_train(self, now: float | None = None, force: bool = False) -> Future[Any] | None:
        """Start a background training if due (no model yet, or the retrain interval passed)."""
        now = time.time() if now is None else now
        if self.training is not None and not self.training.done():
            return None
        if len(self.log) < self.config.min_train_accesses:
            return None
        if not force and not self.config.enabled:
            return None  # no PrefetchPolicy: keep the log (a later policy trains at once) but spend no CPU
        if not force and self.scorer is not None and now - self.last_train < self.config.retrain_interval_s:
            return None
        if not force and now < self.retry_at:
            return None
        self.last_train = now
        # Snapshot here, on the caller's thread: observe() may append to the log while the model trains.
        snapshot = list(self.log)
        if self.config.history_window_s is not None:
            snapshot = [a for a in snapshot if a.time >= now - self.config.history_window_s]
        self.training = self._executor.submit(self.train_now, snapshot, now)
        return self.training

    def apply_config(self, cfg: PredictorConfig) -> None:
        """Take new settings; geometry or horizon changes restart the online state, a new model kind retrains."""
        old = self.config
        self.config = cfg
        if (old.block_bytes, old.max_streams, old.max_log_accesses, old.horizon_s, old.forecast_window_s,
                old.forecast_windows) != (cfg.block_bytes, cfg.max_streams, cfg.max_log_accesses, cfg.horizon_s,
                                          cfg.forecast_window_s, cfg.forecast_windows):
            history = list(self.log)
            self._reset_state()
            for a in history[-cfg.max_log_accesses:]:
                self.log.append(a)
        else:
            fb = self.feedback
            fb.base_threshold, fb.target_precision = cfg.score_threshold, cfg.target_precision
            fb.window, fb.enabled, fb.window_s = cfg.feedback_window, cfg.feedback_enabled, cfg.feedback_window_s
            fb.threshold = max(fb.threshold, cfg.score_threshold) if cfg.feedback_enabled else cfg.score_threshold
            self.hint_bucket = TokenBucket(cfg.hints_per_second, max(1.0, cfg.hints_per_second))
            self.byte_bucket = TokenBucket(cfg.bytes_per_second, max(1.0, cfg.bytes_per_second))
        if old.model != cfg.model and self.scorer is not None:
            self.maybe_train(force=True)

    # -- online --------------------------------------------------------------------------------------
    def _record(self, outs: list[Outcome], now: float) -> None:
        if not outs:
            return
        self.feedback.record(outs, now)
        scorer = self.scorer
        sent = [o for o in outs if o.sent]
        for o in sent:
            if o.used:
                self.used += 1
                self.metrics.hints_used.inc()
            else:
                self.wasted += 1
                self.wasted_bytes += o.size
                self.metrics.hints_wasted.inc()
                self.metrics.wasted_bytes.inc(o.size)
        if isinstance(scorer, StatsScorer) and self.config.feedback_enabled:
            # The counting model recalibrates online from every resolved candidate.
            rows = [o for o in outs if o.features is not None]
            if rows:
                scorer.update(np.vstack([o.features for o in rows]), np.array([o.used for o in rows]))

    def observe(self, accesses: list[Access], now: float | None = None) -> list[Hint]:
        """Consume accesses (oldest first); return the hints to send now."""
        now = time.time() if now is None else now
        cfg = self.config
        pending: list[tuple[int, Access, Any]] = []
        # Where each block is requested later in this batch: a hint for it would come too late.
        last_in_batch = {(a.table, a.key): i for i, a in enumerate(accesses)}
        for i, a in enumerate(accesses):
            self._record(self.tracker.expire(a.time), a.time)
            outs = self.tracker.access(a.table, a.key, a.time)
            self._record(outs, a.time)
            if not a.hit and not any(o.sent and o.used for o in outs):
                self.misses += 1
            self.forecaster.observe(a.table, a.time)
            self.forecaster.observe(SHARD, a.time)  # the whole shard ("*" is not a valid table name)
            self.log.append(a)
            self.metrics.accesses.inc()
            for c in self.generator.observe(a):
                # Candidates of accesses older than the horizon (catching up a backlog) are too late to help.
                if a.time + cfg.horizon_s >= now:
                    pending.append((i, a, c))
        self._record(self.tracker.expire(now - cfg.horizon_s), now)
        hints: list[Hint] = []
        scorer = self.scorer
        if pending and scorer is not None and cfg.enabled:
            scores = scorer.predict(np.vstack([c.features for _, _, c in pending]))
            for (i, a, c), s in zip(pending, scores.tolist(), strict=True):
                if s < cfg.score_threshold:
                    continue
                if last_in_batch.get((c.table, c.key), -1) > i:
                    # Already requested after this access: the prediction was right but too late to send;
                    # it still counts for the threshold (as an unsent candidate), never as a sent hint.
                    later = next(b for b in accesses[i + 1:] if (b.table, b.key) == (c.table, c.key))
                    self._record([Outcome(s, False, later.time - a.time <= cfg.horizon_s, c.size, c.features)],
                                 later.time)
                    continue
                send = s >= self.feedback.threshold
                if send and self.tracker.is_pending_sent(c.table, c.key):
                    send = False
                if send and not self.hint_bucket.take(1, now, self.feedback.budget_factor):
                    self.metrics.hints_dropped.labels("requests_budget").inc()
                    send = False
                if send and not self.byte_bucket.take(max(c.size, 1), now, self.feedback.budget_factor):
                    self.metrics.hints_dropped.labels("bytes_budget").inc()
                    send = False
                self.tracker.add(c.table, c.key, s, send, c.size, a.time, cfg.horizon_s, c.features)
                if send:
                    self.sent += 1
                    self.metrics.hints_sent.labels(c.table).inc()
                    hints.append(Hint(c.table, c.key, s, c.size))
        self._publish(now)
        return hints

    def _publish(self, now: float) -> None:
        m = self.metrics
        resolved = self.used + self.wasted
        m.precision.set(self.used / resolved if resolved else math.nan)
        m.recall.set(self.used / (self.used + self.misses) if self.used + self.misses else math.nan)
        lp = self.feedback.last_precision
        m.window_precision.set(lp if lp is not None else math.nan)
        m.threshold.set(self.feedback.threshold)
        m.budget_factor.set(self.feedback.budget_factor)
        for table, rates in self.forecaster.forecast(now).items():
            for h, r in enumerate(rates, start=1):
                m.forecast.labels(table, str(h)).set(r)

    def status(self, now: float | None = None) -> dict[str, Any]:
        """JSON summary for `GET /v1/status` (what the PrefetchPolicy controller aggregates)."""
        now = time.time() if now is None else now
        resolved = self.used + self.wasted
        return {
            "enabled": self.config.enabled,
            "model": getattr(self.scorer, "kind", None),
            "modelError": self.model_error,
            "training": self.training is not None and not self.training.done(),
            "threshold": self.feedback.threshold,
            "budgetFactor": self.feedback.budget_factor,
            "hintsSent": self.sent,
            "hintsUsed": self.used,
            "hintsWasted": self.wasted,
            "wastedBytes": self.wasted_bytes,
            "precision": self.used / resolved if resolved else None,
            "recall": self.used / (self.used + self.misses) if self.used + self.misses else None,
            "forecast": self.forecaster.forecast(now),
        }

    def close(self) -> None:
        """Stop the training executor if we own it (waits for a running training)."""
        if self._own_executor:
            self._executor.shutdown(wait=True, cancel_futures=True)
