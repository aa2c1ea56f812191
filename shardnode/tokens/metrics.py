"""The token service's metrics (its own registry, served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class TokenMetrics:
    """Issued per tier, request latency, revocation push latency, risk per member and window."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("chronoshard_tokens_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.issued = Counter("chronoshard_tokens_issued", "Tokens issued, by tier and how (request, refresh, "
                              "preissue)", ["tier", "how"], registry=r)
        self.latency = Histogram("chronoshard_tokens_request_seconds", "Time to answer a token route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.push_seconds = Histogram("chronoshard_tokens_revocation_push_seconds",
                                      "Time for one revocation to reach every node and cache that answered",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.revoked = Counter("chronoshard_tokens_revoked", "Tokens revoked", registry=r)
        self.risk = Gauge("chronoshard_tokens_unavailability_risk", "P(unavailable within the window) per member",
                          ["store", "window"], registry=r)
