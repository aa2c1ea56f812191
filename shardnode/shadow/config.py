"""The shadow process's settings: the flags, and ``shadow.json`` parsed strictly (unknown or ill-typed fields are
refused as a whole, the settings in force stay) and re-read when the mounted ConfigMap changes."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chronoshard.shardnode.serving.http_common import TABLE_RE
from chronoshard.shardnode.serving.scaffold import Partitioning

log = logging.getLogger(__name__)

CONSUMER_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
MAX_LEVEL = 19


class SettingsError(ValueError):
    """shadow.json does not parse; the message names the field (never a credential)."""


@dataclass(frozen=True)
class SnapshotSettings:
    """``snapshot``: how often the history store snapshots, and how."""

    interval_seconds: float = 60.0
    granularity: str = "differential"
    full_every: int = 10


@dataclass(frozen=True)
class CompressionSettings:
    """``compression``: the codec applied to plaintext before it is sealed."""

    codec: str = "zstd"
    level: int = 3
    dictionary: bool = True


@dataclass(frozen=True)
class RetentionSettings:
    """``retention``: the age (seconds) at which a version leaves the hot, warm and cold tier."""

    hot_seconds: float = 86400.0
    warm_seconds: float = 604800.0
    cold_seconds: float = 2592000.0


@dataclass(frozen=True)
class ColdSettings:
    """``cold``: the object-storage bucket of the cold tier (credentials are files in ``credentials_dir``)."""

    endpoint: str
    bucket: str
    prefix: str = ""
    region: str = "us-east-1"
    force_path_style: bool = True
    credentials_dir: str = "/etc/chronoshard/objectstore"


@dataclass(frozen=True)
class ReversionSettings:
    """``reversion``: ``confirm`` (a run needs the plan's digest), ``auto`` or ``off`` (the operator refuses
    Reversions); an optional cap on plan size."""

    mode: str = "confirm"
    max_blocks: int | None = None


@dataclass(frozen=True)
class AnomalySettings:
    """``anomaly``: the detector over the captured changes (docs/anomalies.md): its model, the score at which a
    window is anomalous, the severity at which the operator reverts or proposes to, the history it trains on and
    the window length."""

    model: str = "isolation-forest"
    threshold: float = 0.8
    severity_threshold: float = 0.5
    training_window_seconds: float = 86400.0
    interval_seconds: float = 60.0


@dataclass(frozen=True)
class ShadowSettings:
    """Everything shadow.json says, checked."""

    consumer: str = "shadow"
    tables: tuple[str, ...] | None = None
    snapshot: SnapshotSettings = field(default_factory=SnapshotSettings)
    compression: CompressionSettings = field(default_factory=CompressionSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    cold: ColdSettings | None = None
    reversion: ReversionSettings = field(default_factory=ReversionSettings)
    anomaly: AnomalySettings = field(default_factory=AnomalySettings)


# ---- strict parsing (pure) -------------------------------------------------------------------------
def _object(doc: Any, where: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(doc, dict):
        raise SettingsError(f"{where} must be a JSON object")
    unknown = set(doc) - allowed
    if unknown:
        raise SettingsError(f"{where}: unknown fields {sorted(unknown)}")
    return doc


def _number(doc: Mapping[str, Any], name: str, where: str, default: float, *, lo: float = 0.0,
            integer: bool = False, hi: float | None = None) -> Any:
    value = doc.get(name, default)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and (not integer or isinstance(value, int))
    if not ok or value < lo or (hi is not None and value > hi) or value != value:
        bound = f" between {lo:g} and {hi:g}" if hi is not None else f" >= {lo:g}"
        raise SettingsError(f"{where}.{name} must be {'an integer' if integer else 'a number'}{bound}")
    return value


def _bool(doc: Mapping[str, Any], name: str, where: str, default: bool) -> bool:
    value = doc.get(name, default)
    if not isinstance(value, bool):
        raise SettingsError(f"{where}.{name} must be true or false")
    return value


def _choice(doc: Mapping[str, Any], name: str, where: str, default: str, choices: tuple[str, ...]) -> str:
    value = doc.get(name, default)
    if value not in choices:
        raise SettingsError(f"{where}.{name} must be one of {list(choices)}")
    return str(value)


def _string(doc: Mapping[str, Any], name: str, where: str, default: str | None = None) -> str:
    value = doc.get(name)
    value = default if value is None else value  # null: the default, as the operator writes absent fields
    if not isinstance(value, str) or (default is None and not value):
        raise SettingsError(f"{where}.{name} must be a {'non-empty ' if default is None else ''}string")
    return value


def _tables(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(t, str) and TABLE_RE.fullmatch(t)
                                                            for t in value):
        raise SettingsError("tables must be null or a non-empty array of table names")
    return tuple(sorted(set(value)))


def _snapshot(doc: Any) -> SnapshotSettings:
    d = _object(doc, "snapshot", {"intervalSeconds", "granularity", "fullEvery"})
    return SnapshotSettings(float(_number(d, "intervalSeconds", "snapshot", 60.0, lo=1.0)),
                            _choice(d, "granularity", "snapshot", "differential", ("differential", "full")),
                            int(_number(d, "fullEvery", "snapshot", 10, lo=1, integer=True)))


def _compression(doc: Any) -> CompressionSettings:
    d = _object(doc, "compression", {"codec", "level", "dictionary"})
    return CompressionSettings(_choice(d, "codec", "compression", "zstd", ("zstd", "none")),
                               int(_number(d, "level", "compression", 3, lo=1, hi=MAX_LEVEL, integer=True)),
                               _bool(d, "dictionary", "compression", True))


def _retention(doc: Any) -> RetentionSettings:
    d = _object(doc, "retention", {"hotSeconds", "warmSeconds", "coldSeconds"})
    hot = float(_number(d, "hotSeconds", "retention", 86400.0, lo=1.0))
    warm = float(_number(d, "warmSeconds", "retention", 604800.0, lo=1.0))
    cold = float(_number(d, "coldSeconds", "retention", 2592000.0, lo=1.0))
    if not hot <= warm <= cold:
        raise SettingsError("retention must satisfy hotSeconds <= warmSeconds <= coldSeconds")
    return RetentionSettings(hot, warm, cold)


def _cold(doc: Any) -> ColdSettings | None:
    if doc is None:
        return None
    d = _object(doc, "cold", {"endpoint", "bucket", "prefix", "region", "forcePathStyle", "credentialsDir"})
    endpoint = _string(d, "endpoint", "cold")
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", endpoint):
        raise SettingsError("cold.endpoint must be an http:// or https:// URL")
    return ColdSettings(endpoint=endpoint, bucket=_string(d, "bucket", "cold"),
                        prefix=_string(d, "prefix", "cold", ""), region=_string(d, "region", "cold", "us-east-1"),
                        force_path_style=_bool(d, "forcePathStyle", "cold", True),
                        credentials_dir=_string(d, "credentialsDir", "cold", "/etc/chronoshard/objectstore"))


def _reversion(doc: Any) -> ReversionSettings:
    d = _object(doc, "reversion", {"mode", "maxBlocks"})
    max_blocks = d.get("maxBlocks")
    if max_blocks is not None:
        max_blocks = int(_number(d, "maxBlocks", "reversion", 0, lo=1, integer=True))
    return ReversionSettings(_choice(d, "mode", "reversion", "confirm", ("confirm", "auto", "off")), max_blocks)


ANOMALY_MODELS = ("isolation-forest", "zscore", "autoencoder")


def _anomaly(doc: Any) -> AnomalySettings:
    d = _object(doc, "anomaly", {"model", "threshold", "severityThreshold", "trainingWindowSeconds",
                                 "intervalSeconds"})
    return AnomalySettings(_choice(d, "model", "anomaly", "isolation-forest", ANOMALY_MODELS),
                           float(_number(d, "threshold", "anomaly", 0.8, hi=1.0)),
                           float(_number(d, "severityThreshold", "anomaly", 0.5, hi=1.0)),
                           float(_number(d, "trainingWindowSeconds", "anomaly", 86400.0, lo=1.0)),
                           float(_number(d, "intervalSeconds", "anomaly", 60.0, lo=1.0, hi=3600.0)))


TOP_LEVEL = {"consumer", "tables", "snapshot", "compression", "retention", "cold", "reversion", "anomaly"}


def parse_settings(doc: Any) -> ShadowSettings:
    """shadow.json as ShadowSettings; absent fields take their defaults, anything else wrong raises SettingsError."""
    d = _object(doc, "shadow.json", TOP_LEVEL)
    consumer = d.get("consumer", "shadow")
    if not isinstance(consumer, str) or not CONSUMER_RE.fullmatch(consumer):
        raise SettingsError("consumer must be a DNS label (lower-case letters, digits, '-'; at most 63)")
    return ShadowSettings(consumer=consumer, tables=_tables(d.get("tables")),
                          snapshot=_snapshot(d.get("snapshot", {})), compression=_compression(d.get("compression", {})),
                          retention=_retention(d.get("retention", {})), cold=_cold(d.get("cold")),
                          reversion=_reversion(d.get("reversion", {})), anomaly=_anomaly(d.get("anomaly", {})))


# ---- the process configuration ---------------------------------------------------------------------
@dataclass
class ShadowConfig:
    """Process settings: the flags, then shadow.json (``settings``, replaced as a whole when the file changes)."""

    node_url: str
    data_dir: Path
    keyring_dir: Path
    kek_dir: Path | None = None
    # --objectstore-dir: where the credentials Secret is mounted; overrides shadow.json's cold.credentialsDir, so
    # the path is a flag like every other mount (the local cluster maps flags, not paths inside files).
    objectstore_dir: Path | None = None
    settings: ShadowSettings = field(default_factory=ShadowSettings)
    settings_path: str | None = None
    settings_error: str | None = None
    partitioning: Partitioning | None = None
    keyring_poll_seconds: float = 0.25  # a stat of the mounted directory: cheap, and a rotation waits on it
    key_cache_size: int = 1024
    batch_size: int = 500  # changes per page read from the node
    wait_seconds: float = 10.0  # long-poll of GET /v1/changes
    backoff_seconds: float = 0.2  # first pause after a node error (doubles up to max_backoff_seconds)
    max_backoff_seconds: float = 5.0
    reader_threads: int = 4  # time-travel reads run in this pool, never on the event loop
    listeners: list[Callable[[ShadowSettings], None]] = field(default_factory=list)

    def apply(self, doc: dict[str, Any]) -> None:
        """Replace the settings by shadow.json's; a file that does not parse keeps the ones in force."""
        try:
            parsed = parse_settings(doc)
        except SettingsError as exc:
            self.settings_error = str(exc)
            log.error("shadow.json not applied, keeping the settings in force: %s", exc)
            return
        self.settings, self.settings_error = parsed, None
        for listener in self.listeners:
            listener(parsed)
