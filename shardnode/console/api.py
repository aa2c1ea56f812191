"""The console's JSON API (docs/console.md): sign-in, the custom resources read as the user, and the shards' data
read as the console after a SubjectAccessReview for the user."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web
from chronoshard.shardnode.auth.authenticators import parse_bearer
from chronoshard.shardnode.auth.identity import AuthUnavailable, Unauthenticated
from chronoshard.shardnode.auth.policy import ReviewAttributes
from chronoshard.shardnode.client.aio import raise_for
from chronoshard.shardnode.client.errors import (
    CertificateRejected,
    ChronoshardError,
    Forbidden,
    MapUnavailable,
    NotFound,
    RequestRejected,
    Unavailable,
)
from chronoshard.shardnode.client.errors import Unauthenticated as ShardUnauthenticated
from chronoshard.shardnode.client.history import HistoryClient
from chronoshard.shardnode.serving.http_common import ApiError, check_key, json_body, table_param
from kubernetes.client.exceptions import ApiException

from . import views
from .access import data_attributes, reversion_attributes
from .kube import KubeError
from .middleware import COOKIE, SESSION, SESSION_PATH
from .proxyauth import PROXY_IDENTITY
from .sessions import Session
from .state import CONSOLE, Console

log = logging.getLogger("chronoshard.console")

NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
MAX_VERSIONS = 1000  # a key's history as one answer
MAX_DIFF = 1000  # a diff as one answer ("truncated" says when there was more)
STATE_PAGE, MAX_STATE_PAGE = 100, 1000
KEYS_PAGE = 100
API = "/api/v1"
SHARDSET_PATH = API + "/namespaces/{ns}/shardsets/{name}"
TABLE_PATH = SHARDSET_PATH + "/tables/{table}"


def _console(request: web.Request) -> Console:
    return request.app[CONSOLE]


def _session(request: web.Request) -> Session:
    return request[SESSION]


def _name(request: web.Request, part: str) -> str:
    value = request.match_info[part]
    if not NAME_RE.fullmatch(value):
        raise ApiError(400, "invalid_name", f"{part} must be a Kubernetes object name")
    return value


def _query_point(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    try:
        return views.point(value, name)
    except ValueError as exc:
        raise ApiError(400, "invalid_parameter", str(exc)) from None


def _query_int(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = lo - 1
    if not lo <= number <= hi:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer between {lo} and {hi}")
    return number


# ---- errors --------------------------------------------------------------------------------------------
def kube_error(exc: KubeError, what: str) -> ApiError:
    """The console's answer when the API server refused the user (or failed)."""
    if exc.status in (401, 403, 404, 409):
        codes = {401: "unauthenticated", 403: "forbidden", 404: "not_found", 409: "conflict"}
        return ApiError(exc.status, codes[exc.status], f"{what}: {exc.message}")
    return ApiError(502, "kubernetes_unavailable", f"{what}: {exc.message}")


@contextlib.contextmanager
def shard_errors(what: str) -> Iterator[None]:
    """Client errors from the shadows as the console's answers: a shard that cannot be reached or that refuses
    the console's own identity is a 502 (the user is allowed: the console is misconfigured or a shard is down)."""
    try:
        yield
    except NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except (ShardUnauthenticated, Forbidden) as exc:
        raise ApiError(502, "shard_refused", f"{what}: the shard refused the console's own identity: "
                       f"{exc.message}") from None
    except RequestRejected as exc:
        status = exc.status if exc.status in (400, 404, 409) else 502
        raise ApiError(status, exc.error, exc.message) from None
    except (Unavailable, CertificateRejected, MapUnavailable) as exc:
        raise ApiError(502, "shard_unavailable", f"{what}: {exc}") from None
    except ChronoshardError as exc:  # a TokenRequest for the console's token failed, and the like
        raise ApiError(502, "shard_unavailable", f"{what}: {exc}") from None
    except ApiException as exc:  # re-listing a replaced shard's pods failed
        raise ApiError(502, "kubernetes_unavailable", f"{what}: the Kubernetes API answered HTTP {exc.status} "
                       f"{exc.reason}") from None


async def _allowed(request: web.Request, namespace: str, attrs: ReviewAttributes) -> bool:
    session = _session(request)
    try:
        return await _console(request).access.allowed(session.user, session.groups, namespace, attrs)
    except AuthUnavailable as exc:
        raise ApiError(502, "kubernetes_unavailable", str(exc)) from None


async def _require_data(request: web.Request, namespace: str, verb: str, table: str) -> None:
    """403 unless Kubernetes RBAC lets the user ``verb`` the table's data (what the shadow route would ask)."""
    if not await _allowed(request, namespace, data_attributes(verb, table)):
        raise ApiError(403, "forbidden", f"{_session(request).user!r} may not {verb} shardsets/data (group "
                       f"chronoshard.io) named {table!r} in namespace {namespace!r}")


# ---- session ---------------------------------------------------------------------------------------------
def _session_doc(session: Session) -> dict[str, Any]:
    return {"user": session.user, "groups": list(session.groups), "csrfToken": session.csrf}


def _start_session(request: web.Request, user: str, groups: tuple[str, ...], token: str, *,
                   proxied: bool = False) -> web.StreamResponse:
    console = _console(request)
    console.sessions.delete(request.cookies.get(COOKIE))  # a new id on every sign-in: no session fixation
    sid, session = console.sessions.create(user, groups, token, proxied=proxied)
    log.info("signed in: %s%s", session.user, " (auth proxy)" if proxied else "")
    resp = web.json_response(_session_doc(session))
    resp.set_cookie(COOKIE, sid, httponly=True, samesite="Strict", path="/", secure=console.secure_cookie,
                    max_age=int(console.sessions.ttl))
    return resp


async def _reviewed(request: web.Request) -> tuple[str, tuple[str, ...], str]:
    """The user, groups and token of the body's token, by TokenReview; 400/401 for a missing or refused one."""
    doc = await json_body(request)
    token = doc.get("token")
    console = _console(request)
    if not isinstance(token, str) or not token.strip():
        if console.proxy is not None:
            raise ApiError(401, "unauthenticated", "no token, and the request did not come through the auth proxy")
        raise ApiError(400, "invalid_body", 'the body must be {"token": "<a Kubernetes bearer token>"}')
    try:
        token = parse_bearer(f"Bearer {token.strip()}")
        status = await console.api.token_review(token, None)
    except Unauthenticated:
        raise ApiError(401, "unauthenticated", "that is not a bearer token") from None
    except AuthUnavailable as exc:
        raise ApiError(502, "kubernetes_unavailable", str(exc)) from None
    user = status.get("user") or {}
    if not status.get("authenticated") or not user.get("username"):
        log.info("sign-in refused: the TokenReview did not authenticate the token")
        raise ApiError(401, "unauthenticated", "the Kubernetes API did not accept this token")
    return str(user["username"]), tuple(str(g) for g in user.get("groups") or ()), token


async def sign_in(request: web.Request) -> web.StreamResponse:
    """POST /api/v1/session: the auth proxy's user, else {"token"} by TokenReview; then a session cookie.
    Failed token sign-ins are limited per client address (429 with Retry-After, no TokenReview asked)."""
    if request.content_type != "application/json":
        # A cross-site HTML form cannot send JSON: no signing a victim's browser in as someone else.
        raise ApiError(415, "unsupported_media_type", "send the token as application/json")
    proxied = request.get(PROXY_IDENTITY)
    if proxied is not None:
        return _start_session(request, proxied.user, proxied.groups, "", proxied=True)
    limiter, address = _console(request).limiter, request.remote or "unknown"
    wait = limiter.retry_after(address)
    if wait is not None:
        raise ApiError(429, "too_many_failures", "too many failed sign-ins from this address; try again later"
                       ).with_headers(Retry_After=str(math.ceil(wait)))
    try:
        user, groups, token = await _reviewed(request)
    except ApiError as exc:
        if exc.status in (400, 401):
            limiter.failed(address)
        raise
    return _start_session(request, user, groups, token)


async def whoami(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/session: who is signed in and their CSRF token."""
    return web.json_response(_session_doc(_session(request)))


async def sign_out(request: web.Request) -> web.StreamResponse:
    """DELETE /api/v1/session: forget the session."""
    _console(request).sessions.delete(request.cookies.get(COOKIE))
    log.info("signed out: %s", _session(request).user)
    resp = web.json_response({"signedOut": True})
    resp.del_cookie(COOKIE, path="/")
    return resp


# ---- custom resources, as the user -----------------------------------------------------------------------
async def _optional_list(request: web.Request, plural: str, namespace: str | None) -> list[dict[str, Any]]:
    """A list the user may not be allowed to read: empty then (the view shows what RBAC lets them see)."""
    try:
        return await _console(request).kube.list(_session(request), plural, namespace)
    except KubeError as exc:
        if exc.status in (403, 404):
            return []
        raise kube_error(exc, f"listing {plural}") from None


def _by_shardset(objs: list[dict[str, Any]], namespace: str | None, name: str) -> list[dict[str, Any]]:
    return [o for o in objs if views.refers_to(o, name)
            and (namespace is None or (o.get("metadata") or {}).get("namespace") == namespace)]


async def list_shardsets(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/shardsets[?namespace=]."""
    ns = request.query.get("namespace") or None
    if ns is not None and not NAME_RE.fullmatch(ns):
        raise ApiError(400, "invalid_parameter", "namespace must be a Kubernetes namespace name")
    try:
        shardsets = await _console(request).kube.list(_session(request), "shardsets", ns)
    except KubeError as exc:
        raise kube_error(exc, "listing shardsets") from None
    rotations, policies, mirrorsets = await asyncio.gather(_optional_list(request, "keyrotations", ns),
                                                           _optional_list(request, "shadowpolicies", ns),
                                                           _mirrorsets(request, ns))
    items = []
    for s in sorted(shardsets, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])):
        sns, name = s["metadata"].get("namespace"), s["metadata"]["name"]
        mine = _by_shardset(policies, sns, name)
        items.append({**views.shardset_view(s, _by_shardset(rotations, sns, name), mine[0] if mine else None),
                      "mirrorSet": views.mirrorset_of(mirrorsets, str(sns), name)})
    return web.json_response({"items": items})


async def _policy(request: web.Request, ns: str, name: str) -> dict[str, Any] | None:
    mine = _by_shardset(await _optional_list(request, "shadowpolicies", ns), ns, name)
    return sorted(mine, key=lambda p: p["metadata"]["name"])[0] if mine else None


async def get_shardset(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/namespaces/{ns}/shardsets/{name}."""
    ns, name = _name(request, "ns"), _name(request, "name")
    try:
        shardset = await _console(request).kube.get(_session(request), "shardsets", ns, name)
    except KubeError as exc:
        raise kube_error(exc, f"ShardSet {ns}/{name}") from None
    rotations, policy, reversions, mirrorsets, plans = await asyncio.gather(
        _optional_list(request, "keyrotations", ns), _policy(request, ns, name),
        _optional_list(request, "reversions", ns), _mirrorsets(request, ns), _optional_list(request, "weaveplans", ns))
    return web.json_response({**views.shardset_detail(shardset, _by_shardset(rotations, ns, name), policy,
                                                      _by_shardset(reversions, ns, name)),
                              "mirrorSet": views.mirrorset_of(mirrorsets, ns, name),
                              "weavePlan": views.weaveplan_of(plans, name)})


async def _mirrorsets(request: web.Request, ns: str | None) -> list[dict[str, Any]]:
    """The MirrorSets the user may read that could name a ShardSet of ``ns``: a mirror's MirrorSet may live in
    another namespace, so every namespace's when the user may list them there, else ``ns``'s own."""
    every = await _optional_list(request, "mirrorsets", None)
    if every or ns is None:
        return every
    return await _optional_list(request, "mirrorsets", ns)


async def list_mirrorsets(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/mirrorsets[?namespace=]: the MirrorSets the user may list, summarised (none without RBAC)."""
    ns = request.query.get("namespace") or None
    if ns is not None and not NAME_RE.fullmatch(ns):
        raise ApiError(400, "invalid_parameter", "namespace must be a Kubernetes namespace name")
    objs = await _optional_list(request, "mirrorsets", ns)
    objs.sort(key=lambda o: (str(o["metadata"].get("namespace", "")), str(o["metadata"].get("name"))))
    return web.json_response({"items": [views.mirrorset_summary(o) for o in objs]})


async def get_mirrorset(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/namespaces/{ns}/mirrorsets/{name}: the status shaped for the MirrorSet page."""
    ns, name = _name(request, "ns"), _name(request, "name")
    try:
        obj = await _console(request).kube.get(_session(request), "mirrorsets", ns, name)
    except KubeError as exc:
        raise kube_error(exc, f"MirrorSet {ns}/{name}") from None
    return web.json_response(views.mirrorset_view(obj))


async def _reversion_doc(request: web.Request, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
    may_patch = await _allowed(request, ns, reversion_attributes("patch", obj["metadata"]["name"]))
    return views.reversion_view(obj, may_patch)


async def get_reversion(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/namespaces/{ns}/reversions/{name}."""
    ns, name = _name(request, "ns"), _name(request, "name")
    try:
        obj = await _console(request).kube.get(_session(request), "reversions", ns, name)
    except KubeError as exc:
        raise kube_error(exc, f"Reversion {ns}/{name}") from None
    return web.json_response(await _reversion_doc(request, ns, obj))


async def approve(request: web.Request) -> web.StreamResponse:
    """POST /api/v1/namespaces/{ns}/reversions/{name}/approve {"digest"}: patch ``spec.approve`` as the user."""
    ns, name = _name(request, "ns"), _name(request, "name")
    doc = await json_body(request)
    digest = doc.get("digest")
    if not isinstance(digest, str) or not digest:
        raise ApiError(400, "invalid_body", 'the body must be {"digest": "<the plan digest shown>"}')
    session, kube = _session(request), _console(request).kube
    try:
        obj = await kube.get(session, "reversions", ns, name)
    except KubeError as exc:
        raise kube_error(exc, f"Reversion {ns}/{name}") from None
    status = obj.get("status") or {}
    if digest != status.get("digest"):
        raise ApiError(409, "digest_mismatch", "the plan changed since it was shown: its digest is now "
                       f"{status.get('digest')!r}; look at the plan again")
    if status.get("phase") != "AwaitingApproval":
        raise ApiError(409, "not_awaiting_approval", f"the Reversion is {status.get('phase')!r}, not "
                       "AwaitingApproval")
    try:
        patched = await kube.approve(session, ns, name, digest)
    except KubeError as exc:
        log.info("approval refused by Kubernetes: %s on reversion %s/%s (HTTP %s)", session.user, ns, name,
                 exc.status)
        raise kube_error(exc, f"approving Reversion {ns}/{name}") from None
    log.info("approved: %s approved reversion %s/%s digest %s", session.user, ns, name, digest)
    return web.json_response(await _reversion_doc(request, ns, patched))


# ---- data, as the console after a review for the user ----------------------------------------------------
async def _client(request: web.Request, ns: str, name: str) -> HistoryClient:
    with shard_errors(f"ShardSet {ns}/{name}"):
        return await _console(request).shards.get(ns, name)


async def _owners(h: HistoryClient) -> list[int]:
    pmap = await h.partition_map()
    return sorted({p.shard for p in pmap.partitions})


async def _shard_get(h: HistoryClient, shard: int, path: str, params: dict[str, str], table: str
                     ) -> dict[str, Any]:
    url, status, payload = await h.call(shard, path, params=params)
    raise_for(status, payload, url, table, None, h.transport.credentials)
    return _json_object(url, payload)


def _json_object(url: str, payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise Unavailable(url, "the shadow answered something other than a JSON object")
    return doc


def _table_path(table: str, *rest: str) -> str:
    return "/v1/tables/" + "/".join(quote(p, safe="") for p in (table, *rest))


async def timeline(request: web.Request) -> web.StreamResponse:
    """GET .../tables/{table}/timeline?from=&to=: every shard's windows and incidents of the table."""
    ns, name, table = _name(request, "ns"), _name(request, "name"), table_param(request)
    params = {k: v for k in ("from", "to") if (v := _query_point(request, k)) is not None}
    await _require_data(request, ns, "list", table)
    h = await _client(request, ns, name)
    with shard_errors(f"the timeline of {ns}/{name} table {table}"):
        owners = await _owners(h)
        docs = await asyncio.gather(*(_shard_get(h, s, _table_path(table, "anomalies"), params, table)
                                      for s in owners))
    policy = await _policy(request, ns, name)
    return web.json_response(views.merge_timeline(dict(zip(owners, docs, strict=True)),
                                                  views.detector_threshold(policy, table)))


async def incident(request: web.Request) -> web.StreamResponse:
    """GET .../tables/{table}/incidents/{shard}/{id}?after=: an incident and a page of the keys it changed."""
    ns, name, table = _name(request, "ns"), _name(request, "name"), table_param(request)
    try:
        shard = int(request.match_info["shard"])
    except ValueError:
        raise ApiError(400, "invalid_parameter", "shard must be an integer") from None
    ident = request.match_info["id"]
    await _require_data(request, ns, "list", table)
    h = await _client(request, ns, name)
    after = request.query.get("after") or None
    keys: list[dict[str, Any]] = []
    with shard_errors(f"incident {ident} of {ns}/{name} shard {shard}"):
        url, status, payload = await h.call(shard, _table_path(table, "anomalies", ident, "keys"),
                                            params={"limit": str(KEYS_PAGE), **({"after": after} if after else {})})
        if status == 404:
            raise ApiError(404, "not_found", f"no incident {ident} of table {table} on shard {shard}")
        raise_for(status, payload, url, table, None, h.transport.credentials)
        page = _json_object(url, payload)
        keys = list(page.get("keys") or [])
    policy = await _policy(request, ns, name)
    found = next((a for a in ((policy or {}).get("status") or {}).get("anomalies") or []
                  if a.get("id") == ident and a.get("shard") == shard and a.get("table") == table), None)
    return web.json_response({"incident": found, "keys": keys, "next": page.get("next")})


async def history(request: web.Request) -> web.StreamResponse:
    """GET .../tables/{table}/keys/{key}/history: the key's versions (no values), from its owner's shadow."""
    ns, name, table = _name(request, "ns"), _name(request, "name"), table_param(request)
    key = check_key(request.match_info["key"])
    await _require_data(request, ns, "get", table)
    h = await _client(request, ns, name)
    with shard_errors(f"the history of {table}/{key}"):
        versions = [v async for v in h.history(table, key, limit=MAX_VERSIONS)]
    return web.json_response(views.history_view(versions))


async def _value_at(request: web.Request) -> tuple[str, str, str, str, dict[str, Any], str]:
    ns, name, table = _name(request, "ns"), _name(request, "name"), table_param(request)
    key = check_key(request.match_info["key"])
    when, lsn = _query_point(request, "time"), _query_int(request, "lsn", None, 0, 2**63 - 1)
    if (when is None) == (lsn is None):
        raise ApiError(400, "invalid_parameter", "give time= or lsn= (exactly one)")
    await _require_data(request, ns, "get", table)
    h = await _client(request, ns, name)
    with shard_errors(f"the value of {table}/{key}"):
        doc = await h.at(table, key, time=when, lsn=lsn)
    query = urlencode({"time": when} if when is not None else {"lsn": str(lsn)})
    return ns, name, table, key, doc, query


async def value(request: web.Request) -> web.StreamResponse:
    """GET .../keys/{key}/value?time=|lsn=: the value then, as text or a hex dump (the first 4 KiB)."""
    _, _, _, _, doc, query = await _value_at(request)
    # The raw (still percent-encoded) path: a key with a space or "?" must stay encoded in the link.
    return web.json_response(views.value_view(doc, f"{request.rel_url.raw_path}/raw?{query}"))


async def value_raw(request: web.Request) -> web.StreamResponse:
    """GET .../keys/{key}/value/raw?time=|lsn=: the value's bytes as a download."""
    _, _, table, key, doc, _ = await _value_at(request)
    filename = re.sub(r"[^A-Za-z0-9._-]", "_", f"{table}-{key}-lsn{doc.get('lsn')}.bin")[:200]
    return web.Response(body=views.value_bytes(doc), content_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})


async def state(request: web.Request) -> web.StreamResponse:
    """GET .../tables/{table}/state?time=&start=&end=&after=&limit=: live keys at a time over every shard."""
    ns, name, table = _name(request, "ns"), _name(request, "name"), table_param(request)
    limit = _query_int(request, "limit", STATE_PAGE, 1, MAX_STATE_PAGE) or STATE_PAGE
    # One time for every shard and every page: each shard's LSNs are its own, a time is common to all.
    when = _query_point(request, "time") or f"{time.time():.6f}"
    params = {"time": when, "limit": str(limit)}
    for k in ("start", "end", "after"):
        if request.query.get(k):
            params[k] = request.query[k]
    await _require_data(request, ns, "list", table)
    h = await _client(request, ns, name)
    with shard_errors(f"the state of {ns}/{name} table {table}"):
        owners = await _owners(h)
        docs = await asyncio.gather(*(_shard_get(h, s, _table_path(table, "state"), params, table)
                                      for s in owners))
    return web.json_response({**views.merge_state(dict(zip(owners, docs, strict=True)), limit), "time": when})


async def diff(request: web.Request) -> web.StreamResponse:
    """GET .../tables/{table}/diff?from=&to=: keys created, changed or deleted between two times."""
    ns, name, table = _name(request, "ns"), _name(request, "name"), table_param(request)
    start = _query_point(request, "from")
    if start is None:
        raise ApiError(400, "invalid_parameter", "from= is required")
    end = _query_point(request, "to") or f"{time.time():.6f}"
    await _require_data(request, ns, "list", table)
    h = await _client(request, ns, name)
    with shard_errors(f"the diff of {ns}/{name} table {table}"):
        entries = [e async for e in h.diff(table, start=start, end=end, limit=MAX_DIFF + 1)]
    return web.json_response({"entries": entries[:MAX_DIFF], "truncated": len(entries) > MAX_DIFF})


ROUTES: list[tuple[str, str, Any]] = [
    ("POST", SESSION_PATH, sign_in),
    ("GET", SESSION_PATH, whoami),
    ("DELETE", SESSION_PATH, sign_out),
    ("GET", API + "/shardsets", list_shardsets),
    ("GET", SHARDSET_PATH, get_shardset),
    ("GET", TABLE_PATH + "/timeline", timeline),
    ("GET", TABLE_PATH + "/incidents/{shard}/{id}", incident),
    ("GET", TABLE_PATH + "/keys/{key}/history", history),
    ("GET", TABLE_PATH + "/keys/{key}/value", value),
    ("GET", TABLE_PATH + "/keys/{key}/value/raw", value_raw),
    ("GET", TABLE_PATH + "/state", state),
    ("GET", TABLE_PATH + "/diff", diff),
    ("GET", API + "/mirrorsets", list_mirrorsets),
    ("GET", API + "/namespaces/{ns}/mirrorsets/{name}", get_mirrorset),
    ("GET", API + "/namespaces/{ns}/reversions/{name}", get_reversion),
    ("POST", API + "/namespaces/{ns}/reversions/{name}/approve", approve),
]
