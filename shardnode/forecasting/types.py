"""The values the split forecast takes and returns (the interface the weaver codes against, docs/weaving.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PartitionSample:
    """One observation of one partition, taken by the weaver every sample interval.

    Counters are cumulative since the counter's start and may reset (a node restart): a drop is a reset, not
    negative load.
    """

    time: float  # unix seconds
    bytes: int  # stored bytes of the partition's live blocks (ciphertext frames)
    blocks: int
    writes: int  # cumulative write requests (puts + deletes)
    reads: int  # cumulative read requests


@dataclass(frozen=True)
class SplitThresholds:
    """When a partition splits: ``spec.split`` of the WeavePlan."""

    size_bytes: int  # spec.split.sizeThreshold
    load_rps: float  # spec.split.loadThreshold (requests/s, reads + writes)
    sustain_seconds: float = 600.0  # how long load must stay above load_rps to count (TiKV/CockroachDB style)
    min_partition_bytes: int | None = None  # spec.split.minPartitionSize: never forecast halves smaller than this


@dataclass(frozen=True)
class Interval:
    """An 80% prediction interval and its point forecast."""

    low: float
    point: float
    high: float


@dataclass(frozen=True)
class SplitForecast:
    """What the forecast says about one partition over the window."""

    probability: float  # calibrated P(the partition crosses a threshold within the window)
    predicted_time: float | None  # unix time of the most likely crossing (None when probability is ~0)
    reason: str | None  # "size" | "load" | None
    size_at_window_end: Interval  # bytes
    load_at_window_end: Interval  # requests/s
    growth_bytes_per_hour: float
    load_rps_now: float
    model: str  # the model that produced it
    samples: int  # how many samples it used
    explanation: str  # one human sentence: why (which threshold, when, with what interval)
