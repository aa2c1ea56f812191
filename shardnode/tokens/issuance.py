"""PredictiveTokenRequest and TokenRefresh: the requested scope, the RBAC check at issuance (SubjectAccessReview
for ``shardsets/data`` on the store's namespace, as docs/security.md), and the signed token with its registry row.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chronoshard.shardnode.auth import tokenformat
from chronoshard.shardnode.auth.apiserver import ApiServer
from chronoshard.shardnode.auth.identity import Identity
from chronoshard.shardnode.auth.policy import ReviewAttributes
from chronoshard.shardnode.auth.ttlcache import TTLCache

from .config import ServiceConfig
from .registry import TokenRow
from .signing import KeySet
from .tiers import Placement

DEFAULT_VERBS = ("get", "list")
ADMIN_KINDS = ("pod", "operator")
REVIEW_CACHE_SECONDS = 10.0


class BadRequest(ValueError):
    """A request outside the API's shape (400)."""


@dataclass(frozen=True)
class TokenRequest:
    """What a PredictiveTokenRequest asks for."""

    service: str
    scope: tokenformat.Scope


def is_admin(identity: Identity | None) -> bool:
    """The pods of the service and the operator administer the registry (without auth: everyone, tests only)."""
    return identity is None or identity.kind in ADMIN_KINDS


def caller_name(identity: Identity | None) -> str:
    """The caller's user name (``anonymous`` without authentication)."""
    return identity.user if identity is not None else "anonymous"


def _strings(value: Any, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise BadRequest(f"{what} must be a list of non-empty strings")
    return tuple(value)


def parse_request(body: Any, identity: Identity | None) -> TokenRequest:
    """``{"serviceId"?, "dataBlockId"?: "<table>/<key>", "table"?, "verbs"?}``; serviceId is the caller's own
    unless the caller is an admin."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    caller = caller_name(identity)
    service = body.get("serviceId", caller)
    if not isinstance(service, str) or not service:
        raise BadRequest("serviceId must be a non-empty string")
    if service != caller and not is_admin(identity):
        raise PermissionError("serviceId must be the caller's own identity")
    verbs = _strings(body.get("verbs"), "verbs") or DEFAULT_VERBS
    if any(v not in tokenformat.VERBS for v in verbs):
        raise BadRequest(f"verbs must be among {', '.join(tokenformat.VERBS)}")
    block, table = body.get("dataBlockId"), body.get("table")
    if table is not None and (not isinstance(table, str) or not table):
        raise BadRequest("table must be a non-empty string")
    tables, keys = (table,) if table else None, None
    if block is not None:
        if not isinstance(block, str) or "/" not in block or not all(block.split("/", 1)):
            raise BadRequest("dataBlockId must be <table>/<key>")
        block_table, key = block.split("/", 1)
        if table is not None and table != block_table:
            raise BadRequest("table and dataBlockId name different tables")
        tables, keys = (block_table,), (key,)
    return TokenRequest(service, tokenformat.Scope(verbs=tuple(dict.fromkeys(verbs)), tables=tables, keys=keys))


class ScopeReviewer:
    """May the caller have this scope on this store: one SubjectAccessReview per (verb, table), cached 10 s."""

    def __init__(self, api: ApiServer | None, clock: Any = time.monotonic) -> None:
        self.api = api
        self.cache: TTLCache[tuple[str, tuple[str, ...], str, str, str], bool] = TTLCache(10000, clock)

    async def allowed(self, identity: Identity | None, scope: tokenformat.Scope | Mapping[str, Any],
                      store: str) -> bool:
        """True when every verb on every table of the scope is allowed (admins and no-auth: always)."""
        if self.api is None or is_admin(identity) or identity is None:
            return True
        if not isinstance(scope, tokenformat.Scope):
            scope = tokenformat.Scope.from_json(dict(scope))
        namespace = store.split("/", 1)[0]
        for verb in scope.verbs:
            for table in scope.tables or ("",):  # "" : every table (no resource name)
                if not await self._one(identity, verb, table, namespace):
                    return False
        return True

    async def _one(self, identity: Identity, verb: str, table: str, namespace: str) -> bool:
        key = (identity.user, identity.groups, verb, table, namespace)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        assert self.api is not None
        attrs = ReviewAttributes(verb, "shardsets/data", table)
        spec = {"user": identity.user, "groups": list(identity.groups), **attrs.spec(namespace)}
        if not table:
            spec["resourceAttributes"].pop("name", None)
        status = await self.api.subject_access_review(spec)
        allowed = bool(status.get("allowed")) and not status.get("denied")
        self.cache.put(key, allowed, REVIEW_CACHE_SECONDS)
        return allowed


def mint(cfg: ServiceConfig, keys: KeySet, service: str, scope: Mapping[str, Any] | tokenformat.Scope,
         place: Placement, now: float, lsn: dict[str, int] | None, *, delivered: bool = True) -> tuple[str, TokenRow]:
    """Sign a token of ``place`` for ``service`` and the registry row that records it."""
    if not isinstance(scope, tokenformat.Scope):
        scope = tokenformat.Scope.from_json(dict(scope))
    issued = int(now)
    expires = issued + max(1, int(cfg.ttl(place.tier)))
    claims = tokenformat.Claims(
        iss=tokenformat.issuer_for(cfg.mirror_set), sub=service, jti=uuid.uuid4().hex, iat=issued, exp=expires,
        tier=place.tier, store=place.store, scope=scope, ms=cfg.mirror_set,
        lsn=(lsn or {}) if place.tier == "provisional" else None)
    token = tokenformat.encode(claims, keys.private, keys.kid)
    row = TokenRow(token_id=claims.jti, service=service, scope=scope.to_json(), tier=place.tier, store=place.store,
                   issued_at=now, expires_at=float(expires), state="active", superseded_by=None,
                   kid=keys.kid, lsn=claims.lsn, delivered=delivered)
    return token, row


def token_body(token: str, row: TokenRow, risk: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The answer of a request or refresh, and a status check's ``replacement``."""
    body: dict[str, Any] = {"token": token, "tokenId": row.token_id, "tier": row.tier, "store": row.store,
                            "expiresAt": row.expires_at}
    if row.lsn is not None:
        body["lsn"] = row.lsn
    if risk is not None:
        body["risk"] = dict(risk)
    return body
