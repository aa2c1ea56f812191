"""Prometheus metrics of `chronoshard-shadow` (one registry per process, so tests can run several)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chronoshard.shardnode.serving.metrics import KeyCacheCollector, KeyringMetrics, SettingsMetrics
from prometheus_client import CollectorRegistry, Counter, Gauge


class ShadowMetrics:
    """Everything the shadow exports; label values never carry keys, values or credentials."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.keyring = KeyringMetrics(r, "shadow")
        self.settings = SettingsMetrics(r, "shadow")
        self.requests = Counter("chronoshard_shadow_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.lag_lsn = Gauge("chronoshard_shadow_capture_lag_lsn",
                             "Changes the node committed that the history has not applied yet", registry=r)
        self.lag_seconds = Gauge("chronoshard_shadow_capture_lag_seconds",
                                 "Age of the oldest change not yet applied (0 when caught up)", registry=r)
        self.cursor = Gauge("chronoshard_shadow_capture_cursor_lsn", "Last node LSN applied to the history",
                            registry=r)
        self.applied = Counter("chronoshard_shadow_capture_changes", "Changes applied to the history, by op",
                               ["op"], registry=r)
        self.seeds = Counter("chronoshard_shadow_capture_seeds",
                             "Seeds from the node's snapshot, by reason (first start, gap)", ["reason"], registry=r)
        self.node_errors = Counter("chronoshard_shadow_capture_node_errors",
                                   "Failed calls to the node by the capture loop (each followed by a back-off)",
                                   registry=r)
        self.tier_bytes = Gauge("chronoshard_shadow_tier_bytes", "Bytes stored per history tier", ["tier"],
                                registry=r)
        self.tier_versions = Gauge("chronoshard_shadow_tier_versions", "Versions stored per history tier",
                                   ["tier"], registry=r)
        self.compression_ratio = Gauge("chronoshard_shadow_compression_ratio",
                                       "Raw bytes over stored bytes across the history", registry=r)
        self.versions = Gauge("chronoshard_shadow_versions", "Stored history versions by key version",
                              ["key_version"], registry=r)
        self.reversion_items = Counter("chronoshard_shadow_reversion_items",
                                       "Reversion items carried out, by result (done, conflict, skipped)",
                                       ["result"], registry=r)
        self.incidents = Counter("chronoshard_shadow_anomaly_incidents",
                                 "Anomaly incidents detected, by table and kind (counted when first detected)",
                                 ["table", "kind"], registry=r)
        self.window_score = Gauge("chronoshard_shadow_anomaly_score",
                                  "Calibrated anomaly score of the table's last closed window (0..1)", ["table"],
                                  registry=r)
        self._incidents_seen: set[str] = set()

    def note_incident(self, body: dict[str, Any]) -> None:
        """Count an incident the first time it is reported (it is reported again as it grows and closes)."""
        ident = str(body.get("id"))
        if ident in self._incidents_seen:
            return
        if len(self._incidents_seen) > 10_000:  # ids are per shard and grow forever: keep the set bounded
            self._incidents_seen.clear()
        self._incidents_seen.add(ident)
        self.incidents.labels(str(body.get("table")), str(body.get("kind"))).inc()

    def watch_key_cache(self, stats: Callable[[], dict[str, Any] | None]) -> None:
        """Export the key cache's counters (chronoshard_shadow_key_*)."""
        self.registry.register(KeyCacheCollector("shadow", stats))
