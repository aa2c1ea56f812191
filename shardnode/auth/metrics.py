"""The authentication and authorization counters, in the server's own registry (so /metrics shows them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class AuthMetrics:
    """``chronoshard_auth_decisions_total{server,result,reason}``,
    ``chronoshard_auth_cache_lookups_total{server,cache,result}`` and
    ``chronoshard_audit_queue_full_total{server}`` (labels never carry a credential)."""

    def __init__(self, registry: CollectorRegistry, server: str) -> None:
        self.server = server
        self.decisions = Counter("chronoshard_auth_decisions", "Authentication and authorization decisions",
                                 ["server", "result", "reason"], registry=registry)
        self.cache_lookups = Counter("chronoshard_auth_cache_lookups", "Token and decision cache lookups",
                                     ["server", "cache", "result"], registry=registry)
        self.audit_queue_full = Counter(
            "chronoshard_audit_queue_full", "Audit lines written on the request's own thread because the audit "
            "queue was full (none is dropped)", ["server"], registry=registry).labels(server)
        # Per-request counting goes to children bound once: labels() per call takes a lock and builds a key.
        self._lookups = {(cache, hit): self.cache_lookups.labels(server, cache, "hit" if hit else "miss")
                         for cache in ("token", "decision") for hit in (True, False)}
        self._decisions: dict[tuple[str, str], Counter] = {}

    def decision(self, result: str, reason: str) -> None:
        """Count one decision: result allowed|unauthenticated|forbidden|unavailable."""
        child = self._decisions.get((result, reason))
        if child is None:
            child = self._decisions[(result, reason)] = self.decisions.labels(self.server, result, reason)
        child.inc()

    def lookup(self, cache: str, hit: bool) -> None:
        """Count one cache lookup (cache token|decision)."""
        self._lookups[(cache, hit)].inc()
