"""Samples: the node's stats body as rows, rows as the forecast's samples, load and growth from stored rows."""

from __future__ import annotations

from chronoshard.shardnode.forecasting.types import PartitionSample
from chronoshard.shardnode.weave import sampler
from chronoshard.shardnode.weave.config import parse_settings


def test_stats_body_and_samples():
    body = {"epoch": 3, "startedAt": 1.0, "partitions": [
        {"id": 2, "ranges": [["0000000000000000", "7fffffffffffffff"]], "blocks": 5, "bytes": 500, "reads": 7,
         "writes": 9}]}
    assert sampler.sample_rows(body) == [(2, 500, 5, 9, 7)]
    assert sampler.to_samples([(10.0, 500, 5, 9, 7)]) == [PartitionSample(10.0, 500, 5, 9, 7)]
    t = sampler.thresholds(parse_settings({"split": {"sizeBytes": 10, "loadRps": 2, "sustainedSeconds": 5,
                                                     "minPartitionBytes": 3}}))
    assert (t.size_bytes, t.load_rps, t.sustain_seconds, t.min_partition_bytes) == (10, 2.0, 5.0, 3)


def test_load_and_growth():
    rows = [(0.0, 100, 1, 0, 0), (1800.0, 200, 2, 10, 5), (3600.0, 300, 3, 30, 15)]
    assert sampler.load_rps(rows) == 30 / 1800
    assert sampler.growth_per_hour(rows) == 200.0
    assert sampler.load_rps([*rows[:2], (3600.0, 300, 3, 1, 1)]) == 0.0  # a counter reset: no rate yet
    assert sampler.load_rps(rows[:1]) == 0.0 and sampler.growth_per_hour(rows[:1]) == 0.0
