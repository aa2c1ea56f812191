"""The model lifecycle both predictor pipelines share: load at start, train in the background, save, swap in.

The block `Predictor` (engine.py) and the table-key `KeyPredictor` (keys.py) differ in what they learn from and
what they send; how a model is loaded, retrained, saved and recalibrated is the same and lives here.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import Counter

from .access import Access
from .config import PredictorConfig
from .feedback import FeedbackController, Outcome
from .metrics import PredictorMetrics
from .modelstore import MODEL_FILE, ModelLoadError, load_model, save_model
from .scorers import StatsScorer

log = logging.getLogger(__name__)

# After a failed training, not the whole retrain interval: a young log (too few finished horizons) soon has enough.
RETRY_S = 10.0


class TrainedPipeline:
    """Model state of one pipeline and its lifecycle; subclasses implement the hooks marked below."""

    model_file = MODEL_FILE
    what = "model"  # in log lines: "model" or "key model"
    disables = "prefetching"  # what runs without a model
    thread_name = "predictor-train"
    log: deque[Access]
    feedback: FeedbackController

    def __init__(self, data_dir: Path, config: PredictorConfig | None = None, executor: Executor | None = None,
                 metrics: PredictorMetrics | None = None) -> None:
        self.data_dir = data_dir
        self.config = config or PredictorConfig()
        self.metrics = metrics or PredictorMetrics()
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix=self.thread_name)
        self._lock = threading.Lock()
        self.scorer: Any = None
        self.model_info: dict[str, Any] = {}
        self.model_error: str | None = None
        self.training: Future[Any] | None = None
        self.last_train: float = -math.inf
        self.retry_at: float = -math.inf
        self._reset_state()

    # -- hooks -------------------------------------------------------------------------------------------
    def _reset_state(self) -> None:
        """(Re)create the online state: generator, log, tracker, feedback, buckets."""
        raise NotImplementedError

    def _restore(self, loaded: Any) -> Any:
        """Install what a loaded model file holds besides the scorer; return the scorer (ModelLoadError if unfit)."""
        return loaded

    def _train(self, snapshot: list[Access], now: float | None) -> tuple[Any, Any, dict[str, Any]]:
        """Train on a snapshot: (what to save, the scorer to swap in, info)."""
        raise NotImplementedError

    def _wants_training(self) -> bool:
        """False while this pipeline is switched off (the log is kept, no CPU is spent)."""
        raise NotImplementedError

    def _publish_model(self) -> None:
        """Export the model gauges."""

    def _trainings(self) -> Counter:
        return self.metrics.trainings

    def _trained(self, info: dict[str, Any]) -> None:
        """Called after a successful training (extra metrics)."""

    # -- lifecycle ---------------------------------------------------------------------------------------
    def load(self) -> bool:
        """Load the saved model; on any problem log why and send nothing until a new one is trained."""
        try:
            loaded, header = load_model(self.data_dir, self.model_file)
            with self._lock:
                scorer = self._restore(loaded)
        except ModelLoadError as exc:
            with self._lock:
                self.scorer, self.model_error = None, str(exc)
            log.warning("%s; %s disabled until a new %s is trained", exc, self.disables, self.what)
            self._publish_model()
            return False
        with self._lock:
            self.scorer, self.model_info, self.model_error = scorer, header, None
            self.last_train = float(header.get("saved", time.time()))
        log.info("loaded %s %s from %s", getattr(scorer, "kind", "?"), self.what, self.data_dir)
        self._publish_model()
        return True

    def train_now(self, snapshot: list[Access] | None = None, now: float | None = None) -> dict[str, Any]:
        """Train on a log snapshot (default: the log now), save, and swap the scorer in (blocking)."""
        snapshot = list(self.log) if snapshot is None else snapshot
        t0 = time.monotonic()
        try:
            saved, scorer, info = self._train(snapshot, now)
        except Exception as exc:
            self._trainings().labels("error").inc()
            self.retry_at = time.time() + RETRY_S
            log.warning("%s training failed (%s); keeping the current one, retrying in %ss", self.what, exc, RETRY_S)
            raise
        info["seconds"] = round(time.monotonic() - t0, 3)
        info["model"] = scorer.kind
        try:
            save_model(self.data_dir, saved, {"info": info}, self.model_file)
        except OSError as exc:
            log.error("could not save the %s to %s: %s (it is used, but will not survive a restart)",
                      self.what, self.data_dir, exc.strerror)
        with self._lock:
            # Only the scorer is swapped in: the online state has seen more than the snapshot.
            self.scorer, self.model_info, self.model_error = scorer, info, None
        self._trainings().labels("ok").inc()
        self._trained(info)
        self._publish_model()
        log.info("trained %s %s on %d accesses (%d rows) in %.1fs", scorer.kind, self.what, len(snapshot),
                 info["rows"], info["seconds"])
        return info

    def maybe_train(self, now: float | None = None, force: bool = False) -> Future[Any] | None:
        """Start a background training if due (no model yet, or the retrain interval passed)."""
        now = time.time() if now is None else now
        cfg = self.config
        if self.training is not None and not self.training.done():
            return None
        if len(self.log) < cfg.min_train_accesses:
            return None
        if not force and not self._wants_training():
            return None
        if not force and self.scorer is not None and now - self.last_train < cfg.retrain_interval_s:
            return None
        if not force and now < self.retry_at:
            return None
        self.last_train = now
        # Snapshot here, on the caller's thread: observe() may append to the log while the model trains.
        snapshot = list(self.log)
        if cfg.history_window_s is not None:
            snapshot = [a for a in snapshot if a.time >= now - cfg.history_window_s]
        self.training = self._executor.submit(self.train_now, snapshot, now)
        return self.training

    def _restart_or_retune(self, old: PredictorConfig, restart: bool, base_threshold: float) -> bool:
        """Apply new settings: a restart keeps the log and rebuilds the online state, else the feedback is
        retuned in place; a new model kind retrains. Returns ``restart``."""
        cfg = self.config
        if restart:
            history = list(self.log)
            self._reset_state()
            for a in history[-cfg.max_log_accesses:]:
                self.log.append(a)
        else:
            fb = self.feedback
            fb.base_threshold, fb.target_precision = base_threshold, cfg.target_precision
            fb.window, fb.enabled, fb.window_s = cfg.feedback_window, cfg.feedback_enabled, cfg.feedback_window_s
            fb.threshold = max(fb.threshold, base_threshold) if cfg.feedback_enabled else base_threshold
        if old.model != cfg.model and self.scorer is not None:
            self.maybe_train(force=True)
        return restart

    def _recalibrate(self, outs: list[Outcome]) -> None:
        scorer = self.scorer
        if isinstance(scorer, StatsScorer) and self.config.feedback_enabled:
            # The counting model recalibrates online from every resolved candidate.
            rows = [(o.features, o.used) for o in outs if o.features is not None]
            if rows:
                scorer.update(np.vstack([f for f, _ in rows]), np.array([used for _, used in rows]))

    def close(self) -> None:
        """Stop the training executor if we own it (waits for a running training)."""
        if self._own_executor:
            self._executor.shutdown(wait=True, cancel_futures=True)
