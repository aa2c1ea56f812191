"""The predictor's settings (`predictor.json`, written by the PrefetchPolicy controller), hot-reloaded."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .scorers import MODEL_KINDS

log = logging.getLogger(__name__)


# The PrefetchPolicy's model names: `successor` is the counting baseline, `learned` the trained ranker.
MODEL_ALIASES = {"successor": "stats", "learned": "gbm"}


class ConfigError(ValueError):
    """predictor.json holds a value the predictor cannot use."""


@dataclass(frozen=True)
class KeyPrefetchConfig:
    """`keyPrefetch` of predictor.json: hints for table keys (the cache unwraps them ahead of need)."""

    enabled: bool = False
    score_threshold: float = 0.3
    max_keys_per_second: float = 50.0


@dataclass(frozen=True)
class PredictorConfig:
    """Parsed predictor.json; defaults are what runs without a PrefetchPolicy file (prefetching off)."""

    enabled: bool = False
    model: str = "auto"
    horizon_s: float = 10.0
    score_threshold: float = 0.5
    hints_per_second: float = 200.0
    bytes_per_second: float = 64 * 1024 * 1024
    feedback_enabled: bool = True
    target_precision: float = 0.5
    feedback_window: int = 200
    feedback_window_s: float | None = None  # set: adjust once per this many seconds instead of per count
    block_bytes: int = 512
    max_streams: int = 32
    poll_interval_s: float = 1.0
    retrain_interval_s: float = 300.0
    history_window_s: float | None = None  # set: train only on accesses this recent
    min_train_accesses: int = 2000
    max_log_accesses: int = 200_000
    forecast_window_s: float = 60.0
    forecast_windows: int = 5
    key_prefetch: KeyPrefetchConfig = field(default_factory=KeyPrefetchConfig)
    extra: dict[str, Any] = field(default_factory=dict)


def _num(obj: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = obj.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise ConfigError(f"{key} must be a number in [{lo}, {hi}], got {v!r}")
    return float(v)


def _obj(obj: dict[str, Any], key: str) -> dict[str, Any]:
    v = obj.get(key, {})
    if not isinstance(v, dict):
        raise ConfigError(f"{key} must be an object")
    return v


def _bool(obj: dict[str, Any], key: str, default: bool) -> bool:
    v = obj.get(key, default)
    if not isinstance(v, bool):
        raise ConfigError(f"{key} must be true or false, got {v!r}")
    return v


def _positive(obj: dict[str, Any], key: str, default: float, hi: float) -> float:
    v = obj.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= hi:
        raise ConfigError(f"{key} must be a number in (0, {hi}], got {v!r}")
    return float(v)


def parse_key_prefetch(raw: dict[str, Any]) -> KeyPrefetchConfig:
    """Validate the `keyPrefetch` object; bad values raise ConfigError naming the field."""
    kp = _obj(raw, "keyPrefetch")
    d = KeyPrefetchConfig()
    try:
        return KeyPrefetchConfig(
            enabled=_bool(kp, "enabled", d.enabled),
            score_threshold=_num(kp, "scoreThreshold", d.score_threshold, 0.0, 1.0),
            max_keys_per_second=_positive(kp, "maxKeysPerSecond", d.max_keys_per_second, 1e6),
        )
    except ConfigError as exc:
        raise ConfigError(f"keyPrefetch.{exc}") from None


def parse_config(raw: Any) -> PredictorConfig:
    """Validate a predictor.json object; unknown keys are ignored, bad values raise ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError("predictor.json must hold a JSON object")
    d = PredictorConfig()
    model = raw.get("model", d.model)
    model = MODEL_ALIASES.get(model, model) if isinstance(model, str) else model
    if model not in ("auto", *MODEL_KINDS):
        raise ConfigError(f"model must be one of auto, successor, learned, {', '.join(MODEL_KINDS)}; got {model!r}")
    # `budget` is the PrefetchPolicy's spelling; `budgets` / `hintsPerSecond` are accepted as well.
    budgets = {**_obj(raw, "budgets"), **_obj(raw, "budget")}
    if "requestsPerSecond" in budgets:
        budgets["hintsPerSecond"] = budgets["requestsPerSecond"]
    fb, fc, tr = _obj(raw, "feedback"), _obj(raw, "forecast"), _obj(raw, "training")
    retrain = _num(raw, "retrainIntervalSeconds", d.retrain_interval_s, 1, 86400 * 7)
    return replace(
        d,
        enabled=_bool(raw, "enabled", True),
        model=model,
        horizon_s=_num(raw, "horizonSeconds", d.horizon_s, 0.1, 86400),
        score_threshold=_num(raw, "scoreThreshold", d.score_threshold, 0.0, 1.0),
        hints_per_second=_num(budgets, "hintsPerSecond", d.hints_per_second, 0, 1e6),
        bytes_per_second=_num(budgets, "bytesPerSecond", d.bytes_per_second, 0, 1e12),
        feedback_enabled=_bool(fb, "enabled", d.feedback_enabled),
        target_precision=_num(fb, "targetPrecision", d.target_precision, 0.0, 1.0),
        feedback_window=int(_num(fb, "window", d.feedback_window, 10, 1e6)),
        feedback_window_s=_num(fb, "windowSeconds", 0, 0, 86400 * 7) or None,
        block_bytes=int(_num(raw, "blockBytes", d.block_bytes, 1, 1 << 30)),
        max_streams=int(_num(raw, "maxStreams", d.max_streams, 1, 4096)),
        poll_interval_s=_num(raw, "pollIntervalSeconds", d.poll_interval_s, 0.05, 3600),
        retrain_interval_s=_num(tr, "intervalSeconds", retrain, 1, 86400 * 7),
        history_window_s=_num(tr, "historyWindowSeconds", 0, 0, 86400 * 365) or None,
        min_train_accesses=int(_num(raw, "minTrainAccesses", d.min_train_accesses, 20, 1e8)),
        max_log_accesses=int(_num(raw, "maxLogAccesses", d.max_log_accesses, 100, 1e8)),
        forecast_window_s=_num(fc, "windowSeconds", d.forecast_window_s, 1, 86400),
        forecast_windows=int(_num(fc, "windows", d.forecast_windows, 1, 1000)),
        key_prefetch=parse_key_prefetch(raw),
        extra={},
    )


class ConfigFile:
    """Re-reads the mounted file when kubelet swaps it; a bad file keeps the previous settings."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.config = PredictorConfig()
        self.error: str | None = None
        self._stamp: tuple[Any, ...] | None = None

    def _fingerprint(self) -> tuple[Any, ...] | None:
        if self.path is None:
            return None
        try:
            # The ..data symlink target changes on every ConfigMap update, the file stat on a plain write.
            real = os.path.realpath(self.path)
            st = os.stat(real)
        except OSError:
            return ("missing",)
        return (real, st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self) -> bool:
        """Load the file if it changed; True if the settings changed."""
        stamp = self._fingerprint()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        path = self.path
        if path is None or stamp == ("missing",):
            # No file: no PrefetchPolicy targets this ShardSet, so the cache runs without prefetching.
            changed = self.config != PredictorConfig()
            self.config, self.error = PredictorConfig(), None
            return changed
        try:
            new = parse_config(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            self.error = f"{self.path}: {exc}"
            log.error("predictor config not applied, keeping previous settings: %s", self.error)
            return False
        changed = new != self.config
        self.config, self.error = new, None
        if changed:
            log.info("predictor config loaded: model=%s horizon=%ss threshold=%s keyPrefetch=%s", new.model,
                     new.horizon_s, new.score_threshold, "on" if new.key_prefetch.enabled else "off")
        return changed
