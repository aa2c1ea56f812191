"""The forwarding client (serving/peer_http.py): its pure message pieces, then real aiohttp peers on loopback
(framings, kept-open and closed connections, timeouts, compression passed through, TLS with the pod certificates)."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import pytest
from aiohttp import web
from chronoshard.operator import certs
from chronoshard.shardnode.serving import tls
from chronoshard.shardnode.serving.peer_http import PeerError, PeerPool, body_framing, head_bytes, parse_head
from multidict import CIMultiDict

from tests.support.servers import serve
from tests.support.tls_files import NAME, NAMESPACE, new_ca, shard_pair, write_tls_dir


def test_head_bytes_is_one_request_head_and_refuses_header_injection():
    head = head_bytes("PUT", "/v1/tables/t/blocks/a%2Fb?x=1", "peer:8080", {"X-A": "1", "X-É": "é"}, 3)
    assert head == ("PUT /v1/tables/t/blocks/a%2Fb?x=1 HTTP/1.1\r\nHost: peer:8080\r\nX-A: 1\r\nX-É: é\r\n"
                    "Content-Length: 3\r\n\r\n").encode()
    assert b"Content-Length" not in head_bytes("GET", "/", "h", {}, None)
    for bad in ({"X-A": "1\r\nX-Evil: 1"}, {"X-A\n": "1"}, {"X-A: b": "1"}, {"X-A": "v\rx"}):
        with pytest.raises(ValueError):
            head_bytes("GET", "/", "h", bad, None)


def test_parse_head_keeps_repeated_headers_and_refuses_what_is_not_http():
    version, status, headers = parse_head(b"HTTP/1.1 404 Not Found\r\nSet-Cookie: a\r\nset-cookie: b\r\n"
                                          b"Content-Length: 0\r\n\r\n")
    assert (version, status, headers.getall("Set-Cookie")) == ("HTTP/1.1", 404, ["a", "b"])
    for bad in (b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 2x0 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"):
        with pytest.raises(PeerError):
            parse_head(bad)


def test_body_framing():
    h = CIMultiDict
    assert body_framing("HEAD", 200, h({"Content-Length": "5"})) == ("none", 0)
    assert body_framing("GET", 204, h()) == ("none", 0)
    assert body_framing("GET", 304, h({"Content-Length": "5"})) == ("none", 0)
    assert body_framing("GET", 200, h({"Transfer-Encoding": "chunked"})) == ("chunked", 0)
    assert body_framing("GET", 200, h({"Content-Length": "12"})) == ("length", 12)
    assert body_framing("GET", 200, h()) == ("close", 0)
    with pytest.raises(PeerError):
        body_framing("GET", 200, h({"Content-Length": "-1"}))


def _peer_app() -> web.Application:
    async def fixed(request: web.Request) -> web.Response:
        return web.Response(body=request.raw_path.encode(),
                            headers={"X-Port": str(request.transport.get_extra_info("peername")[1])})

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b"one,", b"two,", b"three"):
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def closing(request: web.Request) -> web.Response:
        return web.Response(body=b"bye", headers={"Connection": "close"})

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query["s"]))
        return web.Response(body=b"late")

    async def put(request: web.Request) -> web.Response:
        return web.json_response({"got": len(await request.read())}, status=201)

    async def gz(request: web.Request) -> web.Response:
        resp = web.Response(body=b"z" * 4000)
        resp.enable_compression()
        return resp

    app = web.Application()
    app.router.add_get("/fixed/{key:.+}", fixed)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/closing", closing)
    app.router.add_get("/empty", empty)
    app.router.add_get("/slow", slow)
    app.router.add_put("/put", put)
    app.router.add_get("/gz", gz)
    return app


async def test_one_kept_open_connection_serves_many_requests_and_every_framing():
    pool = PeerPool()
    async with serve(_peer_app()) as url:
        try:
            ports = set()
            for i in range(10):
                r = await pool.request("GET", url, f"/fixed/a%2Fb{i}?q=%20", {}, b"", 5)
                assert (r.status, r.body) == (200, f"/fixed/a%2Fb{i}?q=%20".encode())  # the path as sent
                ports.add(r.headers["X-Port"])
            assert pool.opened == 1 and len(ports) == 1  # one connection, kept open: no set-up per request
            r = await pool.request("GET", url, "/chunked", {}, b"", 5)
            assert (r.status, r.body) == (200, b"one,two,three")
            r = await pool.request("HEAD", url, "/fixed/k", {}, b"", 5)
            assert (r.status, r.body) == (200, b"") and r.headers["Content-Length"] == "8"
            r = await pool.request("GET", url, "/empty", {}, b"", 5)
            assert (r.status, r.body) == (204, b"")
            r = await pool.request("PUT", url, "/put", {"Content-Type": "application/octet-stream"}, b"x" * 70000, 5)
            assert (r.status, r.body) == (201, b'{"got": 70000}')
            r = await pool.request("PUT", url, "/put", {}, b"", 5)  # an empty PUT still says its length
            assert (r.status, r.body) == (201, b'{"got": 0}')
            r = await pool.request("GET", url, "/missing", {}, b"", 5)
            assert r.status == 404
            assert pool.opened == 1  # every framing above left the connection usable
            r = await pool.request("GET", url, "/closing", {}, b"", 5)
            assert r.body == b"bye"
            await pool.request("GET", url, "/fixed/k", {}, b"", 5)
            assert pool.opened == 2  # the peer said Connection: close: a new connection after it
        finally:
            await pool.close()


async def test_concurrent_requests_are_bounded_per_peer():
    pool = PeerPool(limit_per_peer=3)
    async with serve(_peer_app()) as url:
        try:
            answers = await asyncio.gather(*(pool.request("GET", url, "/slow?s=0.02", {}, b"", 10)
                                             for _ in range(12)))
            assert [a.body for a in answers] == [b"late"] * 12 and pool.opened == 3
        finally:
            await pool.close()


async def test_a_timed_out_request_is_not_reused_and_an_old_idle_connection_is_not_picked():
    pool = PeerPool(keepalive=3600)
    async with serve(_peer_app()) as url:
        try:
            with pytest.raises(TimeoutError):
                await pool.request("GET", url, "/slow?s=0.5", {}, b"", 0.05)
            r = await pool.request("GET", url, "/fixed/k", {}, b"", 5)
            assert r.body == b"/fixed/k" and pool.opened == 2  # the timed-out connection was closed, not reused
            pool.keepalive = 0.0  # every idle connection is now too old to be trusted
            await asyncio.sleep(0.01)
            await pool.request("GET", url, "/fixed/k", {}, b"", 5)
            assert pool.opened == 3
        finally:
            await pool.close()
    with pytest.raises(PeerError):
        await pool.request("GET", url, "/fixed/k", {}, b"", 5)  # closed pool


async def test_unreachable_peer_and_a_peer_that_closes_idle_connections():
    pool = PeerPool()
    try:
        with pytest.raises(PeerError):
            await pool.request("GET", "http://127.0.0.1:1", "/", {}, b"", 5)
        async with serve(_peer_app()) as url:
            await pool.request("GET", url, "/fixed/k", {}, b"", 5)
        # The peer went away with our connection idle: the next request does not use it (503 upstream, not a hang).
        with pytest.raises(PeerError):
            await pool.request("GET", url, "/fixed/k", {}, b"", 5)
    finally:
        await pool.close()


async def test_a_compressed_answer_is_passed_on_as_it_came():
    pool = PeerPool()
    async with serve(_peer_app()) as url:
        try:
            r = await pool.request("GET", url, "/gz", {"Accept-Encoding": "gzip"}, b"", 5)
            assert r.headers["Content-Encoding"] == "gzip" and gzip.decompress(r.body) == b"z" * 4000
        finally:
            await pool.close()


async def test_tls_peers_kept_open_with_the_pod_certificate(tmp_path: Path):
    """Forwarding between TLS pods: the peer sees this pod's client certificate, and ten requests cost one
    handshake (the connection is kept open, so there is no handshake, resumed or full, per request)."""
    ca = new_ca()
    tls_dir = tmp_path / "tls"
    write_tls_dir(tls_dir, shard_pair(ca), ca)
    seen: list[str | None] = []

    async def who(request: web.Request) -> web.Response:
        seen.append(tls.peer_common_name(request.transport))
        return web.Response(body=b"ok")

    app = web.Application()
    app.router.add_get("/who", who)
    server_ctx = tls.server_context(tls_dir)
    pool = PeerPool(ssl=tls.client_context(tls_dir))
    async with serve(app, ssl_context=server_ctx) as url:
        try:
            port = url.rsplit(":", 1)[1]
            # The serving certificate names the pods' DNS names and loopback's "localhost".
            for _ in range(10):
                r = await pool.request("GET", f"https://localhost:{port}", "/who", {}, b"", 5)
                assert (r.status, r.body) == (200, b"ok")
            assert pool.opened == 1 and seen == [certs.pod_identity(NAMESPACE, NAME)] * 10
            with pytest.raises(PeerError):  # an unverified peer is refused: the default context checks
                await PeerPool().request("GET", f"https://localhost:{port}", "/who", {}, b"", 5)
        finally:
            await pool.close()
