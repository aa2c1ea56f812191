"""The table-key pipeline: which tables' keys will be needed soon, so the cache can unwrap them ahead of need.

The block pipeline's parts on another view of the same access log: every access becomes an access
of one pseudo-table whose keys are table names, so the candidate generator's successor statistics
(counted per client) become "after table A this client reads table B". Only a change of table
(per client) is a step of that sequence; every read still counts for the feedback (a hinted table
read within the horizon was used). Glue and I/O (the model file) live here; the HTTP side is in
`predictor/main.py`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict, deque
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import Counter

from .access import Access
from .config import PredictorConfig
from .engine import feedback_controller, fit_candidates
from .features import CandidateGenerator, GeneratorSettings, replay_candidates
from .feedback import Outcome, OutcomeTracker, TokenBucket
from .lifecycle import TrainedPipeline
from .metrics import PredictorMetrics
from .modelstore import KEY_MODEL_FILE, ModelLoadError

log = logging.getLogger(__name__)
PSEUDO = "keys"  # the one pseudo-table whose keys are table names
_MAX_CLIENTS = 65536
# Table names are not block addresses: a numeric suffix gives at most a one-step "next table" guess,
# and few runs are worth tracking; the number of tables bounds the successor tables.
KEY_SETTINGS = GeneratorSettings(block_bytes=1, max_streams=8, max_keys=65536)


@dataclass(frozen=True, slots=True)
class KeyHint:
    """One key prefetch hint: unwrap this table's key ahead of need."""

    table: str
    score: float

    def to_json(self) -> dict[str, Any]:
        """Body item of `POST /v1/prefetch/keys`."""
        return {"table": self.table, "score": round(self.score, 6)}


def table_access(a: Access) -> Access:
    """The access as one of the pseudo-table whose keys are tables."""
    return Access(time=a.time, table=PSEUDO, key=a.table, size=0, client=a.client, hit=a.hit, seq=a.seq)


class TableSteps:
    """Per client, whether an access starts a new table (repeated reads of one table are one step)."""

    def __init__(self) -> None:
        self._last: OrderedDict[str, str] = OrderedDict()

    def fresh(self, a: Access) -> bool:
        """True if this client's previous access was to another table (or there was none)."""
        prev = self._last.get(a.client)
        self._last[a.client] = a.key
        self._last.move_to_end(a.client)
        while len(self._last) > _MAX_CLIENTS:
            self._last.popitem(last=False)
        return prev != a.key


@dataclass
class KeyModel:
    """What is saved: the scorer and the successor statistics it was trained with (up to `until`)."""

    scorer: Any
    generator: CandidateGenerator
    until: float

    @property
    def kind(self) -> str:
        """The scorer's kind (stats, gbm, logreg)."""
        return str(getattr(self.scorer, "kind", "?"))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probability that each candidate table is read within the horizon."""
        return np.asarray(self.scorer.predict(x))


def train_key_model(accesses: list[Access], cfg: PredictorConfig, now: float | None = None) -> tuple[KeyModel,
                                                                                                       dict[str, Any]]:
    """Fit the table-key scorer on a snapshot of pseudo-table accesses (`table_access`); pure apart from CPU."""
    gen = CandidateGenerator(KEY_SETTINGS)
    origin, keys, feats = replay_candidates(gen, accesses, keep=TableSteps().fresh)
    if not feats:
        raise ValueError("the log produced no table candidates (no client has read two tables in turn)")
    scorer, info = fit_candidates(accesses, origin, keys, feats, cfg, now)
    return KeyModel(scorer, gen, accesses[-1].time), info


class KeyPredictor(TrainedPipeline):
    """Online state of the table-key pipeline (keyPrefetch in predictor.json)."""

    model_file = KEY_MODEL_FILE
    what = "key model"
    disables = "key prefetching"
    thread_name = "key-predictor-train"

    def __init__(self, data_dir: Path, config: PredictorConfig | None = None, executor: Executor | None = None,
                 metrics: PredictorMetrics | None = None) -> None:
        self.sent = self.used = self.wasted = 0
        super().__init__(data_dir, config, executor, metrics)

    def _reset_state(self) -> None:
        cfg, kp = self.config, self.config.key_prefetch
        self.generator = CandidateGenerator(KEY_SETTINGS)
        self.steps = TableSteps()
        self.until = -math.inf  # accesses up to this time are already in a restored generator
        self.log: deque[Access] = deque(maxlen=cfg.max_log_accesses)
        self.tracker = OutcomeTracker()
        self.feedback = feedback_controller(cfg, kp.score_threshold)
        self.bucket = TokenBucket(kp.max_keys_per_second, max(1.0, kp.max_keys_per_second))

    @property
    def active(self) -> bool:
        """Key hints flow only with prefetching on and keyPrefetch enabled."""
        return self.config.enabled and self.config.key_prefetch.enabled

    # -- model (lifecycle.TrainedPipeline hooks) ------------------------------------------------------
    def _restore(self, loaded: Any) -> Any:
        # The file holds the scorer and the successor statistics it was trained with.
        if not isinstance(loaded, KeyModel):
            raise ModelLoadError(f"model file {self.data_dir / KEY_MODEL_FILE} holds no table-key model")
        self.generator, self.until = loaded.generator, loaded.until
        return loaded.scorer

    def _train(self, snapshot: list[Access], now: float | None) -> tuple[Any, Any, dict[str, Any]]:
        if not snapshot:
            raise ValueError("the log is empty")
        model, info = train_key_model(snapshot, self.config, now)
        return model, model.scorer, info

    def _trainings(self) -> Counter:
        return self.metrics.key_trainings

    def _wants_training(self) -> bool:
        return self.active  # key prefetching off: keep the log, spend no CPU

    def apply_config(self, cfg: PredictorConfig) -> None:
        """Take new settings; a new horizon or log size restarts the online state, a new model kind retrains."""
        old, self.config = self.config, cfg
        kp = cfg.key_prefetch
        restart = (old.max_log_accesses, old.horizon_s) != (cfg.max_log_accesses, cfg.horizon_s)
        if not self._restart_or_retune(old, restart, kp.score_threshold) and (
                kp.max_keys_per_second != old.key_prefetch.max_keys_per_second):
            self.bucket = TokenBucket(kp.max_keys_per_second, max(1.0, kp.max_keys_per_second))

    # -- online --------------------------------------------------------------------------------------
    def _record(self, outs: list[Outcome], now: float) -> None:
        if not outs:
            return
        self.feedback.record(outs, now)
        for o in outs:
            if not o.sent:
                continue
            if o.used:
                self.used += 1
                self.metrics.key_hints_used.inc()
            else:
                self.wasted += 1
                self.metrics.key_hints_wasted.inc()
        self._recalibrate(outs)

    def observe(self, accesses: list[Access], now: float | None = None) -> list[KeyHint]:
        """Consume block accesses (oldest first); return the key hints to send now."""
        now = time.time() if now is None else now
        horizon = self.config.horizon_s
        pending: list[tuple[int, Access, Any]] = []
        # Where each table is read later in this batch: a hint for it would come too late.
        last_in_batch = {a.table: i for i, a in enumerate(accesses)}
        for i, a in enumerate(accesses):
            self._record(self.tracker.expire(a.time), a.time)
            self._record(self.tracker.access(PSEUDO, a.table, a.time), a.time)
            ta = table_access(a)
            self.log.append(ta)
            if not self.steps.fresh(ta) or ta.time <= self.until:
                continue  # same table again, or already counted in the restored statistics
            for c in self.generator.observe(ta):
                if a.time + horizon >= now:  # a backlog's candidates are too late to help
                    pending.append((i, a, c))
        self._record(self.tracker.expire(now - horizon), now)
        hints = (self._select(accesses, last_in_batch, pending, now)
                 if pending and self.scorer is not None and self.active else [])
        self._publish()
        return hints

    def _select(self, accesses: list[Access], last_in_batch: dict[str, int], pending: list[tuple[int, Access, Any]],
                now: float) -> list[KeyHint]:
        kp, horizon = self.config.key_prefetch, self.config.horizon_s
        scores = self.scorer.predict(np.vstack([c.features for _, _, c in pending]))
        hints: list[KeyHint] = []
        for (i, a, c), s in zip(pending, scores.tolist(), strict=True):
            if s < kp.score_threshold:
                continue
            if last_in_batch.get(c.key, -1) > i:
                # Read again later in this batch: right, but too late to send; counts as an unsent candidate.
                later = next(b for b in accesses[i + 1:] if b.table == c.key)
                self._record([Outcome(s, False, later.time - a.time <= horizon, 0, c.features)], later.time)
                continue
            send = s >= self.feedback.threshold
            if send and self.tracker.is_pending_sent(PSEUDO, c.key):
                # Hinted within the horizon already: the cache holds (or is fetching) the key.
                self.metrics.key_hints_dropped.labels("duplicate").inc()
                send = False
            if send and not self.bucket.take(1, now, self.feedback.budget_factor):
                self.metrics.key_hints_dropped.labels("rate").inc()
                send = False
            self.tracker.add(PSEUDO, c.key, s, send, 0, a.time, horizon, c.features)
            if send:
                self.sent += 1
                self.metrics.key_hints_sent.inc()
                hints.append(KeyHint(c.key, s))
        return hints

    def _publish(self) -> None:
        m = self.metrics
        resolved = self.used + self.wasted
        m.key_precision.set(self.used / resolved if resolved else math.nan)
        m.key_threshold.set(self.feedback.threshold)
        m.key_budget_factor.set(self.feedback.budget_factor)
        m.key_model_loaded.set(1 if self.scorer is not None else 0)

    _publish_model = _publish

    def status(self) -> dict[str, Any]:
        """`keyHints` of `GET /v1/status`."""
        resolved = self.used + self.wasted
        return {
            "enabled": self.active,
            "model": getattr(self.scorer, "kind", None),
            "modelError": self.model_error,
            "training": self.training is not None and not self.training.done(),
            "threshold": self.feedback.threshold,
            "budgetFactor": self.feedback.budget_factor,
            "sent": self.sent,
            "used": self.used,
            "wasted": self.wasted,
            "precision": self.used / resolved if resolved else None,
        }

