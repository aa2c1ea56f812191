"""The table-key pipeline: which tables' keys will be needed soon, so the cache can unwrap them ahead of need.

The block pipeline's parts on another view of the same access log: every access becomes an access
of one pseudo-table whose keys are table names, so the candidate generator's successor statistics
(counted per client) become "after table A this client reads table B". Only a change of table
(per client) is a step of that sequence; every read still counts for the feedback (a hinted table
read within the horizon was used). Glue and I/O (the model file) live here; the HTTP side is in
`predictor_main`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .access import Access
from .config import PredictorConfig
from .engine import fit_candidates
from .features import CandidateGenerator, GeneratorSettings
from .feedback import FeedbackController, Outcome, OutcomeTracker, TokenBucket
from .metrics import PredictorMetrics
from .modelstore import KEY_MODEL_FILE, ModelLoadError, load_model, save_model
from .scorers import StatsScorer

log = logging.getLogger(__name__)
PSEUDO = "keys"  # the one pseudo-table whose keys are table names
_RETRY_S = 10.0
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
    steps = TableSteps()
    origin: list[int] = []
    keys: list[tuple[str, str]] = []
    feats: list[np.ndarray] = []
    for i, a in enumerate(accesses):
        if not steps.fresh(a):
            continue
        for c in gen.observe(a):
            origin.append(i)
            keys.append((c.table, c.key))
            feats.append(c.features)
    if not feats:
        raise ValueError("the log produced no table candidates (no client has read two tables in turn)")
    scorer, info = fit_candidates(accesses, origin, keys, feats, cfg, now)
    return KeyModel(scorer, gen, accesses[-1].time), info


class KeyPredictor:
    """Online state of the table-key pipeline (keyPrefetch in predictor.json)."""

    def __init__(self, data_dir: Path, config: PredictorConfig | None = None, executor: Executor | None = None,
                 metrics: PredictorMetrics | None = None) -> None:
        self.data_dir = data_dir
        self.config = config or PredictorConfig()
        self.metrics = metrics or PredictorMetrics()
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="key-predictor-train")
        self._lock = threading.Lock()
        self.scorer: Any = None
        self.model_info: dict[str, Any] = {}
        self.model_error: str | None = None
        self.training: Future[Any] | None = None
        self.last_train: float = -math.inf
        self.retry_at: float = -math.inf
        self.sent = self.used = self.wasted = 0
        self._reset_state()

    def _reset_state(self) -> None:
        cfg, kp = self.config, self.config.key_prefetch
        self.generator = CandidateGenerator(KEY_SETTINGS)
        self.steps = TableSteps()
        self.until = -math.inf  # accesses up to this time are already in a restored generator
        self.log: deque[Access] = deque(maxlen=cfg.max_log_accesses)
        self.tracker = OutcomeTracker()
        self.feedback = FeedbackController(base_threshold=kp.score_threshold, target_precision=cfg.target_precision,
                                           window=cfg.feedback_window, enabled=cfg.feedback_enabled,
                                           window_s=cfg.feedback_window_s)
        self.bucket = TokenBucket(kp.max_keys_per_second, max(1.0, kp.max_keys_per_second))

    @property
    def active(self) -> bool:
        """Key hints flow only with prefetching on and keyPrefetch enabled."""
        return self.config.enabled and self.config.key_prefetch.enabled

    # -- model ---------------------------------------------------------------------------------------
    def load(self) -> bool:
        """Load the saved key model (scorer and successor statistics); on any problem log why and hint nothing."""
        try:
            model, header = load_model(self.data_dir, KEY_MODEL_FILE)
            if not isinstance(model, KeyModel):
                raise ModelLoadError(f"model file {self.data_dir / KEY_MODEL_FILE} holds no table-key model")
        except ModelLoadError as exc:
            with self._lock:
                self.scorer, self.model_error = None, str(exc)
            log.warning("%s; key prefetching disabled until a new key model is trained", exc)
            self._publish()
            return False
        with self._lock:
            self.scorer, self.model_info, self.model_error = model.scorer, header, None
            self.generator, self.until = model.generator, model.until
            self.last_train = float(header.get("saved", time.time()))
        log.info("loaded %s key model from %s", model.kind, self.data_dir)
        self._publish()
        return True

    def train_now(self, snapshot: list[Access] | None = None, now: float | None = None) -> dict[str, Any]:
        """Train on a snapshot of the pseudo-table log (default: the log now), save, swap the scorer in."""
        snapshot = list(self.log) if snapshot is None else snapshot
        t0 = time.monotonic()
        try:
            if not snapshot:
                raise ValueError("the log is empty")
            model, info = train_key_model(snapshot, self.config, now)
        except Exception as exc:
            self.metrics.key_trainings.labels("error").inc()
            self.retry_at = time.time() + _RETRY_S
            log.warning("key model training failed (%s); keeping the current one, retrying in %ss", exc, _RETRY_S)
            raise
        info["seconds"] = round(time.monotonic() - t0, 3)
        info["model"] = model.kind
        try:
            save_model(self.data_dir, model, {"info": info}, KEY_MODEL_FILE)
        except OSError as exc:
            log.error("could not save the key model to %s: %s (it is used, but will not survive a restart)",
                      self.data_dir, exc.strerror)
        with self._lock:
            # The online generator has seen more than the snapshot; only the scorer is swapped in.
            self.scorer, self.model_info, self.model_error = model.scorer, info, None
        self.metrics.key_trainings.labels("ok").inc()
        self._publish()
        log.info("trained %s key model on %d accesses (%d rows) in %.1fs", model.kind, len(snapshot), info["rows"],
                 info["seconds"])
        return info

    def maybe_train(self, now: float | None = None, force: bool = False) -> Future[Any] | None:
        """Start a background training if due (no model yet, or the retrain interval passed)."""
        now = time.time() if now is None else now
        cfg = self.config
        if self.training is not None and not self.training.done():
            return None
        if len(self.log) < cfg.min_train_accesses:
            return None
        if not force and not self.active:
            return None  # key prefetching off: keep the log, spend no CPU
        if not force and self.scorer is not None and now - self.last_train < cfg.retrain_interval_s:
            return None
        if not force and now < self.retry_at:
            return None
        self.last_train = now
        snapshot = list(self.log)
        if cfg.history_window_s is not None:
            snapshot = [a for a in snapshot if a.time >= now - cfg.history_window_s]
        self.training = self._executor.submit(self.train_now, snapshot, now)
        return self.training

    def apply_config(self, cfg: PredictorConfig) -> None:
        """Take new settings; a new horizon or log size restarts the online state, a new model kind retrains."""
        old = self.config
        self.config = cfg
        if (old.max_log_accesses, old.horizon_s) != (cfg.max_log_accesses, cfg.horizon_s):
            history = list(self.log)
            self._reset_state()
            for a in history[-cfg.max_log_accesses:]:
                self.log.append(a)
        else:
            kp, fb = cfg.key_prefetch, self.feedback
            fb.base_threshold, fb.target_precision = kp.score_threshold, cfg.target_precision
            fb.window, fb.enabled, fb.window_s = cfg.feedback_window, cfg.feedback_enabled, cfg.feedback_window_s
            fb.threshold = max(fb.threshold, kp.score_threshold) if cfg.feedback_enabled else kp.score_threshold
            if kp.max_keys_per_second != old.key_prefetch.max_keys_per_second:
                self.bucket = TokenBucket(kp.max_keys_per_second, max(1.0, kp.max_keys_per_second))
        if old.model != cfg.model and self.scorer is not None:
            self.maybe_train(force=True)

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
        scorer = self.scorer
        if isinstance(scorer, StatsScorer) and self.config.feedback_enabled:
            # As for blocks: the counting model recalibrates online from every resolved candidate.
            rows = [o for o in outs if o.features is not None]
            if rows:
                scorer.update(np.vstack([o.features for o in rows]), np.array([o.used for o in rows]))

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

    def close(self) -> None:
        """Stop the training executor if we own it (waits for a running training)."""
        if self._own_executor:
            self._executor.shutdown(wait=True, cancel_futures=True)

