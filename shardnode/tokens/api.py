"""The token service's routes (docs/tokens.md, "The token service"): PredictiveTokenRequest, TokenStatusCheck,
TokenRefresh, revoke, the registry, keys, revocations, risk and status."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from chronoshard.shardnode.auth.identity import Identity
from chronoshard.shardnode.auth.policy import Access
from chronoshard.shardnode.auth.writer import IDENTITY_KEY
from chronoshard.shardnode.serving.http_common import ApiError
from chronoshard.shardnode.serving.scaffold import Route

from .config import ServiceConfig
from .issuance import BadRequest, caller_name, is_admin, mint, parse_request, token_body
from .registry import TokenRow
from .tiers import refresh_decision

if TYPE_CHECKING:
    from .server import TokenService


def _service(request: web.Request) -> TokenService:
    from .server import SERVICE

    return request.app[SERVICE]


def _identity(request: web.Request) -> Identity | None:
    identity = request.get(IDENTITY_KEY)
    return identity if isinstance(identity, Identity) else None


def _config(svc: TokenService) -> ServiceConfig:
    cfg = svc.config_file.current
    if cfg is None:
        raise ApiError(503, "not_configured", "tokens-service.json is missing or not valid")
    return cfg


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(400, "bad_request", "body must be JSON") from None


def _own_row(svc: TokenService, request: web.Request) -> TokenRow:
    """The token named in the path, if the caller is its ``sub`` or an admin (404 otherwise: no probing)."""
    row = svc.registry.get(request.match_info["id"])
    identity = _identity(request)
    if row is None or (row.service != caller_name(identity) and not is_admin(identity)):
        raise ApiError(404, "not_found", "no such token")
    return row


def _risk_now(svc: TokenService, cfg: ServiceConfig) -> dict[str, float]:
    member = svc.risks.get(cfg.active_store)
    if member is None:
        return {}
    return {str(int(w)): round(p, 6) for w, p in sorted(member.risk.probabilities.items())}


async def request_token(request: web.Request) -> web.StreamResponse:
    """POST /v1/tokens: PredictiveTokenRequest."""
    started = time.perf_counter()
    svc = _service(request)
    cfg = _config(svc)
    identity = _identity(request)
    try:
        req = parse_request(await _body(request), identity)
    except BadRequest as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    except PermissionError as exc:
        raise ApiError(403, "forbidden", str(exc)) from None
    place = svc.target(cfg, None)
    if not await svc.reviewer.allowed(identity, req.scope, place.store):
        raise ApiError(403, "forbidden", f"{caller_name(identity)!r} may not have this scope on {place.store}")
    now = time.time()
    token, row = mint(cfg, svc.signing.keys, req.service, req.scope, place, now, svc.lsn(cfg, place.store))
    svc.registry.insert(row)
    svc.metrics.issued.labels(row.tier, "request").inc()
    svc.metrics.latency.labels("request").observe(time.perf_counter() - started)
    return web.json_response(token_body(token, row, _risk_now(svc, cfg)), status=201)


async def token_status(request: web.Request) -> web.StreamResponse:
    """GET /v1/tokens/{id}: TokenStatusCheck."""
    svc = _service(request)
    cfg = _config(svc)
    row = _own_row(svc, request)
    now = time.time()
    replacement = None
    if row.replacement and row.state == "active":
        new = svc.registry.get(_jti(row.replacement))
        if new is not None and new.state == "active" and now < new.expires_at:
            replacement = token_body(row.replacement, new)
            svc.registry.mark_delivered(new.token_id)
    return web.json_response({
        "tokenId": row.token_id, "state": row.state_at(now), "tier": row.tier, "store": row.store,
        "service": row.service, "scope": row.scope, "issuedAt": row.issued_at, "expiresAt": row.expires_at,
        "supersededBy": row.superseded_by, "recommendedTier": svc.target(cfg, row.tier).tier,
        "replacement": replacement})


def _jti(token: str) -> str:
    from chronoshard.shardnode.auth.jwtclaims import unverified_claims

    claims = unverified_claims(token) or {}
    return str(claims.get("jti", ""))


async def refresh_token(request: web.Request) -> web.StreamResponse:
    """POST /v1/tokens/{id}/refresh: TokenRefresh."""
    started = time.perf_counter()
    svc = _service(request)
    cfg = _config(svc)
    row = _own_row(svc, request)
    now = time.time()
    target = svc.target(cfg, row.tier)
    allowed = await svc.reviewer.allowed(_identity(request), row.scope, target.store) \
        if row.state == "active" else True
    decision = refresh_decision(state=row.state, tier=row.tier, expires_at=row.expires_at, now=now,
                                scope_allowed=allowed, target=target)
    if decision.action == "refuse":
        raise ApiError(409, "refresh_refused", f"refresh refused: {decision.reason}", reason=decision.reason)
    token, new = mint(cfg, svc.signing.keys, row.service, row.scope, target, now, svc.lsn(cfg, target.store))
    svc.registry.insert(new)
    svc.registry.supersede(row.token_id, new.token_id)
    svc.metrics.issued.labels(new.tier, "refresh").inc()
    svc.metrics.latency.labels("refresh").observe(time.perf_counter() - started)
    body = token_body(token, new, _risk_now(svc, cfg))
    body["action"] = decision.action
    body["previous"] = row.token_id
    return web.json_response(body)


async def revoke_token(request: web.Request) -> web.StreamResponse:
    """DELETE /v1/tokens/{id}: revoke, pushed to every node and cache."""
    svc = _service(request)
    row = _own_row(svc, request)
    revoked = svc.registry.revoke(row.token_id, time.time())
    assert revoked is not None
    svc.metrics.revoked.inc()
    result = await svc.pusher.push(row.token_id, row.expires_at)
    return web.json_response({"revoked": True, "tokenId": row.token_id, "pushedTo": result.pushed,
                              "pending": result.pending})


def _int_query(request: web.Request, name: str, default: int, hi: int) -> int:
    try:
        value = int(request.query.get(name, default))
    except ValueError:
        raise ApiError(400, "bad_request", f"{name} must be an integer") from None
    return max(0, min(hi, value))


async def list_tokens(request: web.Request) -> web.StreamResponse:
    """GET /v1/tokens: the registry (admin)."""
    svc = _service(request)
    rows = svc.registry.listing(service=request.query.get("service"), state=request.query.get("state"),
                                now=time.time(), limit=_int_query(request, "limit", 100, 10000))
    now = time.time()
    return web.json_response({"tokens": [
        {"tokenId": r.token_id, "service": r.service, "scope": r.scope, "tier": r.tier, "store": r.store,
         "issuedAt": r.issued_at, "expiresAt": r.expires_at, "state": r.state_at(now),
         "supersededBy": r.superseded_by, "kid": r.kid} for r in rows]})


async def keys(request: web.Request) -> web.StreamResponse:
    """GET /v1/keys: the public keys, as tokens.json's ``keys``."""
    svc = _service(request)
    cfg = svc.config_file.current
    return web.json_response({"keys": svc.signing.keys.published(), "signingKid": svc.signing.keys.kid,
                              "issuer": f"chronoshard-tokens:{cfg.mirror_set}" if cfg else None})


async def revocations(request: web.Request) -> web.StreamResponse:
    """GET /v1/revocations?since=: revoked ids not yet expired after the cursor."""
    svc = _service(request)
    items, cursor = svc.registry.revocations(_int_query(request, "since", 0, 2**62), time.time())
    return web.json_response({"revocations": items, "cursor": cursor})


async def risk(request: web.Request) -> web.StreamResponse:
    """GET /v1/risk."""
    return web.json_response(_service(request).risk_document())


async def status(request: web.Request) -> web.StreamResponse:
    """GET /v1/status (admin): counts per tier and state, last push, model, active store."""
    svc = _service(request)
    cfg = svc.config_file.current
    return web.json_response({
        "tokens": svc.registry.counts(time.time()), "lastPush": svc.pusher.last_push,
        "pendingPushTargets": svc.pusher.pending_targets(), "model": svc.engine.state.to_json(),
        "activeStore": cfg.active_store if cfg else None,
        "operation": None if cfg is None or cfg.operation is None else
        {"kind": cfg.operation.kind, "from": cfg.operation.source, "to": cfg.operation.target},
        "recommendedTier": svc.target(cfg, None).tier if cfg else None, "samples": svc.sampled,
        "signingKid": svc.signing.keys.kid})


def routes() -> list[Route]:
    """Every route with its access rule."""
    return [
        Route("POST", "/v1/tokens", request_token, Access.AUTHENTICATED),
        Route("GET", "/v1/tokens", list_tokens, Access.ADMIN),
        Route("GET", "/v1/tokens/{id}", token_status, Access.AUTHENTICATED),
        Route("POST", "/v1/tokens/{id}/refresh", refresh_token, Access.AUTHENTICATED),
        Route("DELETE", "/v1/tokens/{id}", revoke_token, Access.AUTHENTICATED),
        Route("GET", "/v1/keys", keys, Access.AUTHENTICATED),
        Route("GET", "/v1/revocations", revocations, Access.REPLICATION),
        Route("GET", "/v1/risk", risk, Access.AUTHENTICATED),
        Route("GET", "/v1/status", status, Access.ADMIN),
    ]
