"""The client's credentials, TLS and ``auto`` scheme against real aiohttp servers on 127.0.0.1, plain and TLS
(certificates from the operator's ``cryptography`` code, tests/support/tls_files.py)."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import ssl
from pathlib import Path

import pytest
from aiohttp import web
from chronoshard.operator import certs
from chronoshard.shardnode.client import (
    AsyncClient,
    CertificateRejected,
    Client,
    Credentials,
    Endpoint,
    Forbidden,
    NodeMap,
    TokenFile,
    Transport,
    Unauthenticated,
    Unavailable,
)
from chronoshard.shardnode.client.cli import EXIT_REFUSED, main
from chronoshard.shardnode.client.credentials import ENV_TOKEN
from chronoshard.shardnode.client.transport import ca_file_source, client_ssl_context
from chronoshard.shardnode.keyspace.partitioning import initial_map

from tests.support import tls_files

POD0 = "orders-0.orders-headless.shop.svc"
TOKEN = "tok-3f1c9a-very-secret"
EXPIRED = "tok-0ld-b4d"
M1 = initial_map(1)


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch):
    monkeypatch.delenv(ENV_TOKEN, raising=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Shard:
    """A real aiohttp server standing in for a shard's block API: 401 without a bearer token, 403 for the token
    ``weak``, else 200; it records what it saw, and can be restarted on the same port with or without TLS."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: list[dict[str, object]] = []
        self.runner: web.AppRunner | None = None

    async def block(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.seen.append({"auth": auth, "tls": request.secure, "peer": peer[1] if peer else None})
        if not auth.startswith("Bearer "):
            return web.json_response({"error": "unauthenticated", "message": "no bearer token in the request"},
                                     status=401, headers={"WWW-Authenticate": "Bearer"})
        if auth == f"Bearer {EXPIRED}":
            return web.json_response({"error": "unauthenticated", "message": "the token has expired"},
                                     status=401, headers={"WWW-Authenticate": "Bearer"})
        if auth == "Bearer weak":
            return web.json_response({"error": "forbidden", "message": "system:serviceaccount:shop:weak may not "
                                      "get shardsets/data accounts in shop"}, status=403)
        return web.Response(body=b"value")

    async def partitions(self, request: web.Request) -> web.Response:
        return web.Response(body=M1.to_json().encode(), content_type="application/json")

    async def start(self, tls: ssl.SSLContext | None = None) -> None:
        app = web.Application()
        app.router.add_route("*", "/v1/tables/{table}/blocks/{key}", self.block)
        app.router.add_get("/v1/partitions", self.partitions)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=tls, reuse_address=True).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture()
def pki(tmp_path):
    """A ShardSet CA, its pods' certificate with only DNS names (no IP: connecting by IP must name the pod), a
    server context for it, and the CA file a client verifies against."""
    ca = tls_files.new_ca()
    pair = certs.issue(ca, certs.pod_identity("shop", "orders"), tls_files.now(), certs.SERVING_LIFETIME,
                       dns_names=[POD0])
    tls_dir = tls_files.write_tls_dir(tmp_path / "tls", pair, ca)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls_dir / "tls.crt", tls_dir / "tls.key")
    (tmp_path / "ca.crt").write_bytes(ca.cert)
    return {"server": server, "ca": tmp_path / "ca.crt"}


@pytest.fixture()
async def shard():
    s = Shard(free_port())
    yield s
    await s.stop()


def transport(ca: Path | None = None, token: str | None = TOKEN, **kw) -> Transport:
    creds = Credentials.default(token=token, token_file="/nonexistent/token")
    return Transport(creds, ssl_context=client_ssl_context(ca), **kw)


# --- credentials -----------------------------------------------------------------------------------------


async def test_token_sources_in_order(tmp_path, monkeypatch):
    file = tmp_path / "token"
    file.write_text("from-file\n")
    assert await Credentials.default(token_file=file).bearer() == "from-file"
    monkeypatch.setenv(ENV_TOKEN, " from-env ")
    creds = Credentials.default(token_file=file)
    assert await creds.bearer() == "from-env" and creds.last_source == f"${ENV_TOKEN}"
    creds = Credentials.default(token="explicit", token_file=file)
    assert await creds.bearer() == "explicit" and creds.last_source == "the token= argument"

    async def rotating() -> str:
        return "from-provider"

    assert await Credentials.default(token_provider=rotating, token_file=file).bearer() == "from-provider"
    with pytest.raises(ValueError):
        Credentials.default(token="a", token_provider=rotating)


async def test_token_file_is_read_again_when_the_kubelet_swaps_it(tmp_path):
    volume = tmp_path / "projected"
    tls_files.publish(volume, {"token": b"first"})
    source = TokenFile(volume / "token")
    assert source() == "first"
    tls_files.publish(volume, {"token": b"second"})  # the kubelet's rotation: a new ..data snapshot
    assert source() == "second"
    assert TokenFile(tmp_path / "absent")() is None


def test_nothing_shows_the_token():
    creds = Credentials.default(token=TOKEN, token_file="/nonexistent/token")
    assert TOKEN not in repr(creds) and TOKEN not in repr(creds.sources)
    assert TOKEN not in creds.explain_refusal()


# --- TLS -------------------------------------------------------------------------------------------------


async def test_tls_is_verified_against_the_pod_dns_name_when_connecting_by_ip(pki, shard):
    await shard.start(pki["server"])
    ep = Endpoint(f"127.0.0.1:{shard.port}", "https", POD0)
    tr = transport(pki["ca"])
    try:
        assert await tr.request("GET", ep, "/v1/tables/t/blocks/k") == (200, b"value")
        assert shard.seen[-1] == {"auth": f"Bearer {TOKEN}", "tls": True, "peer": shard.seen[-1]["peer"]}
        with pytest.raises(CertificateRejected, match="Hostname mismatch"):
            await tr.request("GET", Endpoint(ep.hostport, "https", "orders-1.other.shop.svc"), "/x")
        with pytest.raises(CertificateRejected, match="IP address mismatch"):
            await tr.request("GET", Endpoint(ep.hostport, "https"), "/x")  # the cert has no IP SAN
    finally:
        await tr.close()


async def test_a_certificate_error_never_falls_back_to_http(pki, shard, tmp_path):
    await shard.start(pki["server"])
    other = tmp_path / "other-ca.crt"
    other.write_bytes(tls_files.new_ca("payments").cert)
    tr = transport(other)
    try:
        for _ in range(2):
            with pytest.raises(CertificateRejected, match="certificate verify failed"):
                await tr.request("GET", Endpoint(f"127.0.0.1:{shard.port}", None, POD0), "/v1/tables/t/blocks/k")
        assert tr.fallbacks == 0 and not tr.speaks_plain(Endpoint(f"127.0.0.1:{shard.port}"))
        assert shard.seen == []  # nothing reached the server, and nothing went out in plaintext
    finally:
        await tr.close()


async def test_connections_are_reused(pki, shard):
    await shard.start(pki["server"])
    ep = Endpoint(f"127.0.0.1:{shard.port}", None, POD0)
    async with AsyncClient(M1, [ep], ca=pki["ca"], token=TOKEN, token_file="/nonexistent/token") as c:
        for i in range(30):
            assert await c.get("t", f"k{i}") == b"value"
    assert len(shard.seen) == 30 and all(s["tls"] for s in shard.seen)
    assert len({s["peer"] for s in shard.seen}) == 1  # one connection: one TLS handshake for 30 requests


async def test_a_ca_that_appears_later_is_picked_up_after_a_certificate_failure(pki, shard, tmp_path):
    await shard.start(pki["server"])
    ca_file = tmp_path / "optional-volume" / "ca.crt"  # an optional ConfigMap volume, filled later
    ep = Endpoint(f"127.0.0.1:{shard.port}", None, POD0)
    tr = Transport(Credentials.default(token=TOKEN), ca_source=ca_file_source(ca_file), ca_recheck=0.2)
    try:
        with pytest.raises(CertificateRejected):
            await tr.request("GET", ep, "/v1/tables/t/blocks/k")
        ca_file.parent.mkdir()
        ca_file.write_bytes(pki["ca"].read_bytes())
        with pytest.raises(CertificateRejected):  # looked at again only after ca_recheck
            await tr.request("GET", ep, "/v1/tables/t/blocks/k")
        await asyncio.sleep(0.3)
        assert await tr.request("GET", ep, "/v1/tables/t/blocks/k") == (200, b"value")
        assert tr.fallbacks == 0 and [s["tls"] for s in shard.seen] == [True]
    finally:
        await tr.close()


# --- the auto scheme during the move to TLS --------------------------------------------------------------


async def test_auto_uses_http_only_while_the_server_answers_in_plaintext(pki, shard):
    await shard.start()  # a pod not yet rolled: plain HTTP
    ep = Endpoint(f"127.0.0.1:{shard.port}", None, POD0)
    tr = transport(pki["ca"], reprobe_after=0.5)
    try:
        assert (await tr.request("GET", ep, "/v1/tables/t/blocks/k"))[0] == 200
        assert tr.fallbacks == 1 and tr.speaks_plain(ep)
        assert (await tr.request("GET", ep, "/v1/tables/t/blocks/k"))[0] == 200
        assert tr.fallbacks == 1  # straight to HTTP, no second handshake attempt
        await asyncio.sleep(0.6)
        assert (await tr.request("GET", ep, "/v1/tables/t/blocks/k"))[0] == 200
        assert tr.fallbacks == 2  # re-probed HTTPS after reprobe_after, still plaintext
        assert [s["tls"] for s in shard.seen] == [False] * 3
    finally:
        await tr.close()


async def test_auto_moves_to_https_as_soon_as_the_pod_serves_tls(pki, shard):
    await shard.start()
    ep = Endpoint(f"127.0.0.1:{shard.port}", None, POD0)
    tr = transport(pki["ca"], reprobe_after=3600)
    try:
        assert (await tr.request("PUT", ep, "/v1/tables/t/blocks/k", body=b"v"))[0] == 200
        assert tr.speaks_plain(ep)
        await shard.stop()
        await shard.start(pki["server"])  # the rolling update reached this pod: same address, now TLS
        for _ in range(3):
            assert (await tr.request("PUT", ep, "/v1/tables/t/blocks/k", body=b"v"))[0] == 200
        assert [s["tls"] for s in shard.seen] == [False, True, True, True]
        assert not tr.speaks_plain(ep) and tr.fallbacks == 1
        await shard.stop()
        await shard.start()  # and a rollback to plain HTTP is followed the same way
        for _ in range(2):
            assert (await tr.request("GET", ep, "/v1/tables/t/blocks/k"))[0] == 200
        assert [s["tls"] for s in shard.seen][-2:] == [False, False] and tr.fallbacks == 2
    finally:
        await tr.close()


async def test_explicit_https_never_uses_http(pki, shard):
    await shard.start()
    tr = transport(pki["ca"])
    try:
        with pytest.raises(Unavailable, match="plain HTTP"):
            await tr.request("GET", Endpoint(f"127.0.0.1:{shard.port}", "https", POD0), "/v1/tables/t/blocks/k")
        assert tr.fallbacks == 0 and shard.seen == []
    finally:
        await tr.close()


# --- refusals --------------------------------------------------------------------------------------------


async def test_without_a_credential_the_request_goes_out_and_the_error_says_what_is_missing(pki, shard):
    await shard.start(pki["server"])
    ep = Endpoint(f"127.0.0.1:{shard.port}", None, POD0)
    async with AsyncClient(M1, [ep], ca=pki["ca"], token_file="/nonexistent/token") as c:
        with pytest.raises(Unauthenticated) as err:
            await c.get("accounts", "alice")
    assert shard.seen[-1]["auth"] == ""
    text = str(err.value)
    assert err.value.status == 401 and "no bearer token in the request" in text
    assert "No credential was sent" in text and ENV_TOKEN in text and "/nonexistent/token" in text
    assert "serviceAccountToken" in text


async def test_401_names_the_source_and_403_carries_the_server_message(pki, shard, tmp_path, monkeypatch):
    await shard.start(pki["server"])
    ep = Endpoint(f"127.0.0.1:{shard.port}", None, POD0)
    async with AsyncClient(M1, [ep], ca=pki["ca"], token="weak") as c:
        with pytest.raises(Forbidden, match="may not get shardsets/data accounts") as forbidden:
            await c.get("accounts", "alice")
    assert forbidden.value.status == 403 and forbidden.value.error == "forbidden"
    file = tmp_path / "token"
    file.write_text(EXPIRED)
    async with AsyncClient(M1, [ep], ca=pki["ca"], token_file=file) as c:
        with pytest.raises(Unauthenticated) as err:
            await c.get("accounts", "alice")
    text = str(err.value)
    assert "the token has expired" in text and f"The token from the token file {file} was refused" in text
    assert EXPIRED not in text


async def test_blocking_client_calls_the_token_provider_for_every_request(pki, shard):
    await shard.start(pki["server"])
    tokens = iter(["t-1", "t-2", "t-3"])
    ep = Endpoint(f"127.0.0.1:{shard.port}", None, POD0)

    def use() -> list[bytes]:  # blocking: in a thread, the server runs on this test's loop
        with Client(M1, [ep], ca=pki["ca"], token_provider=lambda: next(tokens)) as c:
            return [c.get("t", "k") for _ in range(3)]

    assert await asyncio.to_thread(use) == [b"value"] * 3
    assert [s["auth"] for s in shard.seen] == ["Bearer t-1", "Bearer t-2", "Bearer t-3"]


async def test_node_map_lends_the_clients_credentials_and_ca(pki, shard):
    await shard.start(pki["server"])
    ep = Endpoint(f"127.0.0.1:{shard.port}", None, POD0)
    async with AsyncClient(NodeMap([ep]), [ep], ca=pki["ca"], token=TOKEN) as c:
        assert (await c.partition_map()) == M1
        assert await c.get("t", "k") == b"value"
    assert [s["auth"] for s in shard.seen] == [f"Bearer {TOKEN}"]  # the map answer itself is not recorded


# --- the CLI ---------------------------------------------------------------------------------------------


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    bout = io.BytesIO()
    import sys

    saved, sys.stderr = sys.stderr, err
    try:
        code = main(list(argv), out=out, stdin=io.BytesIO(b"v"), bout=bout)
    finally:
        sys.stderr = saved
    return code, out.getvalue() + bout.getvalue().decode(), err.getvalue()


async def test_cli_certificate_error_is_a_hard_error(pki, shard):
    await shard.start(pki["server"])
    # By URL, the name checked is the URL's host; 127.0.0.1 is not among this certificate's SANs.
    for url in (f"https://127.0.0.1:{shard.port}", f"127.0.0.1:{shard.port}"):
        code, _, err = await asyncio.to_thread(run_cli, "--url", url, "--ca", str(pki["ca"]), "--token", TOKEN,
                                               "get", "t", "k")
        assert code == 1 and "TLS certificate not accepted" in err and TOKEN not in err
    assert shard.seen == []


async def test_cli_refusals_exit_5_with_a_hint(tmp_path, shard, monkeypatch):
    ca = tls_files.new_ca()
    pair = tls_files.shard_pair(ca)  # SANs include 127.0.0.1
    tls_dir = tls_files.write_tls_dir(tmp_path / "tls", pair, ca)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls_dir / "tls.crt", tls_dir / "tls.key")
    await shard.start(server)
    base = ["--url", f"127.0.0.1:{shard.port}", "--ca", str(tls_dir / "ca.crt"), "--token-file", "/nonexistent/t"]
    code, out, _ = await asyncio.to_thread(run_cli, *base, "--token", TOKEN, "get", "t", "k")
    assert code == 0 and out == "value" and shard.seen[-1] == {"auth": f"Bearer {TOKEN}", "tls": True,
                                                               "peer": shard.seen[-1]["peer"]}
    code, _, err = await asyncio.to_thread(run_cli, *base, "get", "t", "k")
    assert code == EXIT_REFUSED and "No credential was sent" in err and "--token" in err
    monkeypatch.setenv(ENV_TOKEN, "weak")
    code, _, err = await asyncio.to_thread(run_cli, *base, "-o", "json", "get", "t", "k")
    assert code == EXIT_REFUSED and "HTTP 403 forbidden" in err
    assert json.dumps(shard.seen).count("Bearer weak") == 1
