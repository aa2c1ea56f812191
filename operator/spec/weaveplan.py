"""WeavePlan spec: forecast window and confidence, split thresholds, cadence and woven-snapshot retention."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from chronoshard.operator.spec.common import Fields, SpecError, parse_quantity, quantity_decimal

MODES = ("forecast", "weave", "split")
MODELS = ("auto", "linear", "exponential-smoothing", "arima")
PLACEMENTS = ("leastLoaded", "stay")


@dataclass(frozen=True)
class WeavePlanSpec:
    """A parsed, defaulted WeavePlan spec."""

    shardset: str
    prediction_window: timedelta = timedelta(hours=24)
    confidence_threshold: float = 0.75
    split_size_threshold_bytes: int = 512 * 2**20
    split_load_threshold: int = 1000
    min_partition_size_bytes: int | None = None
    sustained_for: timedelta = timedelta(minutes=10)
    placement: str = "leastLoaded"
    interval: timedelta = timedelta(hours=1)
    sample_interval: timedelta = timedelta(seconds=60)
    mode: str = "weave"
    max_snapshots: int = 10
    max_age: timedelta = timedelta(hours=168)
    model: str = "auto"


def parse_weaveplan(spec: Mapping[str, Any] | None) -> WeavePlanSpec:
    """Validate and default a WeavePlan `spec` exactly as the CRD schema does; raise SpecError otherwise."""
    f = Fields.root(spec)
    shardset = f.ref("shardSetRef")
    window = f.duration("predictionWindow", default="24h", positive=True)
    confidence = f.number("confidenceThreshold", default=0.75, minimum=0, maximum=1)

    s = f.obj("split")
    size = s.quantity("sizeThreshold", default="512Mi")
    load = s.integer("loadThreshold", default=1000, minimum=1, maximum=10_000_000)
    min_size = s.quantity("minPartitionSize")
    sustained = s.duration("sustainedFor", default="10m")
    placement = s.string("placement", default="leastLoaded", enum=PLACEMENTS)
    s.done()

    interval = f.duration("interval", default="1h", positive=True)
    sample_interval = f.duration("sampleInterval", default="60s", positive=True)
    mode = f.string("mode", default="weave", enum=MODES)

    r = f.obj("retention")
    max_snapshots = r.integer("maxSnapshots", default=10, minimum=1, maximum=1000)
    max_age = r.duration("maxAge", default="168h", positive=True)
    r.done()
    model = f.string("model", default="auto", enum=MODELS)
    f.done()

    if min_size is not None and not quantity_decimal(min_size) < quantity_decimal(size):
        raise SpecError("spec.split.minPartitionSize",
                        "split.minPartitionSize must be smaller than split.sizeThreshold")
    if interval > window:
        raise SpecError("spec.interval",
                        "interval must not be longer than predictionWindow (forecasts would leave gaps)")
    if sample_interval > interval:
        raise SpecError("spec.sampleInterval",
                        "sampleInterval must not be longer than interval (a forecast needs new samples)")
    return WeavePlanSpec(
        shardset=shardset,
        prediction_window=window,
        confidence_threshold=confidence,
        split_size_threshold_bytes=parse_quantity(size, "spec.split.sizeThreshold"),
        split_load_threshold=load,
        min_partition_size_bytes=None if min_size is None else parse_quantity(min_size, "spec.split.minPartitionSize"),
        sustained_for=sustained,
        placement=placement,
        interval=interval,
        sample_interval=sample_interval,
        mode=mode,
        max_snapshots=max_snapshots,
        max_age=max_age,
        model=model,
    )
