"""Tiered tokens of a MirrorSet (docs/tokens.md, "Enforcement in nodes and caches"): verified offline with the
public keys of ``tokens.json`` (re-read when the mounted file changes), the revocation set the token service pushes,
the authorization rule for ``kind == "tiered"`` and the tier rules (``wrong_store``, queued writes).

Nothing of a token is ever logged, audited or put in an error but its id (``jti``).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import jwtclaims, tokenformat
from .authorizer import Decision
from .identity import Identity, Unauthenticated
from .policy import DATA_VERBS, Access
from .ttlcache import TTLCache
from .writer import IDENTITY_KEY

log = logging.getLogger(__name__)

ISSUER_PREFIX = tokenformat.ISSUER_PREFIX
TOKENS_FILE = "tokens.json"
# A server that knows the tiered-token claims of a request keeps them here (the authenticator sets it).
TIERED_CLAIMS = web.RequestKey("chronoshard_tiered_claims", tokenformat.Claims)
# The pod identity (a cache) asks its node to queue a write it received with a temporary token; the value names the
# token's subject (the owner of the queued write). Honoured from the pod identity only, like On-Behalf-Of.
QUEUE_HEADER = "X-Chronoshard-Queue-Write"
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 128
_BEARER_RE = re.compile(r"Bearer +([A-Za-z0-9\-._~+/]+=*) *", re.IGNORECASE)
WRITE_ACCESS = (Access.DATA_UPDATE, Access.DATA_DELETE)


class TokensConfigError(ValueError):
    """tokens.json is not usable."""


@dataclass(frozen=True)
class TokensConfig:
    """The parsed tokens.json: who issues, with which keys, for which MirrorSet and its member ShardSets."""

    issuer: str
    mirror_set: str
    keys: Mapping[str, Ed25519PublicKey]
    store: str
    members: tuple[str, ...]
    service_url: str | None = None  # the token service (its revocations are pulled from there)
    service_server_name: str | None = None


def parse_tokens_config(doc: Any) -> TokensConfig:
    """Validate a tokens.json document (docs/tokens.md, "The token")."""
    if not isinstance(doc, dict):
        raise TokensConfigError("tokens.json must be a JSON object")
    issuer, ms = doc.get("issuer"), doc.get("mirrorSet")
    if not isinstance(issuer, str) or not issuer.startswith(ISSUER_PREFIX):
        raise TokensConfigError(f"issuer must be a string starting with {ISSUER_PREFIX!r}")
    if not isinstance(ms, str) or not ms:
        raise TokensConfigError("mirrorSet must be a non-empty string")
    entries = doc.get("keys") or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise TokensConfigError("keys must be a list of {kid, publicKey}")
    keys = tokenformat.public_keys_from_json(entries)
    if len(keys) != len(entries):
        raise TokensConfigError("every key needs a kid and a base64 raw 32-byte Ed25519 publicKey")
    members = doc.get("members") or []
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise TokensConfigError("members must be a list of namespace/name strings")
    store = doc.get("store") or ""
    service = doc.get("service") or {}
    if not isinstance(service, dict):
        raise TokensConfigError("service must be an object {url, serverName}")
    url, server_name = service.get("url"), service.get("serverName")
    return TokensConfig(issuer, ms, keys, str(store), tuple(members),
                        url if isinstance(url, str) and url else None,
                        server_name if isinstance(server_name, str) and server_name else None)


class RevocationSet:
    """Revoked token ids until their ``exp``: bounded, an entry is dropped once its token expired (it is refused as
    expired then anyway); past ``max_entries`` the soonest-expiring go first."""

    def __init__(self, max_entries: int = 100_000, wall: Callable[[], float] = time.time) -> None:
        self.max_entries, self.wall = max_entries, wall
        self._exp: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def add(self, jti: str, exp: float) -> bool:
        """Revoke ``jti`` until ``exp``; False when it had already expired (nothing kept)."""
        self.prune()
        if exp <= self.wall():
            return False
        if self._exp.get(jti, -1.0) >= exp:
            return True
        self._exp[jti] = exp
        heapq.heappush(self._heap, (exp, jti))
        while len(self._exp) > self.max_entries:
            self._pop()
        return True

    def __contains__(self, jti: object) -> bool:
        exp = self._exp.get(jti) if isinstance(jti, str) else None
        return exp is not None and exp > self.wall()

    def __len__(self) -> int:
        self.prune()
        return len(self._exp)

    def prune(self) -> None:
        """Drop every entry whose token has expired."""
        now = self.wall()
        while self._heap and self._heap[0][0] <= now:
            self._pop()

    def _pop(self) -> None:
        exp, jti = heapq.heappop(self._heap)
        if self._exp.get(jti) == exp:  # a later add of the same id left a stale heap entry
            del self._exp[jti]

    def entries(self) -> list[dict[str, Any]]:
        """The revoked ids still in force, soonest expiry first."""
        self.prune()
        return [{"tokenId": j, "expiresAt": e} for j, e in sorted(self._exp.items(), key=lambda kv: kv[1])]


def parse_revocations(doc: Any) -> list[tuple[str, float]]:
    """``{"revocations": [{"tokenId", "expiresAt"}]}`` (``jti``/``exp`` accepted too) → (id, exp) pairs."""
    items = doc.get("revocations") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ValueError("body must be {\"revocations\": [{\"tokenId\": ..., \"expiresAt\": ...}]}")
    out: list[tuple[str, float]] = []
    for item in items:
        jti = item.get("tokenId", item.get("jti")) if isinstance(item, dict) else None
        exp = item.get("expiresAt", item.get("exp")) if isinstance(item, dict) else None
        if not isinstance(jti, str) or not 0 < len(jti) <= 128 or isinstance(exp, bool) \
                or not isinstance(exp, int | float):
            raise ValueError("each revocation needs a tokenId (1-128 chars) and a numeric expiresAt")
        out.append((jti, float(exp)))
    return out


# ---- authorization and tier rules (pure) ---------------------------------------------------------------
def authorize(claims: tokenformat.Claims, access: Access | None, table: str | None, key: str | None) -> Decision:
    """The rule for a tiered token: a data route whose verb, table and key its scope names, or the partition map
    (``GET /v1/partitions``, to route); nothing else."""
    if access is None:
        return Decision(False, "no_policy", "this route declares no access policy and is refused")
    if access is Access.PARTITIONS:  # the partition map: what a client needs to route its data requests
        return Decision(True, "tiered")
    verb = DATA_VERBS.get(access)
    if verb is None:
        return Decision(False, "tiered_token_not_allowed",
                        "tiered tokens are for data routes and the partition map only (not admin, replication or "
                        "metrics)")
    scope = claims.scope
    if verb not in scope.verbs:
        return Decision(False, "scope", f"the token's scope does not allow {verb!r}")
    if table is not None and scope.tables is not None and table not in scope.tables:
        return Decision(False, "scope", f"the token's scope does not include table {table!r}")
    if key is not None and scope.keys is not None and key not in scope.keys:
        return Decision(False, "scope", "the token's scope does not include this key")
    return Decision(True, "tiered")


def tier_rule(claims: tokenformat.Claims, serving: str, members: Iterable[str], access: Access | None) -> Decision:
    """The tier rules on the serving ShardSet ``serving`` (``namespace/name``): valid and provisional only where
    ``store`` names; temporary on any member of ``members`` (tokens.json; reads there, writes queued: reason
    ``queue``) when its ``store`` is a member too."""
    if claims.tier == "temporary":
        known = set(members)
        # Any member of the token's MirrorSet, the token's store among them (without a member list: its store).
        inside = serving in known and claims.store in known if known else serving == claims.store
        if not inside:
            return Decision(False, "wrong_store", f"a temporary token of {claims.ms} for {claims.store} does not "
                            f"work on {serving}")
        return Decision(True, "queue" if access in WRITE_ACCESS else "tiered")
    if serving != claims.store:
        return Decision(False, "wrong_store",
                        f"a {claims.tier} token works only against {claims.store}, not {serving}")
    return Decision(True, "tiered")


def must_queue(request: web.Request) -> str | None:
    """The owner (the token's subject) when this block write is to be queued, not applied: a temporary token's
    write here, or a write the pod identity (a cache) passes on with ``QUEUE_HEADER``; None otherwise."""
    identity = request.get(IDENTITY_KEY)
    if identity is None:
        return None
    if identity.kind == "tiered":
        claims = request.get(TIERED_CLAIMS)
        return identity.user if claims is not None and claims.tier == "temporary" else None
    if identity.kind == "pod":
        owner = request.headers.get(QUEUE_HEADER)
        return owner if owner and len(owner) <= 256 and owner.isprintable() else None
    return None


def idempotency_key(request: web.Request) -> str | None:
    """The request's ``Idempotency-Key`` (1-128 printable characters), None when absent; ValueError when bad."""
    value = request.headers.get(IDEMPOTENCY_HEADER)
    if value is None:
        return None
    if not 0 < len(value) <= MAX_IDEMPOTENCY_KEY or not value.isprintable():
        raise ValueError(f"{IDEMPOTENCY_HEADER} must be 1-{MAX_IDEMPOTENCY_KEY} printable characters")
    return value


# ---- the authenticator ---------------------------------------------------------------------------------
class TokensFile:
    """tokens.json, read again when its resolved target, inode, size or mtime changes (stat'ed at most every
    ``interval`` seconds); a file that does not parse keeps the keys in force (one log line)."""

    def __init__(self, path: Path, interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self.interval, self.clock = path, interval, clock
        self.config: TokensConfig | None = None
        self.generation = 0
        self._seen: tuple[Any, ...] | None = None
        self._checked = float("-inf")

    def current(self) -> TokensConfig | None:
        """The config in force (None: no tokens.json)."""
        now = self.clock()
        if now - self._checked >= self.interval:
            self._checked = now
            self._reload()
        return self.config

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
            stamp: tuple[Any, ...] = (os.path.realpath(self.path), st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = ("missing",)
        if stamp == self._seen:
            return
        self._seen = stamp
        if stamp == ("missing",):
            self.config, self.generation = None, self.generation + 1
            return
        try:
            self.config = parse_tokens_config(json.loads(self.path.read_text()))
            self.generation += 1
        except (OSError, ValueError) as exc:
            log.error("%s not usable, keeping the tiered-token keys in force: %s", self.path, exc)


class TieredTokenAuthenticator:
    """First in the chain: a bearer token whose unverified ``iss`` starts with ``chronoshard-tokens:`` is verified
    offline (signature by its ``kid``'s key, ``exp``, ``aud``, ``iss``, not revoked); any other request is left to
    the next authenticator. Verified claims are cached by the header's SHA-256 until their ``exp`` (revocation and
    expiry are checked on every request; the cache is emptied when the keys change)."""

    def __init__(self, tokens: TokensFile, serving: str, revocations: RevocationSet | None = None, *,
                 wall: Callable[[], float] = time.time, cache_size: int = 10_000) -> None:
        self.tokens, self.serving, self.wall = tokens, serving, wall
        self.revocations = revocations if revocations is not None else RevocationSet(wall=wall)
        self._cache: TTLCache[bytes, tokenformat.Claims] = TTLCache(cache_size, time.monotonic)
        self._generation = -1

    async def authenticate(self, request: web.Request) -> Identity | None:
        """See ``authenticators.Authenticator``."""
        header = request.headers.get("Authorization")
        if header is None:
            return None
        claims = self.verify_header(header)
        if claims is None:
            return None
        request[TIERED_CLAIMS] = claims
        return Identity(claims.sub, (), "tiered", "tiered-token")

    def verify_header(self, header: str) -> tokenformat.Claims | None:
        """The verified claims of a tiered token in ``header``; None when it is no tiered token; Unauthenticated
        with the contract's reason otherwise."""
        cfg = self.tokens.current()
        if self.tokens.generation != self._generation:  # new keys: nothing verified with the old ones stays
            self._cache = TTLCache(self._cache.size, time.monotonic)
            self._generation = self.tokens.generation
        digest = hashlib.sha256(header.encode()).digest()
        claims = self._cache.get(digest)
        if claims is None:
            m = _BEARER_RE.fullmatch(header)
            unverified = jwtclaims.unverified_claims(m.group(1)) if m else None
            if unverified is None or not str(unverified.get("iss", "")).startswith(ISSUER_PREFIX):
                return None
            claims = self._verify(m.group(1) if m else "", cfg)
            self._cache.put(digest, claims, claims.exp - self.wall())
        now = self.wall()
        if claims.exp <= now:
            raise Unauthenticated(tokenformat.REASON_EXPIRED, f"the tiered token {claims.jti} has expired: refresh it")
        if claims.jti in self.revocations:
            raise Unauthenticated(tokenformat.REASON_REVOKED, f"the tiered token {claims.jti} was revoked")
        return claims

    def _verify(self, token: str, cfg: TokensConfig | None) -> tokenformat.Claims:
        if cfg is None:
            raise Unauthenticated(tokenformat.REASON_UNKNOWN_KEY,
                                  "this server has no tiered-token keys (no tokens.json)")
        try:
            return tokenformat.decode_verified(token, cfg.keys, self.wall(), issuer=cfg.issuer)
        except tokenformat.TokenError as exc:
            # The detail names the failing check (audience, kid, ...), never the token.
            raise Unauthenticated(exc.reason, f"tiered token refused ({exc.reason}: {exc.detail})") from None

    def authorize(self, request: web.Request, access: Access | None, table: str | None,
                  key: str | None) -> Decision:
        """Scope, then tier (docs/tokens.md); the request's claims were set by ``authenticate``."""
        claims = request[TIERED_CLAIMS]
        decision = authorize(claims, access, table, key)
        if not decision.allowed:
            return decision
        cfg = self.tokens.current()
        return tier_rule(claims, self.serving, cfg.members if cfg is not None else (), access)
