"""Auth-proxy identity: whose certificate counts as the proxy's, what the headers give, and that the headers are
stripped from every request (without a proxy certificate they are never an identity)."""

from __future__ import annotations

from datetime import timedelta

import aiohttp
import pytest
from aiohttp import web
from chronoshard.operator import certs
from chronoshard.shardnode.console.app import create_app
from chronoshard.shardnode.console.middleware import COOKIE
from chronoshard.shardnode.console.proxyauth import (
    PROXY_IDENTITY,
    ProxyIdentity,
    identity,
    is_proxy,
    load_settings,
    proxy_middleware,
)
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.support import tls_files
from tests.support.servers import serve
from tests.unit.shardnode.console.test_app import console


def der(pair: certs.KeyPair) -> bytes:
    return x509.load_pem_x509_certificate(pair.cert).public_bytes(Encoding.DER)


@pytest.fixture(scope="module")
def cas():
    proxy_ca, other_ca = tls_files.new_ca("proxy"), tls_files.new_ca("other")
    return proxy_ca, other_ca


def settings(tmp_path, ca: certs.KeyPair, allowed: str = ""):
    (tmp_path / "proxy-ca.crt").write_bytes(ca.cert)
    return load_settings(tmp_path / "proxy-ca.crt", allowed)


def leaf(ca: certs.KeyPair, cn: str) -> bytes:
    return der(certs.issue(ca, cn, tls_files.now(), timedelta(hours=1), server=False))


def test_only_a_certificate_of_the_proxy_ca_with_an_allowed_cn_is_the_proxy(tmp_path, cas):
    proxy_ca, other_ca = cas
    s = settings(tmp_path, proxy_ca, "front-proxy, other-proxy")
    assert s.allowed_names == frozenset({"front-proxy", "other-proxy"})
    assert is_proxy(s, leaf(proxy_ca, "front-proxy"))
    assert not is_proxy(s, leaf(proxy_ca, "someone-else"))
    assert not is_proxy(s, leaf(other_ca, "front-proxy"))  # the right CN from another CA
    assert not is_proxy(s, der(proxy_ca))  # self-signed by the CA, but its CN is not an allowed one
    assert not is_proxy(s, None) and not is_proxy(s, b"") and not is_proxy(s, b"garbage")


def test_without_allowed_names_any_cn_of_the_proxy_ca_counts(tmp_path, cas):
    proxy_ca, other_ca = cas
    s = settings(tmp_path, proxy_ca)
    assert is_proxy(s, leaf(proxy_ca, "anything"))
    assert not is_proxy(s, leaf(other_ca, "anything"))


def test_the_identity_is_the_first_user_header_and_every_group_header(tmp_path, cas):
    s = settings(tmp_path, cas[0])
    assert identity(s, True, ["alice", "mallory"], ["ops", "dev"]) == ProxyIdentity("alice", ("ops", "dev"))
    assert identity(s, True, ["alice"], []) == ProxyIdentity("alice", ())
    assert identity(s, False, ["alice"], ["ops"]) is None
    assert identity(s, True, [], ["ops"]) is None and identity(s, True, [" "], []) is None


async def test_headers_without_the_proxys_certificate_are_stripped_and_no_identity(tmp_path, cas):
    seen: list[tuple[list[str], list[str], object]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append((request.headers.getall("X-Remote-User", []), request.headers.getall("x-remote-group", []),
                     request.get(PROXY_IDENTITY)))
        return web.Response(text="ok")

    app = web.Application(middlewares=[proxy_middleware(settings(tmp_path, cas[0]))])
    app.router.add_get("/", echo)
    async with serve(app) as url, aiohttp.ClientSession() as s:
        headers = [("X-Remote-User", "admin"), ("X-Remote-Group", "system:masters"), ("X-Other", "kept")]
        async with s.get(url + "/", headers=headers) as r:
            assert r.status == 200
    assert seen == [([], [], None)]


async def test_a_proxied_sessions_cookie_without_the_proxy_is_no_session(tmp_path, cas):
    c = console()
    c.proxy = settings(tmp_path, cas[0])
    proxied, _ = c.sessions.create("alice", ("ops",), "", proxied=True)
    by_token, _ = c.sessions.create("bob", (), "a-token")
    (tmp_path / "site").mkdir()
    async with serve(create_app(c, static_root=tmp_path / "site")) as url, aiohttp.ClientSession() as s:
        for sid, status in ((proxied, 401), (by_token, 200)):
            headers = [("X-Remote-User", "alice"), ("X-Remote-Group", "ops")]
            async with s.get(url + "/api/v1/session", headers=headers, cookies={COOKIE: sid}) as r:
                assert r.status == status, await r.text()
        # Without the proxy, a sign-in without a token is no identity either (and not a bad request).
        async with s.post(url + "/api/v1/session", json={}, headers=headers) as r:
            assert r.status == 401 and (await r.json())["error"] == "unauthenticated"
