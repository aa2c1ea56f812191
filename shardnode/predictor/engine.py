"""The predictor engine: consumes accesses, emits hints within budgets, trains in the background.

Glue around the pure parts (features, scorers, feedback, forecast); the only I/O is the model
file on the shard's volume. The HTTP loop lives in `predictor/main.py`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .access import Access
from .config import PredictorConfig
from .features import Candidate, CandidateGenerator, GeneratorSettings, replay_candidates
from .feedback import FeedbackController, Outcome, OutcomeTracker, TokenBucket
from .forecast import RateForecaster
from .labels import label_candidates, resolvable
from .lifecycle import TrainedPipeline
from .metrics import PredictorMetrics
from .scorers import fit_auto, make_scorer

log = logging.getLogger(__name__)
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


def feedback_controller(cfg: PredictorConfig, base_threshold: float) -> FeedbackController:
    """The feedback loop of a hint pipeline: predictor.json's feedback settings around ``base_threshold``."""
    return FeedbackController(base_threshold=base_threshold, target_precision=cfg.target_precision,
                              window=cfg.feedback_window, enabled=cfg.feedback_enabled, window_s=cfg.feedback_window_s)


def _settings(cfg: PredictorConfig) -> GeneratorSettings:
    return GeneratorSettings(block_bytes=cfg.block_bytes, max_streams=cfg.max_streams)


def train_scorer(accesses: list[Access], cfg: PredictorConfig, now: float | None = None) -> tuple[Any, dict[str, Any]]:
    """Fit the configured model (or pick one with `auto`) on a log snapshot taken at `now`; pure apart from CPU."""
    origin, keys, feats = replay_candidates(CandidateGenerator(_settings(cfg)), accesses)
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


class Predictor(TrainedPipeline):
    """Online state of one shard's predictor."""

    def __init__(self, data_dir: Path, config: PredictorConfig | None = None, executor: Executor | None = None,
                 metrics: PredictorMetrics | None = None) -> None:
        self.used = self.wasted = self.sent = self.misses = self.wasted_bytes = 0
        super().__init__(data_dir, config, executor, metrics)

    def _reset_state(self) -> None:
        cfg = self.config
        self.generator = CandidateGenerator(_settings(cfg))
        self.log: deque[Access] = deque(maxlen=cfg.max_log_accesses)
        self.tracker = OutcomeTracker()
        self.feedback = feedback_controller(cfg, cfg.score_threshold)
        self.hint_bucket = TokenBucket(cfg.hints_per_second, max(1.0, cfg.hints_per_second))
        self.byte_bucket = TokenBucket(cfg.bytes_per_second, max(1.0, cfg.bytes_per_second))
        self.forecaster = RateForecaster(window_s=cfg.forecast_window_s, horizon=cfg.forecast_windows)

    # -- model (lifecycle.TrainedPipeline hooks) ------------------------------------------------------
    def _publish_model(self) -> None:
        self.metrics.model_loaded.set(1 if self.scorer is not None else 0)
        kind = getattr(self.scorer, "kind", None)
        for k in ("stats", "gbm", "logreg"):
            self.metrics.model_kind.labels(k).set(1 if k == kind else 0)

    def _train(self, snapshot: list[Access], now: float | None) -> tuple[Any, Any, dict[str, Any]]:
        scorer, info = train_scorer(snapshot, self.config, now)
        return scorer, scorer, info

    def _trained(self, info: dict[str, Any]) -> None:
        self.metrics.train_seconds.set(info["seconds"])

    def _wants_training(self) -> bool:
        # No PrefetchPolicy: keep the log (a later policy trains at once) but spend no CPU.
        return self.config.enabled

    def apply_config(self, cfg: PredictorConfig) -> None:
        """Take new settings; geometry or horizon changes restart the online state, a new model kind retrains."""
        old, self.config = self.config, cfg
        restart = (old.block_bytes, old.max_streams, old.max_log_accesses, old.horizon_s, old.forecast_window_s,
                   old.forecast_windows) != (cfg.block_bytes, cfg.max_streams, cfg.max_log_accesses, cfg.horizon_s,
                                             cfg.forecast_window_s, cfg.forecast_windows)
        if not self._restart_or_retune(old, restart, cfg.score_threshold):
            self.hint_bucket = TokenBucket(cfg.hints_per_second, max(1.0, cfg.hints_per_second))
            self.byte_bucket = TokenBucket(cfg.bytes_per_second, max(1.0, cfg.bytes_per_second))

    # -- online --------------------------------------------------------------------------------------
    def _record(self, outs: list[Outcome], now: float) -> None:
        if not outs:
            return
        self.feedback.record(outs, now)
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
        self._recalibrate(outs)

    def observe(self, accesses: list[Access], now: float | None = None) -> list[Hint]:
        """Consume accesses (oldest first); return the hints to send now."""
        now = time.time() if now is None else now
        pending = [pc for i, a in enumerate(accesses) for pc in self._consume(i, a, now)]
        self._record(self.tracker.expire(now - self.config.horizon_s), now)
        hints: list[Hint] = []
        scorer = self.scorer
        if pending and scorer is not None and self.config.enabled:
            scores = scorer.predict(np.vstack([c.features for _, _, c in pending]))
            hints = self._hints(accesses, pending, scores.tolist(), now)
        self._publish(now)
        return hints

    def _consume(self, i: int, a: Access, now: float) -> list[tuple[int, Access, Candidate]]:
        """Learn from access number ``i``: resolve outstanding hints, count a miss, feed the forecaster and the
        candidate generator; the candidates it suggests that may still help."""
        self._record(self.tracker.expire(a.time), a.time)
        outs = self.tracker.access(a.table, a.key, a.time)
        self._record(outs, a.time)
        self.feedback.record_demand(a.size)  # the waste cap is a share of the bytes read
        if not a.hit and not any(o.sent and o.used for o in outs):
            self.misses += 1
        self.forecaster.observe(a.table, a.time)
        self.forecaster.observe(SHARD, a.time)  # the whole shard ("*" is not a valid table name)
        self.log.append(a)
        self.metrics.accesses.inc()
        # Candidates of accesses older than the horizon (catching up a backlog) are too late to help.
        if a.time + self.config.horizon_s < now:
            self.generator.observe(a)
            return []
        return [(i, a, c) for c in self.generator.observe(a)]

    def _hints(self, accesses: list[Access], pending: list[tuple[int, Access, Candidate]], scores: list[float],
               now: float) -> list[Hint]:
        """The scored candidates over the threshold that become hints now (each one is tracked either way)."""
        cfg = self.config
        # Where each block is requested later in this batch: a hint for it would come too late.
        last_in_batch = {(a.table, a.key): i for i, a in enumerate(accesses)}
        hints: list[Hint] = []
        # Best first (each hint is one fetch, so its score is its benefit per fetch): a budget that runs out
        # within the batch drops the least likely ones.
        for j in sorted(range(len(pending)), key=lambda j: -scores[j]):
            (i, a, c), s = pending[j], scores[j]
            if s < cfg.score_threshold:
                continue
            if last_in_batch.get((c.table, c.key), -1) > i:
                # Already requested after this access: the prediction was right but too late to send;
                # it still counts for the threshold (as an unsent candidate), never as a sent hint.
                later = next(b for b in accesses[i + 1:] if (b.table, b.key) == (c.table, c.key))
                self._record([Outcome(s, False, later.time - a.time <= cfg.horizon_s, c.size, c.features)],
                             later.time)
                continue
            send = self._may_send(c, s, now)
            self.tracker.add(c.table, c.key, s, send, c.size, a.time, cfg.horizon_s, c.features)
            if send:
                self.sent += 1
                self.metrics.hints_sent.labels(c.table).inc()
                hints.append(Hint(c.table, c.key, s, c.size))
        return hints

    def _may_send(self, c: Candidate, score: float, now: float) -> bool:
        """Whether a candidate over the threshold is sent: over the feedback threshold, not already hinted,
        and within the request and byte budgets (a budget refusal is counted)."""
        if score < self.feedback.threshold or self.tracker.is_pending_sent(c.table, c.key):
            return False
        if not self.hint_bucket.take(1, now, self.feedback.budget_factor):
            self.metrics.hints_dropped.labels("requests_budget").inc()
            return False
        if not self.byte_bucket.take(max(c.size, 1), now, self.feedback.budget_factor):
            self.metrics.hints_dropped.labels("bytes_budget").inc()
            return False
        return True

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

