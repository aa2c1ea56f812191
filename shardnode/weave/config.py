"""The weaver's settings: the flags, and ``weave.json`` (docs/weaving.md, "The weaver") parsed strictly — a file that
does not parse is refused as a whole and the settings in force stay; re-read when the mounted ConfigMap changes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chronoshard.shardnode.serving.scaffold import Partitioning

log = logging.getLogger(__name__)

MODES = ("forecast", "weave", "split")
MODELS = ("auto", "linear", "exponential-smoothing", "arima")  # shardnode/forecasting/split.py MODELS
MIN_INTERVAL_SECONDS = 0.05  # tests weave in seconds; a plan's CRD schema asks for far more


class SettingsError(ValueError):
    """weave.json does not parse; the message names the field."""


@dataclass(frozen=True)
class SplitSettings:
    """``split``: when a partition splits (WeavePlan ``spec.split``)."""

    size_bytes: int = 512 * 1024 * 1024
    load_rps: float = 1000.0
    sustained_seconds: float = 600.0
    min_partition_bytes: int | None = None


@dataclass(frozen=True)
class RetentionSettings:
    """``retention``: points kept per partition, and their greatest age."""

    max_snapshots: int = 10
    max_age_seconds: float = 604800.0


@dataclass(frozen=True)
class WeaveSettings:
    """Everything weave.json says, checked."""

    plan: str = ""
    mode: str = "forecast"
    prediction_window_seconds: float = 86400.0
    confidence_threshold: float = 0.75
    split: SplitSettings = field(default_factory=SplitSettings)
    interval_seconds: float = 3600.0
    sample_interval_seconds: float = 60.0
    model: str = "auto"
    retention: RetentionSettings = field(default_factory=RetentionSettings)

    @property
    def weaving(self) -> bool:
        """Modes weave and split build woven snapshots; forecast only forecasts."""
        return self.mode in ("weave", "split")


def _object(doc: Any, where: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(doc, dict):
        raise SettingsError(f"{where} must be a JSON object")
    unknown = set(doc) - allowed
    if unknown:
        raise SettingsError(f"{where}: unknown fields {sorted(unknown)}")
    return doc


def _number(doc: Mapping[str, Any], name: str, where: str, default: float, *, lo: float = 0.0,
            hi: float | None = None, integer: bool = False) -> Any:
    value = doc.get(name)
    value = default if value is None else value  # null: the default, as the operator writes absent fields
    ok = isinstance(value, int | float) and not isinstance(value, bool) and (not integer or isinstance(value, int))
    if not ok or value != value or value < lo or (hi is not None and value > hi):
        bound = f" between {lo:g} and {hi:g}" if hi is not None else f" >= {lo:g}"
        raise SettingsError(f"{where}.{name} must be {'an integer' if integer else 'a number'}{bound}")
    return value


def _choice(doc: Mapping[str, Any], name: str, where: str, default: str, choices: tuple[str, ...]) -> str:
    value = doc.get(name)
    value = default if value is None else value
    if value not in choices:
        raise SettingsError(f"{where}.{name} must be one of {list(choices)}")
    return str(value)


def _split(doc: Any) -> SplitSettings:
    d = _object(doc, "split", {"sizeBytes", "loadRps", "sustainedSeconds", "minPartitionBytes"})
    minimum = d.get("minPartitionBytes")
    return SplitSettings(int(_number(d, "sizeBytes", "split", 512 * 1024 * 1024, lo=1, integer=True)),
                         float(_number(d, "loadRps", "split", 1000.0)),
                         float(_number(d, "sustainedSeconds", "split", 600.0)),
                         None if minimum is None else int(_number(d, "minPartitionBytes", "split", 0, integer=True)))


def _retention(doc: Any) -> RetentionSettings:
    d = _object(doc, "retention", {"maxSnapshots", "maxAgeSeconds"})
    return RetentionSettings(int(_number(d, "maxSnapshots", "retention", 10, lo=1, integer=True)),
                             float(_number(d, "maxAgeSeconds", "retention", 604800.0, lo=1.0)))


TOP_LEVEL = {"plan", "mode", "predictionWindowSeconds", "confidenceThreshold", "split", "intervalSeconds",
             "sampleIntervalSeconds", "model", "retention"}


def parse_settings(doc: Any) -> WeaveSettings:
    """weave.json as WeaveSettings; absent (or null) fields take their defaults, anything else wrong raises."""
    d = _object(doc, "weave.json", TOP_LEVEL)
    plan = d.get("plan") or ""
    if not isinstance(plan, str):
        raise SettingsError("weave.json.plan must be a string <namespace>/<name>")
    interval = float(_number(d, "intervalSeconds", "weave.json", 3600.0, lo=MIN_INTERVAL_SECONDS))
    sample = float(_number(d, "sampleIntervalSeconds", "weave.json", min(60.0, interval), lo=MIN_INTERVAL_SECONDS))
    if sample > interval:
        raise SettingsError("weave.json.sampleIntervalSeconds must be <= intervalSeconds")
    return WeaveSettings(plan=plan, mode=_choice(d, "mode", "weave.json", "forecast", MODES),
                         prediction_window_seconds=float(_number(d, "predictionWindowSeconds", "weave.json", 86400.0,
                                                                 lo=1.0)),
                         confidence_threshold=float(_number(d, "confidenceThreshold", "weave.json", 0.75, hi=1.0)),
                         split=_split(d.get("split") or {}), interval_seconds=interval,
                         sample_interval_seconds=sample, model=_choice(d, "model", "weave.json", "auto", MODELS),
                         retention=_retention(d.get("retention") or {}))


@dataclass
class WeaverConfig:
    """Process settings: the flags, then weave.json (``settings``, replaced as a whole when the file changes)."""

    node_url: str
    data_dir: Path
    keyring_dir: Path
    kek_dir: Path | None = None
    settings: WeaveSettings = field(default_factory=WeaveSettings)
    settings_path: str | None = None
    settings_error: str | None = None
    partitioning: Partitioning | None = None
    keyring_poll_seconds: float = 0.25
    key_cache_size: int = 1024
    reader_threads: int = 2
    sample_retention_seconds: float = 30 * 86400.0  # docs/weaving.md: 30 days of samples
    listeners: list[Callable[[WeaveSettings], None]] = field(default_factory=list)

    def apply(self, doc: dict[str, Any]) -> None:
        """Replace the settings by weave.json's; a file that does not parse keeps the ones in force."""
        try:
            parsed = parse_settings(doc)
        except SettingsError as exc:
            self.settings_error = str(exc)
            log.error("weave.json not applied, keeping the settings in force: %s", exc)
            return
        self.settings, self.settings_error = parsed, None
        for listener in self.listeners:
            listener(parsed)
