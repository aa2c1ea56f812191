"""The authentication and authorization counters, in the server's own registry (so /metrics shows them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class AuthMetrics:
    """``chronoshard_auth_decisions_total{server,result,reason}`` and
    ``chronoshard_auth_cache_lookups_total{server,cache,result}`` (labels never carry a credential)."""

    def __init__(self, registry: CollectorRegistry, server: str) -> None:
        self.server = server
        self.decisions = Counter("chronoshard_auth_decisions", "Authentication and authorization decisions",
                                 ["server", "result", "reason"], registry=registry)
        self.cache_lookups = Counter("chronoshard_auth_cache_lookups", "Token and decision cache lookups",
                                     ["server", "cache", "result"], registry=registry)

    def decision(self, result: str, reason: str) -> None:
        """Count one decision: result allowed|unauthenticated|forbidden|unavailable."""
        self.decisions.labels(self.server, result, reason).inc()

    def lookup(self, cache: str, hit: bool) -> None:
        """Count one cache lookup (cache token|decision)."""
        self.cache_lookups.labels(self.server, cache, "hit" if hit else "miss").inc()
