"""ShadowPolicy spec: capture, compression, snapshots, retention tiers, cold storage, anomaly and reversion."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from chronoshard.operator.spec.common import Fields, SpecError, check_str

GRANULARITIES = ("differential", "full")
CODECS = ("none", "zstd")
ANOMALY_MODELS = ("isolation-forest", "zscore", "autoencoder")
REVERSION_MODES = ("auto", "confirm", "off")
TABLE_NAME_PATTERN = r"[a-z0-9]([-a-z0-9_]*[a-z0-9])?"
SECRET_NAME_PATTERN = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
# The same patterns as crds/shadowpolicies.yaml (RE2 and Python agree on these; Python uses fullmatch).
ENDPOINT_PATTERN = r"https?://[^\s/?#]+(/[^\s?#]*)?"
BUCKET_PATTERN = r"[a-z0-9][a-z0-9.-]*[a-z0-9]"
PREFIX_PATTERN = r"[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*"
REGION_PATTERN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
MAX_ANOMALY_INTERVAL = timedelta(hours=1)


@dataclass(frozen=True)
class Compression:
    """How the shadow compresses plaintext before sealing it again."""

    codec: str = "zstd"
    level: int = 3
    dictionary: bool = True


@dataclass(frozen=True)
class ColdStorage:
    """S3-compatible object storage for the cold tier (also the shape of ``bootstrap.fromShadow.coldStorage``)."""

    endpoint: str
    bucket: str
    credentials_secret: str
    prefix: str | None = None
    region: str = "us-east-1"
    force_path_style: bool = True


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
    interval: timedelta = timedelta(minutes=1)  # the detection window


@dataclass(frozen=True)
class ShadowPolicySpec:
    """A parsed, defaulted ShadowPolicy spec."""

    shardset: str
    tables: tuple[str, ...] | None = None  # None: every table of the ShardSet
    snapshot_interval: timedelta = timedelta(minutes=1)
    granularity: str = "differential"
    full_every: int = 10
    compression: Compression = field(default_factory=Compression)
    retention: Retention = field(default_factory=Retention)
    anomaly: Anomaly = field(default_factory=Anomaly)
    reversion_mode: str = "confirm"
    reversion_max_blocks: int | None = None
    cold_storage: ColdStorage | None = None  # None: the cold tier stays on the shard volumes


def parse_shadowpolicy(spec: Mapping[str, Any] | None) -> ShadowPolicySpec:
    """Validate and default a ShadowPolicy `spec` exactly as the CRD schema does; raise SpecError otherwise."""
    f = Fields.root(spec)
    shardset = f.ref("shardSetRef")
    tables = _tables(f) if f.has("tables") else None

    s = f.obj("snapshot")
    interval = s.duration("interval", default="1m", positive=True)
    granularity = s.string("granularity", default="differential", enum=GRANULARITIES)
    full_every = s.integer("fullEvery", default=10, minimum=1, maximum=1000)
    s.done()
    compression = _compression(f.obj("compression"))

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
        interval=a.duration("interval", default="1m", positive=True),
    )
    a.done()
    if anomaly.interval > MAX_ANOMALY_INTERVAL:
        # The CRD's CEL rule on the field refuses the same.
        raise SpecError("spec.anomaly.interval", "anomaly.interval must not be longer than 1h")

    v = f.obj("reversion")
    mode = v.string("mode", default="confirm", enum=REVERSION_MODES)
    max_blocks = v.integer("maxBlocks", minimum=1, maximum=100_000_000)
    v.done()
    cold = f.maybe_obj("coldStorage")
    cold_storage = parse_cold_storage(cold) if cold is not None else None
    f.done()

    if interval > retention.hot:
        raise SpecError("spec.snapshot.interval", "snapshot.interval must not be longer than retention.hot")
    return ShadowPolicySpec(
        shardset=shardset,
        tables=tables,
        snapshot_interval=interval,
        granularity=granularity,
        full_every=full_every,
        compression=compression,
        retention=retention,
        anomaly=anomaly,
        reversion_mode=mode,
        reversion_max_blocks=max_blocks,
        cold_storage=cold_storage,
    )


def _compression(f: Fields) -> Compression:
    codec = f.string("codec", default="zstd", enum=CODECS)
    level = f.integer("level", default=3, minimum=1, maximum=19)
    dictionary = f.boolean("dictionary", default=True)
    f.done()
    return Compression(codec=codec, level=level, dictionary=dictionary)


def parse_cold_storage(f: Fields) -> ColdStorage:
    """An object-storage location ``{endpoint, bucket, prefix?, region?, forcePathStyle?, credentialsSecret}``."""
    endpoint = f.required_string("endpoint", pattern=ENDPOINT_PATTERN, max_length=2048)
    bucket = f.required_string("bucket", pattern=BUCKET_PATTERN, min_length=3, max_length=63)
    prefix = f.string("prefix", pattern=PREFIX_PATTERN, max_length=512)
    if prefix is not None and any(part in (".", "..") for part in prefix.split("/")):
        # The CRD's CEL rule on the field refuses the same.
        raise SpecError(f.sub("prefix"), "coldStorage.prefix must not contain . or .. segments")
    region = f.string("region", default="us-east-1", pattern=REGION_PATTERN, max_length=64)
    path_style = f.boolean("forcePathStyle", default=True)
    if not f.has("credentialsSecret"):
        raise SpecError(f.sub("credentialsSecret"), "Required value")
    ref = f.obj("credentialsSecret")
    secret = ref.required_string("name", pattern=SECRET_NAME_PATTERN, max_length=253)
    ref.done()
    f.done()
    return ColdStorage(endpoint=endpoint, bucket=bucket, credentials_secret=secret, prefix=prefix, region=region,
                       force_path_style=path_style)


def _tables(f: Fields) -> tuple[str, ...]:
    names: list[str] = []
    for i, item in enumerate(f.array("tables", max_items=64)):
        name = check_str(item, f"spec.tables[{i}]", pattern=TABLE_NAME_PATTERN, max_length=63)
        if name in names:
            raise SpecError(f"spec.tables[{i}]", f"Duplicate value: {name!r}")
        names.append(name)
    return tuple(names)
