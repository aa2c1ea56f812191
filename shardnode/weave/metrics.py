"""Prometheus metrics of `chronoshard-weaver` (one registry per process, so tests can run several)."""

from __future__ import annotations

from chronoshard.shardnode.serving.metrics import KeyringMetrics, SettingsMetrics
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector


class WeaverMetrics:
    """Everything the weaver exports; label values are partition ids, pass names and key versions only."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # process_cpu_seconds_total and friends: the weaver's CPU share is one of the figures.
        ProcessCollector(registry=r)
        self.keyring = KeyringMetrics(r, "weaver")
        self.settings = SettingsMetrics(r, "weaver")
        self.requests = Counter("chronoshard_weaver_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.woven_bytes = Gauge("chronoshard_weaver_woven_bytes", "Stored bytes of the woven snapshots' pages",
                                 registry=r)
        self.points = Gauge("chronoshard_weaver_woven_points", "Woven snapshots (one per half and point) stored",
                            registry=r)
        self.weaves = Gauge("chronoshard_weaver_weaves", "Active weaves", registry=r)
        self.probability = Gauge("chronoshard_weaver_split_probability",
                                 "Forecast probability that the partition splits within the window",
                                 ["partition"], registry=r)
        self.partition_bytes = Gauge("chronoshard_weaver_partition_bytes", "Bytes of the partition at the last sample",
                                     ["partition"], registry=r)
        self.pass_seconds = Histogram("chronoshard_weaver_pass_seconds", "Duration of the weaver's passes, by pass",
                                      ["pass"], registry=r, buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600))
        self.errors = Counter("chronoshard_weaver_pass_errors", "Passes that failed (retried at the next one)",
                              ["pass"], registry=r)
        self.versions = Gauge("chronoshard_weaver_woven_rows", "Woven rows by key version", ["key_version"],
                              registry=r)
