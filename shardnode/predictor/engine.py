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

from .access import Access, offset_key
from .config import PredictorConfig
from .features import FEATURE_NAMES, KIND_SEQ1, Candidate, CandidateGenerator, GeneratorSettings, replay_candidates
from .feedback import FeedbackController, Outcome, OutcomeTracker, TokenBucket
from .forecast import RateForecaster
from .labels import label_candidates, resolvable
from .lifecycle import TrainedPipeline
from .metrics import PredictorMetrics
from .ranking import range_length, tail_threshold
from .scorers import fit_auto, make_scorer

log = logging.getLogger(__name__)
SHARD = "*"  # forecast series of the whole shard
RUN_LEN, GAP = FEATURE_NAMES.index("run_len"), FEATURE_NAMES.index("gap_log")
Block = tuple[str, float]  # a block key and the probability that it is read within the horizon


@dataclass(frozen=True, slots=True)
class Hint:
    """One prefetch hint for the cache, one backend fetch: a block, or a run's read-ahead range."""

    table: str
    key: str
    score: float
    size: int  # bytes of each block (the logged size of the read that suggested it)
    read_ahead: tuple[Block, ...] = ()  # the blocks after ``key`` fetched with it

    def keys(self) -> list[str]:
        """Every block this hint fetches, ``key`` first."""
        return [self.key, *(k for k, _ in self.read_ahead)]

    def to_json(self) -> dict[str, Any]:
        """Body item of `POST /v1/prefetch` (a cache without ranges reads only table, key and score)."""
        doc: dict[str, Any] = {"table": self.table, "key": self.key, "score": round(self.score, 6)}
        if self.read_ahead:
            doc["readAhead"] = [{"key": k, "score": round(p, 6)} for k, p in self.read_ahead]
        return doc


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
        """The scored candidates over the threshold that become hints now, one per fetch (each block is tracked
        either way)."""
        cfg = self.config
        # Where each block is requested later in this batch: a hint for it would come too late.
        last_in_batch = {(a.table, a.key): i for i, a in enumerate(accesses)}
        plans: list[tuple[Access, Candidate, list[Block], list[Block]]] = []
        covered: set[tuple[str, str]] = set()
        # A run's next block first: its read-ahead range covers the run's second-next block too.
        for j in sorted(range(len(pending)), key=lambda j: (pending[j][2].kind != KIND_SEQ1, -scores[j])):
            (i, a, c), s = pending[j], scores[j]
            if s < cfg.score_threshold or (c.table, c.key) in covered:
                continue
            if last_in_batch.get((c.table, c.key), -1) > i:
                self._too_late(accesses, i, a, c, s)
                continue
            # Read-ahead blocks this batch already requests are left out: the later access proposes what follows.
            blocks = [(k, p) for k, p in self._plan(c, s) if last_in_batch.get((c.table, k), -1) <= i]
            covered.update((c.table, k) for k, _ in blocks)
            plans.append((a, c, blocks, self._worth_fetching(c.table, blocks)))
        # Best first by expected blocks read per fetch: a budget that runs out within the batch drops the least useful.
        plans.sort(key=lambda plan: -sum(p for _, p in plan[3]))
        return [hint for a, c, blocks, fetch in plans if (hint := self._offer(a, c, blocks, fetch, now)) is not None]

    def _too_late(self, accesses: list[Access], i: int, a: Access, c: Candidate, score: float) -> None:
        """A candidate requested after access ``i`` of this batch: right but too late to send; it still counts for
        the threshold (as an unsent candidate), never as a sent hint."""
        later = next(b for b in accesses[i + 1:] if (b.table, b.key) == (c.table, c.key))
        self._record([Outcome(score, False, later.time - a.time <= self.config.horizon_s, c.size, c.features)],
                     later.time)

    def _plan(self, c: Candidate, score: float) -> list[Block]:
        """The blocks one fetch for this candidate covers, with their use probabilities: a run's next block becomes
        a read-ahead range (block i read with about score ** i, `ranking.range_length`), anything else stays one."""
        if c.kind != KIND_SEQ1:
            return [(c.key, score)]
        cfg = self.config
        k = range_length(score, float(c.features[RUN_LEN]), cfg.score_threshold,
                         tail_threshold(self.feedback.max_waste_share))
        gap = math.expm1(float(c.features[GAP])) / 1000.0  # the run's last step in seconds (the feature's inverse)
        if gap > 0:
            # The score is "read within the horizon": blocks the run reaches only later, at its pace, would be waste.
            k = min(k, max(1, int(cfg.horizon_s / gap)))
        step = max(1, -(-c.size // cfg.block_bytes)) if c.size > 0 else 1
        blocks = [(c.key, score)]
        for i in range(1, k):
            nxt = offset_key(c.key, i * step)
            if nxt is None:
                break
            blocks.append((nxt, score ** (i + 1)))
        return blocks

    def _worth_fetching(self, table: str, blocks: list[Block]) -> list[Block]:
        """The blocks of a plan to fetch now: over the feedback threshold and not hinted already; none when fewer
        than half of those are new (a range is re-issued once half of it is used up, not for every block read)."""
        want = [(k, p) for k, p in blocks if p >= self.feedback.threshold]
        new = [(k, p) for k, p in want if not self.tracker.is_pending_sent(table, k)]
        return new if new and len(new) >= max(1, len(want) // 2) else []

    def _offer(self, a: Access, c: Candidate, blocks: list[Block], fetch: list[Block], now: float) -> Hint | None:
        """Track a plan's blocks and send its fetch as one hint if the budgets allow."""
        cfg = self.config
        send = bool(fetch) and self._may_send(len(fetch) * max(c.size, 1), now)
        sent = {k for k, _ in fetch} if send else set()
        for n, (k, p) in enumerate(blocks):
            # Only the candidate itself was scored on its features: read-ahead outcomes must not recalibrate them.
            self.tracker.add(c.table, k, p, k in sent, c.size, a.time, cfg.horizon_s, c.features if n == 0 else None)
        if not send:
            return None
        self.sent += len(fetch)
        self.metrics.hints_sent.labels(c.table).inc(len(fetch))
        return Hint(c.table, fetch[0][0], fetch[0][1], c.size, tuple(fetch[1:]))

    def _may_send(self, size: int, now: float) -> bool:
        """Whether one fetch of ``size`` bytes is within the request and byte budgets (a refusal is counted)."""
        if not self.hint_bucket.take(1, now, self.feedback.budget_factor):
            self.metrics.hints_dropped.labels("requests_budget").inc()
            return False
        if not self.byte_bucket.take(size, now, self.feedback.budget_factor):
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

