"""ShadowPolicy spec: snapshots, retention tiers, anomaly detection and reversion of a ShardSet's changes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from chronoshard.operator.spec.common import Fields, SpecError, check_str

GRANULARITIES = ("differential", "full")
COMPRESSIONS = ("none", "zlib", "lzma")
ANOMALY_MODELS = ("isolation-forest", "zscore", "autoencoder")
REVERSION_MODES = ("auto", "confirm", "off")
TABLE_NAME_PATTERN = r"[a-z0-9]([-a-z0-9_]*[a-z0-9])?"


@dataclass(frozen=True)
class Retention:
    """How long snapshots stay in each tier."""

    hot: timedelta = timedelta(hours=24)
    warm: timedelta = timedelta(hours=168)
    cold: timedelta = timedelta(hours=720)


@dataclass(frozen=True)
class Anomaly:
    """Anomaly detection over the change log."""

    model: str = "isolation-forest"
    threshold: float = 0.8
    severity_threshold: float = 0.5
    training_window: timedelta = timedelta(hours=24)


@dataclass(frozen=True)
class ShadowPolicySpec:
    """A parsed, defaulted ShadowPolicy spec."""

    shardset: str
    tables: tuple[str, ...] | None = None  # None: every table of the ShardSet
    snapshot_interval: timedelta = timedelta(minutes=1)
    granularity: str = "differential"
    compression: str = "zlib"
    retention: Retention = field(default_factory=Retention)
    anomaly: Anomaly = field(default_factory=Anomaly)
    reversion_mode: str = "confirm"
    reversion_max_blocks: int | None = None


def parse_shadowpolicy(spec: Mapping[str, Any] | None) -> ShadowPolicySpec:
    """Validate and default a ShadowPolicy `spec` exactly as the CRD schema does; raise SpecError otherwise."""
    f = Fields.root(spec)
    shardset = f.ref("shardSetRef")
    tables = _tables(f) if f.has("tables") else None

    s = f.obj("snapshot")
    interval = s.duration("interval", default="1m", positive=True)
    granularity = s.string("granularity", default="differential", enum=GRANULARITIES)
    s.done()
    compression = f.string("compression", default="zlib", enum=COMPRESSIONS)

    r = f.obj("retention")
    retention = Retention(
        hot=r.duration("hot", default="24h", positive=True),
        warm=r.duration("warm", default="168h", positive=True),
        cold=r.duration("cold", default="720h", positive=True),
    )
    r.done()
    if retention.hot > retention.warm:
        raise SpecError("spec.retention.warm", "retention.hot must not be longer than retention.warm")
    if retention.warm > retention.cold:
        raise SpecError("spec.retention.cold", "retention.warm must not be longer than retention.cold")

    a = f.obj("anomaly")
    anomaly = Anomaly(
        model=a.string("model", default="isolation-forest", enum=ANOMALY_MODELS),
        threshold=a.number("threshold", default=0.8, minimum=0, maximum=1),
        severity_threshold=a.number("severityThreshold", default=0.5, minimum=0, maximum=1),
        training_window=a.duration("trainingWindow", default="24h", positive=True),
    )
    a.done()

    v = f.obj("reversion")
    mode = v.string("mode", default="confirm", enum=REVERSION_MODES)
    max_blocks = v.integer("maxBlocks", minimum=1, maximum=100_000_000)
    v.done()
    f.done()

    if interval > retention.hot:
        raise SpecError("spec.snapshot.interval", "snapshot.interval must not be longer than retention.hot")
    return ShadowPolicySpec(
        shardset=shardset,
        tables=tables,
        snapshot_interval=interval,
        granularity=granularity,
        compression=compression,
        retention=retention,
        anomaly=anomaly,
        reversion_mode=mode,
        reversion_max_blocks=max_blocks,
    )


def _tables(f: Fields) -> tuple[str, ...]:
    names: list[str] = []
    for i, item in enumerate(f.array("tables", max_items=64)):
        name = check_str(item, f"spec.tables[{i}]", pattern=TABLE_NAME_PATTERN, max_length=63)
        if name in names:
            raise SpecError(f"spec.tables[{i}]", f"Duplicate value: {name!r}")
        names.append(name)
    return tuple(names)
