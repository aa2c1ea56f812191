"""May this caller do this: the route's Access, the caller's kind, and RBAC (SubjectAccessReview, cached)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .apiserver import ApiServer
from .config import SecurityConfig
from .identity import Identity
from .metrics import AuthMetrics
from .policy import Access, ReviewAttributes, review_attributes
from .singleflight import SingleFlight
from .ttlcache import TTLCache


@dataclass(frozen=True)
class Decision:
    """Allowed or not; ``reason`` is a metric label, ``message`` says what was missing (for the 403 body)."""

    allowed: bool
    reason: str
    message: str = ""


DecisionKey = tuple[str, tuple[str, ...], str, str, str]
# What the operator's identity may do without a review.
_OPERATOR_ACCESS = (Access.ADMIN, Access.REPLICATION, Access.METRICS, Access.PARTITIONS)


class Authorizer:
    """Decides per route (docs/security.md, "Authorization"); SubjectAccessReview answers, allowed and denied
    alike, are cached for cacheTTLSeconds, at most cacheSize of them."""

    def __init__(self, cfg: SecurityConfig, api: ApiServer, metrics: AuthMetrics, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self.api, self.metrics = cfg, api, metrics
        self.cache: TTLCache[DecisionKey, Decision] = TTLCache(cfg.cache_size, clock)
        self.inflight: SingleFlight[DecisionKey, Decision] = SingleFlight()

    async def authorize(self, identity: Identity, access: Access | None, table: str | None) -> Decision:
        """The decision for ``identity`` on a route with ``access`` (None: the route declared no policy)."""
        if access is None:
            return Decision(False, "no_policy", "this route declares no access policy and is refused")
        if access is Access.PUBLIC or identity.kind == "pod":
            # The ShardSet's own pods hold the same keys: nothing a route guards is more than they have.
            return Decision(True, "public" if access is Access.PUBLIC else "pod")
        if identity.kind == "tiered":  # decided by the tiered-token authenticator (scope and tier), never here
            return Decision(False, "tiered_token_not_allowed", "no tiered-token verifier on this server")
        if identity.kind == "replica":
            # A peer member's pod: the replication routes and nothing else (no review can widen that).
            if access is Access.REPLICATION:
                return Decision(True, "replica")
            return Decision(False, "replica_only", "a replica may only use the replication routes")
        if identity.via == "client-certificate" and identity.kind != "operator":
            return Decision(False, "unknown_certificate",
                            f"the client certificate names {identity.user!r}, neither the pods nor the operator")
        if access is Access.AUTHENTICATED:  # a known caller (a replica or an unknown certificate is not)
            return Decision(True, "authenticated")
        if identity.kind == "operator" and access in _OPERATOR_ACCESS:
            return Decision(True, "operator")
        attrs = review_attributes(access, table=table, shard_set=self.cfg.name)
        if attrs is None:
            return Decision(False, "admin_only", "this endpoint is for the ShardSet's pods and the operator only")
        return await self._review(identity, attrs)

    async def _review(self, identity: Identity, attrs: ReviewAttributes) -> Decision:
        key: DecisionKey = (identity.user, identity.groups, attrs.verb, attrs.resource, attrs.name)
        cached = self.cache.get(key)
        self.metrics.lookup("decision", cached is not None)
        if cached is not None:
            return cached
        return await self.inflight.run(key, lambda: self._ask(key, identity, attrs))

    async def _ask(self, key: DecisionKey, identity: Identity, attrs: ReviewAttributes) -> Decision:
        status = await self.api.subject_access_review(
            {"user": identity.user, "groups": list(identity.groups), **attrs.spec(self.cfg.namespace)})
        if status.get("allowed") and not status.get("denied"):
            decision = Decision(True, "rbac")
        else:
            decision = Decision(False, "rbac", f"{identity.user!r} may not {describe(attrs, self.cfg.namespace)}")
        self.cache.put(key, decision, self.cfg.cache_ttl_seconds)
        return decision


def describe(attrs: ReviewAttributes, namespace: str) -> str:
    """What RBAC would have to allow, in kubectl's words (for the 403 message)."""
    if attrs.resource == "nonresource":
        return f"{attrs.verb} the non-resource URL {attrs.name}"
    return (f"{attrs.verb} {attrs.resource} (group chronoshard.io) named {attrs.name!r} "
            f"in namespace {namespace!r}")
