"""The auth middleware: authenticate, then authorize, then the handler; refusals, metrics, one audit line.

``Guard`` bundles one server's authenticator chain, authorizer and counters; the scaffold installs its
``middleware`` in every server built with a security config (serving/scaffold.py, ``secure_app``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from .apiserver import ApiServer
from .audit import WRITER, audit
from .authenticators import (
    Authenticator,
    AuthenticatorChain,
    BearerTokenAuthenticator,
    ClientCertificateAuthenticator,
)
from .authorizer import Authorizer, Decision
from .config import SecurityConfig
from .identity import AuthUnavailable, Identity, Unauthenticated
from .metrics import AuthMetrics
from .policy import Access
from .tiered import TieredTokenAuthenticator
from .writer import IDENTITY_KEY, is_queued_apply

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# (method, route template) -> the route's access rule; None = declared without one (refused).
PolicyTable = Mapping[tuple[str, str], Access | None]
# The block writes a replica may make when it applies a queued write (writer.is_queued_apply).
QUEUED_APPLY_ACCESS = frozenset({Access.DATA_UPDATE, Access.DATA_DELETE})
MISSING = Unauthenticated("missing", "no credential: send 'Authorization: Bearer <token>' with a token for this "
                          "ShardSet's audience, or a client certificate")


def unauthenticated_response(exc: Unauthenticated) -> web.Response:
    """401 with the fixed body (the message names what was wrong, never the credential)."""
    return web.json_response({"error": "unauthenticated", "reason": exc.reason, "message": exc.message}, status=401,
                             headers={"WWW-Authenticate": "Bearer"})


def forbidden_response(decision: Decision) -> web.Response:
    """403 with the fixed body."""
    return web.json_response({"error": "forbidden", "reason": decision.reason, "message": decision.message},
                             status=403)


def unavailable_response(exc: AuthUnavailable) -> web.Response:
    """503: the API server could not be asked; retry (nothing is let through unchecked)."""
    return web.json_response({"error": "unavailable", "message": f"cannot check the credential now: {exc}"},
                             status=503, headers={"Retry-After": "1"})


class Guard:
    """One server's authentication and authorization. ``authenticators`` go first in the chain (the place
    for more credential types); the client certificate and the bearer token follow."""

    def __init__(self, cfg: SecurityConfig, api: ApiServer, registry: CollectorRegistry, server: str, *,
                 authenticators: Sequence[Authenticator] = ()) -> None:
        self.cfg, self.api = cfg, api
        self.metrics = AuthMetrics(registry, server)
        # The extra authenticator that authorizes its own identities (the tiered tokens: scope and tier, offline).
        self.tiered = next((a for a in authenticators if isinstance(a, TieredTokenAuthenticator)), None)
        self.chain = AuthenticatorChain([*authenticators, ClientCertificateAuthenticator(cfg),
                                         BearerTokenAuthenticator(cfg, api, self.metrics)])
        self.authorizer = Authorizer(cfg, api, self.metrics)

    async def start(self, app: web.Application | None = None) -> None:
        """Start writing audit lines off the event loop (an on_startup hook)."""
        WRITER.start()

    async def close(self, app: web.Application | None = None) -> None:
        """Write the queued audit lines, close the API-server session (an on_cleanup hook)."""
        WRITER.stop()
        await self.api.close()

    def audit(self, identity: Identity | None, method: str, route: str, table: str | None, key: str | None,
              status: int, reason: str) -> None:
        """One audit line (a full queue is counted in this server's metrics)."""
        audit(identity, method, route, table, key, status, reason, on_full=self.metrics.audit_queue_full.inc)

    async def decide(self, request: web.Request, access: Access | None, matched: bool,
                     table: str | None) -> tuple[Identity | None, web.Response | None]:
        """The caller and, if refused, the refusal to send (counted)."""
        identity: Identity | None = None
        try:
            identity = await self.chain.authenticate(request)
            if identity is None:
                raise MISSING
            # A path or method no route serves gets its 404/405 once the caller is known.
            if not matched:
                decision = Decision(True, "unmatched")
            elif identity.kind == "tiered" and self.tiered is not None:
                decision = self.tiered.authorize(request, access, table, request.match_info.get("key"))
            elif access in QUEUED_APPLY_ACCESS and is_queued_apply(identity, request.headers):
                # A peer member's node applies a write it queued: the tiered token was checked (scope, tier)
                # where it was queued; the peer holds the same keys and replicates every block already.
                decision = Decision(True, "replica_queued")
            else:
                decision = await self.authorizer.authorize(identity, access, table)
        except Unauthenticated as exc:
            self.metrics.decision("unauthenticated", exc.reason)
            return identity, unauthenticated_response(exc)
        except AuthUnavailable as exc:
            self.metrics.decision("unavailable", "apiserver")
            return identity, unavailable_response(exc)
        self.metrics.decision("allowed" if decision.allowed else "forbidden", decision.reason)
        return identity, None if decision.allowed else forbidden_response(decision)

    def middleware(self, policies: PolicyTable) -> Any:
        """The aiohttp middleware over ``policies`` (the app's table of routes)."""
        # (method, route object) -> (template, access), filled once per route: the per-request lookup is one
        # dict probe instead of the template's string and the table's tuple key. Only matched routes are kept
        # (aiohttp makes a new system route for every 404/405), so it holds at most one entry per route.
        routes: dict[tuple[str, object], tuple[str, Access | None]] = {}

        def route_policy(request: web.Request) -> tuple[bool, str, Access | None]:
            info = request.match_info
            known = routes.get((request.method, info.route))
            if known is not None:
                return True, known[0], known[1]
            resource = info.route.resource
            matched = resource is not None and info.http_exception is None
            template = resource.canonical if resource is not None else "unmatched"
            access = policies.get(("GET" if request.method == "HEAD" else request.method, template))
            if matched:
                routes[(request.method, info.route)] = (template, access)
            return matched, template, access

        @web.middleware
        async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            matched, route, access = route_policy(request)
            if matched and access is Access.PUBLIC:
                return await handler(request)
            info = request.match_info
            table, key = info.get("table"), info.get("key")
            identity, refusal = await self.decide(request, access, matched, table)
            if refusal is not None:
                self.audit(identity, request.method, route, table, key, refusal.status, "refused")
                return refusal
            if identity is not None:  # for handlers: who writes (writer.py), never re-authenticated
                request[IDENTITY_KEY] = identity
            status = 499  # the client went away before an answer (cancelled)
            try:
                resp = await handler(request)
                status = resp.status
                return resp
            except Exception as exc:
                status = int(getattr(exc, "status", 500))
                raise
            finally:
                self.audit(identity, request.method, route, table, key, status, "allowed")

        return auth_middleware
