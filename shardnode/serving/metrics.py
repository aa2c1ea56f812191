"""Prometheus metrics for the node and the cache; one registry per server so tests can run several."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from chronoshard.shardnode.keys.keyring import Keyring
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# Unwraps are sub-millisecond locally and tens of milliseconds through a KMS.
UNWRAP_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class KeyCacheCollector:
    """Exports a KeyCache's own counters at scrape time (one source of truth, no double bookkeeping).

    ``stats`` returns ``KeyCache.stats()`` or None while no key cache exists (no --kek-dir): all zeros then.
    """

    FIELDS = (("hits", "hits", "Reads of a wrapped version whose table key was in memory"),
              ("misses", "misses", "Reads of a wrapped version that had to unwrap the table key (the slow path)"),
              ("prefetched", "prefetched", "Table keys unwrapped ahead of need from key hints"),
              ("prefetch_used", "prefetchUsed", "Prefetched table keys later used by a read"))

    def __init__(self, process: str, stats: Callable[[], dict[str, Any] | None]) -> None:
        self.process, self.stats = process, stats

    def describe(self) -> list[Metric]:
        """Names only (so registering does not call ``stats``)."""
        return list(self._families({}))

    def collect(self) -> Iterator[Metric]:
        """Current values."""
        yield from self._families(self.stats() or {})

    def _families(self, st: dict[str, Any]) -> Iterator[Metric]:
        p = self.process
        for name, field, doc in self.FIELDS:
            yield CounterMetricFamily(f"chronoshard_{p}_key_{name}", doc, value=st.get(field, 0))
        yield GaugeMetricFamily(f"chronoshard_{p}_key_cache_held", "Unwrapped table keys in memory",
                                value=st.get("held", 0))
        yield GaugeMetricFamily(f"chronoshard_{p}_key_cache_capacity", "Unwrapped table keys the key cache may hold",
                                value=st.get("capacity", 0))


class CommitCollector:
    """Exports the store's group-commit counters at scrape time: transactions committed and the jobs (writes,
    deletes, rewrap batches, slot changes) they held; jobs / commits is the mean group size.

    ``counts`` returns (commits, jobs) or None while the store is not open: zeros then.
    """

    def __init__(self, process: str, counts: Callable[[], tuple[int, int] | None]) -> None:
        self.process, self.counts = process, counts

    def describe(self) -> list[Metric]:
        """Names only (so registering does not call ``counts``)."""
        return list(self._families((0, 0)))

    def collect(self) -> Iterator[Metric]:
        """Current values."""
        yield from self._families(self.counts() or (0, 0))

    def _families(self, counts: tuple[int, int]) -> Iterator[Metric]:
        p = self.process
        yield CounterMetricFamily(f"chronoshard_{p}_store_commits", "Store transactions committed (each one fsync)",
                                  value=counts[0])
        yield CounterMetricFamily(f"chronoshard_{p}_store_committed_jobs",
                                  "Write jobs in those transactions (group commit: many per transaction)",
                                  value=counts[1])


class KeyringMetrics:
    """Keyring reload outcomes (labels and values never carry key material)."""

    def __init__(self, registry: CollectorRegistry, process: str) -> None:
        self.generation = Gauge(f"chronoshard_{process}_keyring_generation", "Loaded keyring generation",
                                registry=registry)
        self.primary = Gauge(f"chronoshard_{process}_keyring_primary_version", "Primary key version id",
                             registry=registry)
        self.reloads = Counter(f"chronoshard_{process}_keyring_reloads", "Keyring load attempts by result",
                               ["result"], registry=registry)
        self.load_error = Gauge(f"chronoshard_{process}_keyring_load_error",
                                "1 if the last keyring load failed (the previous keyring stays loaded)",
                                registry=registry)

    def observe(self, ring: Keyring | None, error: str | None) -> None:
        """Record one reload attempt."""
        if ring is not None:
            self.reloads.labels("ok").inc()
            self.load_error.set(0)
            self.generation.set(ring.generation)
            self.primary.set(ring.primary)
        else:
            self.reloads.labels("error").inc()
            self.load_error.set(1 if error else 0)


class SettingsMetrics:
    """Settings-file reload outcomes."""

    def __init__(self, registry: CollectorRegistry, process: str) -> None:
        self.reloads = Counter(f"chronoshard_{process}_settings_reloads", "Settings file loads by result",
                               ["result"], registry=registry)
        self.load_error = Gauge(f"chronoshard_{process}_settings_load_error",
                                "1 if the settings file last failed to parse (previous settings kept)",
                                registry=registry)

    def observe(self, error: str | None) -> None:
        """Record one load attempt."""
        self.reloads.labels("error" if error else "ok").inc()
        self.load_error.set(1 if error else 0)


class NodeMetrics:
    """Everything `chronoshard-node` exports."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.keyring = KeyringMetrics(r, "node")
        self.settings = SettingsMetrics(r, "node")
        self.requests = Counter("chronoshard_node_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.writes = Counter("chronoshard_node_writes", "Committed writes by operation", ["op"], registry=r)
        self.compromised_holds = Counter("chronoshard_node_compromised_write_holds",
                                         "Times a write waited because the primary key version is marked compromised",
                                         registry=r)
        self.bytes_written = Counter("chronoshard_node_written_bytes", "Plaintext bytes written", registry=r)
        self.integrity_failures = Counter("chronoshard_node_integrity_failures",
                                          "Blocks that failed authentication or checksum, by where and why",
                                          ["source", "reason"], registry=r)
        self.missing_key = Counter("chronoshard_node_missing_key_version",
                                   "Reads of blocks whose key version is not loaded", ["key_version"], registry=r)
        self.blocks = Gauge("chronoshard_node_blocks", "Stored blocks by key version", ["key_version"], registry=r)
        self.last_lsn = Gauge("chronoshard_node_changelog_last_lsn", "Highest change-log LSN", registry=r)
        self.changelog_trimmed = Counter("chronoshard_node_changelog_trimmed",
                                         "Change-log entries deleted by retention", registry=r)
        self.rewrap_blocks = Counter("chronoshard_node_rewrap_blocks", "Blocks processed by rewrap, by result",
                                     ["result"], registry=r)
        self.rewrap_running = Gauge("chronoshard_node_rewrap_running", "1 while a rewrap runs", registry=r)
        self.verify_runs = Counter("chronoshard_node_verify_runs", "Completed verify runs", ["mode"], registry=r)
        self.verify_blocks = Counter("chronoshard_node_verify_blocks", "Blocks checked by verify, by result",
                                     ["result"], registry=r)
        self.verify_last_failures = Gauge("chronoshard_node_verify_last_failures",
                                          "Corrupt or undecryptable blocks found by the last verify", registry=r)

    def watch_key_cache(self, stats: Callable[[], dict[str, Any] | None]) -> None:
        """Export the key cache's counters (chronoshard_node_key_*)."""
        self.registry.register(KeyCacheCollector("node", stats))

    def watch_commits(self, counts: Callable[[], tuple[int, int] | None]) -> None:
        """Export the store's group-commit counters (chronoshard_node_store_commits, _committed_jobs)."""
        self.registry.register(CommitCollector("node", counts))


class CacheMetrics:
    """Everything `chronoshard-cache` exports."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.keyring = KeyringMetrics(r, "cache")
        self.settings = SettingsMetrics(r, "cache")
        self.requests = Counter("chronoshard_cache_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.hits = Counter("chronoshard_cache_hits", "Reads served from memory", registry=r)
        self.misses = Counter("chronoshard_cache_misses", "Reads fetched from the node", registry=r)
        self.bytes = Gauge("chronoshard_cache_bytes", "Plaintext bytes held", registry=r)
        self.entries = Gauge("chronoshard_cache_entries", "Blocks held", registry=r)
        self.budget = Gauge("chronoshard_cache_budget_bytes", "Byte budget", registry=r)
        self.evictions = Counter("chronoshard_cache_evictions", "Blocks evicted to fit the budget", registry=r)
        self.prefetch_issued = Counter("chronoshard_cache_prefetches_issued", "Prefetch fetches sent to the node",
                                       registry=r)
        self.prefetch_used = Counter("chronoshard_cache_prefetches_used",
                                     "Prefetched blocks later read by a client", registry=r)
        self.prefetch_wasted = Counter("chronoshard_cache_prefetches_wasted",
                                       "Prefetched blocks evicted or invalidated unread", registry=r)
        self.prefetch_dropped = Counter("chronoshard_cache_prefetches_dropped",
                                        "Hints dropped (queue full, below threshold, or already cached)",
                                        ["why"], registry=r)
        self.decrypt_failures = Counter("chronoshard_cache_decrypt_failures",
                                        "Blocks that failed to decrypt or verify, by reason", ["reason"], registry=r)
        self.decrypts = Counter("chronoshard_cache_decrypts", "Successful decrypts by key version",
                                ["key_version"], registry=r)
        self.key_hints_dropped = Counter("chronoshard_cache_key_hints_dropped",
                                         "Key hints not acted on, by reason (not_wrapped, queue_full, held, "
                                         "unwrap_failed)", ["reason"], registry=r)
        self.key_unwrap = Histogram("chronoshard_cache_key_unwrap_seconds",
                                    "Time to unwrap one table key, by path (demand: a read waited; prefetch: a hint)",
                                    ["path"], buckets=UNWRAP_BUCKETS, registry=r)

    def watch_key_cache(self, stats: Callable[[], dict[str, Any] | None]) -> None:
        """Export the key cache's counters (chronoshard_cache_key_*)."""
        self.registry.register(KeyCacheCollector("cache", stats))

    def observe_unwrap(self, path: str, seconds: float) -> None:
        """KeyCache.on_unwrap hook."""
        self.key_unwrap.labels(path).observe(seconds)
