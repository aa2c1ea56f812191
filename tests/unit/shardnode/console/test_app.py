"""The console app without Kubernetes: what needs no API server (the session gate before any call to one, the
security headers, the static files, the OpenAPI document naming every route)."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest
from chronoshard.shardnode.auth.apiserver import ApiServer, ApiServerConnection
from chronoshard.shardnode.console.access import UserAccess
from chronoshard.shardnode.console.app import create_app, resolve_static
from chronoshard.shardnode.console.kube import UserKube
from chronoshard.shardnode.console.middleware import COOKIE, needs_csrf, needs_session
from chronoshard.shardnode.console.sessions import SessionStore
from chronoshard.shardnode.console.shards import ServiceAccountRef, ShardClients
from chronoshard.shardnode.console.state import Console
from chronoshard.shardnode.serving.scaffold import load_openapi

from tests.support.servers import serve

# Nothing listens there: a route that reached the API server would fail with 502, not answer 401/403.
NOWHERE = "http://127.0.0.1:9"


def console() -> Console:
    api = ApiServer(ApiServerConnection(NOWHERE, False, None))
    return Console(SessionStore(), api, UserAccess(api), UserKube(NOWHERE, ssl.create_default_context()),
                   ShardClients(None, ServiceAccountRef("ops", "console")))


@pytest.fixture()
def site(tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html><title>console</title>")
    (tmp_path / "vendor").mkdir()
    (tmp_path / "vendor" / "lib.js").write_text("var x = 1;")
    (tmp_path.parent / "secret.txt").write_text("outside")
    return tmp_path


async def fetch(url: str, method: str = "GET", **kw) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s, s.request(method, url, **kw) as r:
        return r.status, dict(r.headers), await r.read()


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/v1/session"), ("DELETE", "/api/v1/session"), ("GET", "/api/v1/shardsets"),
    ("GET", "/api/v1/namespaces/shop/shardsets/orders/tables/t/keys/k/history"),
    ("POST", "/api/v1/namespaces/shop/reversions/undo/approve"), ("GET", "/api/v1/nothing")])
async def test_every_api_route_but_sign_in_needs_a_session(site, method, path):
    c = console()
    sid, _ = c.sessions.create("u", (), "t")
    c.sessions.delete(sid)  # a signed-out session's cookie is no session either
    async with serve(create_app(c, static_root=site)) as url:
        for cookies in (None, {COOKIE: "made-up"}, {COOKIE: sid}):
            status, headers, body = await fetch(url + path, method, cookies=cookies, json={"digest": "x"})
            assert status == 401, body
            assert b'"error": "unauthenticated"' in body and headers["Cache-Control"] == "no-store"


async def test_a_state_changing_request_without_the_csrf_token_is_refused_before_anything_runs(site):
    c = console()
    sid, session = c.sessions.create("u", (), "t")
    async with serve(create_app(c, static_root=site)) as url:
        for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": session.csrf + "x"}):
            status, _, body = await fetch(url + "/api/v1/session", "DELETE", cookies={COOKIE: sid}, headers=headers)
            assert (status, b'"error": "csrf"' in body) == (403, True), body
        assert c.sessions.get(sid) is session  # not signed out
        status, _, body = await fetch(url + "/api/v1/session", "DELETE", cookies={COOKIE: sid},
                                      headers={"X-CSRF-Token": session.csrf})
        assert status == 200 and c.sessions.get(sid) is None


async def test_the_session_route_gives_the_user_and_the_csrf_token_but_never_the_bearer_token(site):
    c = console()
    sid, session = c.sessions.create("alice", ("devs",), "the-bearer-token")
    async with serve(create_app(c, static_root=site)) as url:
        status, _, body = await fetch(url + "/api/v1/session", cookies={COOKIE: sid})
    assert status == 200 and b"the-bearer-token" not in body
    assert b'"user": "alice"' in body and session.csrf.encode() in body


async def test_sign_in_wants_json(site):
    async with serve(create_app(console(), static_root=site)) as url:
        status, _, body = await fetch(url + "/api/v1/session", "POST", data={"token": "x"})
        assert status == 415, body
        status, _, body = await fetch(url + "/api/v1/session", "POST", json={"token": ""})
        assert status == 400, body
        status, _, body = await fetch(url + "/api/v1/session", "POST", json={"token": "not a token!"})
        assert status == 401, body


async def test_the_ui_is_served_from_the_static_directory_with_security_headers(site):
    async with serve(create_app(console(), static_root=site)) as url:
        status, headers, body = await fetch(url + "/")
        assert status == 200 and b"<title>console</title>" in body
        assert "default-src 'self'" in headers["Content-Security-Policy"] and headers["X-Frame-Options"] == "DENY"
        status, _, body = await fetch(url + "/vendor/lib.js")
        assert status == 200 and body == b"var x = 1;"
        for path in ("/nothing.js", "/../secret.txt", "/%2e%2e/secret.txt", "/vendor/../../secret.txt"):
            status, _, body = await fetch(url + path)
            assert status == 404 and b"outside" not in body, path


def test_resolve_static_stays_inside_its_root(site):
    assert resolve_static(site, "") == site.resolve() / "index.html"
    assert resolve_static(site, "vendor/lib.js") == (site / "vendor" / "lib.js").resolve()
    for bad in ("../secret.txt", "vendor/../../secret.txt", ".hidden", "vendor", "nothing"):
        assert resolve_static(site, bad) is None, bad
    (site / "link").symlink_to(site.parent / "secret.txt")
    assert resolve_static(site, "link") is None


def test_the_openapi_document_names_every_route():
    app = create_app(console(), static_root=Path("."))
    doc = load_openapi("console")
    served = set()
    for route in app.router.routes():
        info = route.resource.canonical if route.resource is not None else ""
        if route.method == "HEAD":
            continue
        path = "/{path}" if info == "/{tail}" else info
        served.add((route.method.lower(), path))
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented


@pytest.mark.parametrize(("method", "path", "session", "csrf"), [
    ("POST", "/api/v1/session", False, False), ("GET", "/api/v1/session", True, False),
    ("DELETE", "/api/v1/session", True, True), ("POST", "/api/v1/namespaces/a/reversions/b/approve", True, True),
    ("GET", "/", False, False), ("GET", "/healthz", False, False)])
def test_which_requests_need_a_session_and_a_csrf_token(method, path, session, csrf):
    assert (needs_session(method, path), needs_csrf(method, path)) == (session, csrf)


@pytest.mark.parametrize(("text", "ok"), [("ops/console", True), ("ops", False), ("/x", False), ("a/b/c", False)])
def test_service_account_flag(text, ok):
    if ok:
        assert ServiceAccountRef.parse(text) == ServiceAccountRef("ops", "console")
    else:
        with pytest.raises(ValueError):
            ServiceAccountRef.parse(text)
    assert ServiceAccountRef.from_user("system:serviceaccount:ops:console") == ServiceAccountRef("ops", "console")
    assert ServiceAccountRef.from_user("alice") is None
