"""Pluggable credential types: each finds no credential of its kind (None), proves an Identity, or refuses.

The chain tries them in order; the first that finds its kind of credential decides. The tiered tokens of
MirrorSet (temporary, provisional, valid) plug in as one more ``Authenticator`` in that chain.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from aiohttp import web

from . import jwtclaims
from .apiserver import ApiServer
from .config import SecurityConfig
from .identity import Identity, IdentityKind, Unauthenticated
from .metrics import AuthMetrics
from .peers import OWN_CAS
from .singleflight import SingleFlight
from .ttlcache import TTLCache

# RFC 6750 b64token: what a bearer token may be made of (anything else is malformed, and never reviewed).
_BEARER_RE = re.compile(r"Bearer +([A-Za-z0-9\-._~+/]+=*) *", re.IGNORECASE)
SA_PREFIX = "system:serviceaccount:"


class Authenticator(Protocol):
    """One credential type."""

    async def authenticate(self, request: web.Request) -> Identity | None:
        """The caller proven by this kind of credential; None if the request carries none of this kind;
        raises Unauthenticated when one is present but not acceptable."""


class AuthenticatorChain:
    """Tries each authenticator in order; the first that finds a credential of its kind decides."""

    def __init__(self, authenticators: Sequence[Authenticator]) -> None:
        self.authenticators = list(authenticators)

    async def authenticate(self, request: web.Request) -> Identity | None:
        """The first identity found, None if the request carries no credential any authenticator knows."""
        for authenticator in self.authenticators:
            identity = await authenticator.authenticate(request)
            if identity is not None:
                return identity
        return None


def classify(user: str, cfg: SecurityConfig) -> IdentityKind:
    """The kind of a user name: the operator's (operatorIdentities), the pods', a service account, a user."""
    if user in cfg.operator_identities:
        return "operator"
    if user == cfg.pod_identity:
        return "pod"
    return "serviceaccount" if user.startswith(SA_PREFIX) else "user"


def parse_bearer(header: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; Unauthenticated("malformed") otherwise."""
    m = _BEARER_RE.fullmatch(header)
    if m is None:
        raise Unauthenticated("malformed", "malformed Authorization header: it must be 'Bearer <token>'")
    return m.group(1)


Outcome = Identity | Unauthenticated


class BearerTokenAuthenticator:
    """``Authorization: Bearer``: a Kubernetes token checked with TokenReview for the ShardSet's audience;
    outcomes are cached by the Authorization header's SHA-256 for at most cacheTTLSeconds and never past its ``exp``."""

    def __init__(self, cfg: SecurityConfig, api: ApiServer, metrics: AuthMetrics, *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.cfg, self.api, self.metrics, self.wall = cfg, api, metrics, wall
        self.cache: TTLCache[bytes, Outcome] = TTLCache(cfg.cache_size, clock)
        self.inflight: SingleFlight[bytes, Outcome] = SingleFlight()

    async def authenticate(self, request: web.Request) -> Identity | None:
        """See ``Authenticator``."""
        header = request.headers.get("Authorization")
        if header is None:
            return None
        # Looked up by the whole header's digest first: a cached outcome needs no parsing, and an entry never
        # outlives the token's exp (see below), so a hit is never an expired token.
        digest = hashlib.sha256(header.encode()).digest()
        outcome = self.cache.get(digest)
        self.metrics.lookup("token", outcome is not None)
        if outcome is None:
            outcome = await self.inflight.run(digest, lambda: self._check(header, digest))
        if isinstance(outcome, Unauthenticated):
            raise outcome
        return outcome

    async def _check(self, header: str, digest: bytes) -> Outcome:
        """Parse, refuse an expired token before any review, review and cache the outcome."""
        token = parse_bearer(header)
        claims = jwtclaims.unverified_claims(token)
        exp = jwtclaims.expiry(claims)
        if exp is not None and exp <= self.wall():
            # Refused before any review: the exp is only read to say precisely why.
            raise Unauthenticated("expired", "the bearer token has expired: request a new one")
        outcome = await self._review(token, claims)
        ttl = self.cfg.cache_ttl_seconds if exp is None else min(self.cfg.cache_ttl_seconds, exp - self.wall())
        self.cache.put(digest, outcome, ttl)
        return outcome

    async def _review(self, token: str, claims: dict[str, Any] | None) -> Outcome:
        status = await self.api.token_review(token, [self.cfg.audience])
        if status.get("authenticated") and self.cfg.audience in (status.get("audiences") or [self.cfg.audience]):
            return self._identity(status, "token")
        if not _audience_refused(status, claims, self.cfg.audience):
            return Unauthenticated("invalid", "invalid bearer token: the API server's TokenReview refused it")
        if self.cfg.accept_kubeconfig_tokens:
            status = await self.api.token_review(token, None)
            if status.get("authenticated"):
                return self._identity(status, "kubeconfig-token")
        return Unauthenticated("wrong_audience", f"wrong audience: the bearer token is not for "
                               f"{self.cfg.audience!r}; request one with that audience")

    def _identity(self, status: dict[str, Any], via: str) -> Identity:
        user = status.get("user") or {}
        name = str(user.get("username", ""))
        groups = tuple(str(g) for g in user.get("groups") or ())
        return Identity(name, groups, classify(name, self.cfg), via)


def _audience_refused(status: dict[str, Any], claims: dict[str, Any] | None, audience: str) -> bool:
    """Did the review fail because of the audience: the API server says so, or it accepted the token for
    other audiences, or the token's own (unverified) aud does not name ours."""
    if "audience" in str(status.get("error", "")).lower() or status.get("authenticated"):
        return True
    aud = jwtclaims.audiences(claims)
    return aud is not None and audience not in aud


def _subject_cn(cert: dict[str, Any]) -> str | None:
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


class ClientCertificateAuthenticator:
    """The TLS client certificate, already verified by the server's SSL context against the ShardSet CA (and, with
    ``peers-ca.crt``, the peer members' CAs): a CN listed in replicaIdentities is a "replica"; otherwise, issued by
    the own CA, its CN is the pod identity or an operator identity, and any other CA-valid CN is a "user" whom the
    authorizer refuses (403: the certificate is genuine, it just names nobody allowed). A certificate issued only
    by a peer CA whose CN is no listed replica is refused (401): a peer never passes for the pods or the operator."""

    def __init__(self, cfg: SecurityConfig) -> None:
        self.cfg = cfg

    async def authenticate(self, request: web.Request) -> Identity | None:
        """See ``Authenticator``."""
        transport = request.transport
        if transport is None:
            return None
        ssl_object = transport.get_extra_info("ssl_object")
        # getpeercert() is empty unless a certificate was presented and verified in the handshake.
        cert = ssl_object.getpeercert() if ssl_object is not None else transport.get_extra_info("peercert")
        if not cert:
            return None
        cn = _subject_cn(cert)
        if cn is None:
            raise Unauthenticated("invalid", "the client certificate has no subject common name")
        if cn in self.cfg.replica_identities:
            return Identity(cn, (), "replica", "client-certificate")
        own = request.app.get(OWN_CAS)
        if own is not None and ssl_object is not None and not own.issued(ssl_object.getpeercert(binary_form=True)):
            raise Unauthenticated("invalid", f"the client certificate names {cn!r}, which is no replica identity of "
                                  "this ShardSet, and its CA is only trusted for replicas")
        kind = classify(cn, self.cfg)
        return Identity(cn, (), "user" if kind == "serviceaccount" else kind, "client-certificate")
