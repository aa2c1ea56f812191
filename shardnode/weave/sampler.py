"""Partition samples (docs/weaving.md, "The weaver"): the node's ``GET /v1/partitions/stats`` as one row per
partition, and stored rows as the forecast's samples (pure)."""

from __future__ import annotations

from typing import Any

from chronoshard.shardnode.forecasting.types import PartitionSample, SplitThresholds

from .config import WeaveSettings

Sample = tuple[float, int, int, int, int]  # (time, bytes, blocks, writes, reads) as stored


def sample_rows(body: dict[str, Any]) -> list[tuple[int, int, int, int, int]]:
    """``GET /v1/partitions/stats`` as (partition, bytes, blocks, writes, reads) rows."""
    return [(int(p["id"]), int(p["bytes"]), int(p["blocks"]), int(p["writes"]), int(p["reads"]))
            for p in body.get("partitions", [])]


def to_samples(rows: list[Sample]) -> list[PartitionSample]:
    """Stored sample rows as the forecast's samples."""
    return [PartitionSample(time=t, bytes=b, blocks=n, writes=w, reads=r) for t, b, n, w, r in rows]


def thresholds(s: WeaveSettings) -> SplitThresholds:
    """weave.json's split settings as the forecast's thresholds."""
    return SplitThresholds(s.split.size_bytes, s.split.load_rps, s.split.sustained_seconds,
                           s.split.min_partition_bytes)


def load_rps(rows: list[Sample]) -> float:
    """Requests per second between the last two samples (a counter drop is a restart: no rate yet)."""
    if len(rows) < 2:
        return 0.0
    (t0, _, _, w0, r0), (t1, _, _, w1, r1) = rows[-2], rows[-1]
    if t1 <= t0 or w1 < w0 or r1 < r0:
        return 0.0
    return ((w1 - w0) + (r1 - r0)) / (t1 - t0)


def growth_per_hour(rows: list[Sample]) -> float:
    """Bytes per hour over the samples held (first to last)."""
    if len(rows) < 2 or rows[-1][0] <= rows[0][0]:
        return 0.0
    return (rows[-1][1] - rows[0][1]) / (rows[-1][0] - rows[0][0]) * 3600.0
