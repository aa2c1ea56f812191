"""The session and CSRF checks in front of every ``/api/`` route, and the headers every answer carries.

Every ``/api/`` route except signing in needs a live session (cookie ``chronoshard_console``), else 401; every
state-changing one (POST, PATCH, PUT, DELETE) also needs ``X-CSRF-Token`` equal to the session's, else 403. The
cookie is SameSite=Strict as well: the header is what a forged cross-site request cannot set.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from chronoshard.shardnode.serving.http_common import ApiError

from .proxyauth import PROXY_IDENTITY, ProxyIdentity
from .sessions import Session
from .state import CONSOLE

COOKIE = "chronoshard_console"
CSRF_HEADER = "X-CSRF-Token"
SESSION_PATH = "/api/v1/session"
STATE_CHANGING = frozenset({"POST", "PATCH", "PUT", "DELETE"})
SESSION = web.RequestKey("chronoshard_console_session", Session)
# Same-origin only; inline styles allowed because the vendored chart library sets them.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def needs_session(method: str, path: str) -> bool:
    """Every ``/api/`` route but signing in (POST /api/v1/session)."""
    return path.startswith("/api/") and not (method == "POST" and path == SESSION_PATH)


def needs_csrf(method: str, path: str) -> bool:
    """A state-changing ``/api/`` request other than signing in."""
    return method in STATE_CHANGING and needs_session(method, path)


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 without a live session, 403 ``csrf`` without the session's CSRF token on a state-changing request."""
    if needs_session(request.method, request.path):
        session = request.app[CONSOLE].sessions.get(request.cookies.get(COOKIE))
        if session is None:
            # authProxy: the request came through the trusted auth proxy, so the page signs in with POST {} itself.
            raise ApiError(401, "unauthenticated", "sign in first (POST /api/v1/session with a Kubernetes token)",
                           authProxy=request.get(PROXY_IDENTITY) is not None)
        if session.proxied and request.get(PROXY_IDENTITY) != ProxyIdentity(session.user, session.groups):
            # A proxied session is only as good as the proxy's word on this very request.
            raise ApiError(401, "unauthenticated", "the auth proxy no longer names this session's user")
        if needs_csrf(request.method, request.path) and not session.csrf_matches(request.headers.get(CSRF_HEADER)):
            raise ApiError(403, "csrf", f"missing or wrong {CSRF_HEADER} header (GET /api/v1/session gives it)")
        request[SESSION] = session
        try:
            return await handler(request)
        except ApiError as exc:
            if exc.status == 401:
                # The API server no longer accepts the user's token (expired, revoked): the session ends with it.
                request.app[CONSOLE].sessions.delete(request.cookies.get(COOKIE))
            raise
    return await handler(request)


@web.middleware
async def headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Security headers on every answer; API answers are never cached (they hold what RBAC let this user see)."""
    resp = await handler(request)
    for name, value in SECURITY_HEADERS.items():
        resp.headers.setdefault(name, value)
    if request.path.startswith("/api/"):
        resp.headers["Cache-Control"] = "no-store"
    return resp
