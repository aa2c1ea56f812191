"""TLS of the shard pods with real certificates and real handshakes on 127.0.0.1: the contexts (chain, client
identity, hostname checks, foreign CAs), the reloader (new pairs, broken pairs) and a renewal under load."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
import warnings
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from chronoshard.operator import certs
from chronoshard.shardnode.serving import tls
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.support.tls_files import NAME, NAMESPACE, new_ca, shard_pair, write_tls_dir

POD_DNS = f"{NAME}-1.{NAME}-headless.{NAMESPACE}.svc"


@pytest.fixture()
def ca() -> certs.KeyPair:
    return new_ca()


@pytest.fixture()
def tls_dir(tmp_path: Path, ca: certs.KeyPair) -> Path:
    d = tmp_path / "tls"
    write_tls_dir(d, shard_pair(ca), ca)
    return d


async def _serve(ctx: ssl.SSLContext, seen: list[str | None]) -> asyncio.Server:
    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(tls.peer_common_name(writer.transport))
        writer.write(b"hello\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=ctx)


async def _talk(server: asyncio.Server, ctx: ssl.SSLContext, hostname: str) -> tuple[bytes, bytes]:
    """One connection: (the line the server sent, the server certificate seen, DER)."""
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=hostname)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return await reader.readline(), der
    finally:
        writer.close()


async def test_handshake_proves_chain_client_identity_and_hostname(tls_dir: Path, ca: certs.KeyPair):
    seen: list[str | None] = []
    server = await _serve(tls.server_context(tls_dir), seen)
    client = tls.client_context(tls_dir)
    async with server:
        for name in (POD_DNS, f"{NAME}.{NAMESPACE}.svc", "localhost", "127.0.0.1"):
            line, der = await _talk(server, client, name)
            assert line == b"hello\n"
        assert certs.issued_by(x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM), ca.cert)
        assert seen == [certs.pod_identity(NAMESPACE, NAME)] * 4
        # A name the certificate does not carry: another ShardSet's pod, a pod beyond the shard count.
        for wrong in (f"other-0.other-headless.{NAMESPACE}.svc", f"{NAME}-2.{NAME}-headless.{NAMESPACE}.svc"):
            with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
                await _talk(server, client, wrong)


async def test_client_certificate_is_optional(tls_dir: Path):
    seen: list[str | None] = []
    server = await _serve(tls.server_context(tls_dir), seen)
    anonymous = ssl.create_default_context(cafile=str(tls_dir / "ca.crt"))
    async with server:
        line, _ = await _talk(server, anonymous, "localhost")
    assert line == b"hello\n" and seen == [None]


async def test_certificates_of_another_ca_are_refused(tmp_path: Path, tls_dir: Path):
    other_ca = new_ca("other")
    other_dir = tmp_path / "other"
    write_tls_dir(other_dir, shard_pair(other_ca, name="other"), other_ca)
    seen: list[str | None] = []
    # Our client against a server of another ShardSet's CA: the server is not trusted.
    foreign = await _serve(tls.server_context(other_dir), [])
    async with foreign:
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            await _talk(foreign, tls.client_context(tls_dir), "localhost")
    # A client presenting another CA's certificate (it trusts our CA): our server refuses the handshake.
    server = await _serve(tls.server_context(tls_dir), seen)
    intruder = tls.client_context(other_dir)
    intruder.load_verify_locations(cafile=str(tls_dir / "ca.crt"))
    async with server:
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            line, _ = await _talk(server, intruder, "localhost")
            if not line:
                raise ConnectionError("server closed the connection")
    assert seen == []  # the server's handler never ran


async def test_tls_below_1_2_is_refused(tls_dir: Path):
    server = await _serve(tls.server_context(tls_dir), [])
    old = tls.client_context(tls_dir)
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the point: an old version
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    async with server:
        with pytest.raises(ssl.SSLError):
            await _talk(server, old, "localhost")


def _serial(der: bytes) -> int:
    return x509.load_der_x509_certificate(der).serial_number


async def test_reloader_loads_a_new_pair_and_keeps_the_old_one_when_broken(tls_dir: Path, ca: certs.KeyPair,
                                                                          caplog):
    server_ctx = tls.server_context(tls_dir)
    reloader = tls.CertReloader(tls_dir, [server_ctx])
    server = await _serve(server_ctx, [])
    client = tls.client_context(tls_dir)
    first = x509.load_pem_x509_certificate((tls_dir / "tls.crt").read_bytes()).serial_number
    async with server:
        assert reloader.poll() is False
        assert _serial((await _talk(server, client, "localhost"))[1]) == first

        renewed = shard_pair(ca)
        write_tls_dir(tls_dir, renewed, ca)
        assert reloader.poll() is True and reloader.reloads == 1
        assert _serial((await _talk(server, client, "localhost"))[1]) == \
            x509.load_pem_x509_certificate(renewed.cert).serial_number

        # A certificate with another pair's key: refused, logged once, and the renewed pair stays in force.
        mismatched = shard_pair(ca)
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="chronoshard.tls"):
            write_tls_dir(tls_dir, certs.KeyPair(mismatched.cert, renewed.key), ca)
            assert reloader.poll() is False and reloader.poll() is False
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "stays in force" in errors[0].getMessage()
        assert reloader.load_error is not None
        logged = caplog.text
        for secret in (renewed.key, mismatched.key):
            body = b"".join(secret.splitlines()[1:-1]).decode()
            assert body[:40] not in logged and "PRIVATE KEY" not in logged
        assert _serial((await _talk(server, client, "localhost"))[1]) == \
            x509.load_pem_x509_certificate(renewed.cert).serial_number

        # Garbage in place of the key: refused as well.
        write_tls_dir(tls_dir, certs.KeyPair(mismatched.cert, b"not a key"), ca)
        assert reloader.poll() is False
        fixed = shard_pair(ca)
        write_tls_dir(tls_dir, fixed, ca)
        assert reloader.poll() is True and reloader.load_error is None
        assert _serial((await _talk(server, client, "localhost"))[1]) == \
            x509.load_pem_x509_certificate(fixed.cert).serial_number


def test_plain_directory_without_kubelet_layout(tmp_path: Path, ca: certs.KeyPair):
    pair = shard_pair(ca)
    for name, content in (("tls.crt", pair.cert), ("tls.key", pair.key), ("ca.crt", ca.cert)):
        (tmp_path / name).write_bytes(content)
    assert tls.server_context(tmp_path).verify_mode == ssl.CERT_OPTIONAL
    ctx = tls.client_context(tmp_path)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_internal_hostname_names_the_pod_only_for_https_by_ip():
    env = {"POD_NAME": f"{NAME}-1", "POD_NAMESPACE": NAMESPACE}
    assert tls.pod_dns_name(env) == POD_DNS
    assert tls.internal_hostname("https://10.1.2.3:7400", env) == POD_DNS
    assert tls.internal_hostname("https://[fd00::1]:7400", env) == POD_DNS
    assert tls.internal_hostname("https://orders-0.orders-headless.shop.svc:7401", env) is None
    assert tls.internal_hostname("http://10.1.2.3:7400", env) is None
    assert tls.internal_hostname("https://10.1.2.3:7400", {}) is None


async def test_connector_uses_the_installed_client_context(tls_dir: Path):
    plain = web.Application()
    assert tls.connector(plain)._ssl is True
    app = web.Application()
    server_ctx = tls.install(app, tls_dir)
    assert server_ctx.verify_mode == ssl.CERT_OPTIONAL
    assert tls.connector(app)._ssl is app[tls.CLIENT_SSL]


# ---- a renewal under load ----------------------------------------------------------------------------------
REQUESTS = 600
LOAD_SECONDS = 30.0


async def test_renewal_under_load_drops_no_request(tls_dir: Path, ca: certs.KeyPair):
    """Concurrent HTTPS requests (pooled and fresh connections) while the files are renewed twice: none fails,
    and connections opened after each renewal see the new certificate."""
    app = web.Application()

    async def hello(request: web.Request) -> web.StreamResponse:
        # Headers first, the body a moment later: requests stay in flight across the swap, and the client
        # can look at its connection before the body releases it.
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await asyncio.sleep(0.002)
        await resp.write(json.dumps({"peer": tls.peer_common_name(request.transport)}).encode())
        await resp.write_eof()
        return resp

    app.router.add_get("/hello", hello)
    server_ctx = tls.install(app, tls_dir, interval=0.05)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"https://127.0.0.1:{port}/hello"
    client_ctx = tls.client_context(tls_dir)
    serials: list[int] = []
    failures: list[str] = []
    done = 0

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal done
        try:
            async with session.get(url, server_hostname=POD_DNS) as resp:
                # The certificate this connection was opened with (read before the body releases it).
                transport = resp.connection.transport if resp.connection else None
                serials.append(_serial(transport.get_extra_info("ssl_object").getpeercert(True)))
                body = await resp.json()
                if resp.status != 200 or body["peer"] != certs.pod_identity(NAMESPACE, NAME):
                    failures.append(f"{resp.status} {body}")
        except (aiohttp.ClientError, ssl.SSLError, OSError) as exc:
            failures.append(type(exc).__name__)
        done += 1

    renewals = [shard_pair(ca), shard_pair(ca)]
    expected = [x509.load_pem_x509_certificate(p.cert).serial_number for p in renewals]
    pooled = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx, limit=8))
    fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx, force_close=True))
    deadline = time.monotonic() + LOAD_SECONDS
    try:
        step = REQUESTS // (len(renewals) + 1)
        for i in range(0, REQUESTS, 20):
            if time.monotonic() > deadline:
                break
            if i and i % step == 0 and renewals:
                write_tls_dir(tls_dir, renewals.pop(0), ca)  # the reloader picks it up within 50 ms
            await asyncio.gather(*(one(pooled if j % 2 else fresh) for j in range(20)))
        await asyncio.sleep(0.2)
        during = set(serials)
        # After the last renewal has been loaded, every new connection presents it.
        serials.clear()
        await asyncio.gather(*(one(fresh) for _ in range(10)))
    finally:
        await pooled.close()
        await fresh.close()
        await runner.cleanup()
    assert failures == []
    assert done >= REQUESTS // 2, "the time bound cut the load short"
    assert not renewals, "both renewals were written"
    assert expected[0] in during, "connections opened after the first renewal saw it"
    assert serials and set(serials) == {expected[-1]}


async def test_internal_client_by_ip_checks_the_pod_dns_name(tls_dir: Path, monkeypatch):
    """The cache dials its node at $(POD_IP), which the certificate need not name: the pod's DNS name is checked
    instead (NodeClient's server_hostname, from internal_hostname)."""
    from chronoshard.shardnode.cache.node_client import NodeClient, UpstreamError

    app = web.Application()

    async def changes(request: web.Request) -> web.Response:
        return web.json_response({"lastLsn": 7, "peer": tls.peer_common_name(request.transport)})

    app.router.add_get("/v1/changes", changes)
    runner = web.AppRunner(app)
    await runner.setup()
    ip = "127.0.0.9"  # not among the certificate's IP SANs
    site = web.TCPSite(runner, ip, 0, ssl_context=tls.server_context(tls_dir))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"https://{ip}:{port}"
    monkeypatch.setenv("POD_NAME", f"{NAME}-1")
    monkeypatch.setenv("POD_NAMESPACE", NAMESPACE)
    client_app = web.Application()
    client_app[tls.CLIENT_SSL] = tls.client_context(tls_dir)
    try:
        async with aiohttp.ClientSession(connector=tls.connector(client_app)) as session:
            named = NodeClient(url, session, server_hostname=tls.internal_hostname(url))
            assert named.server_hostname == POD_DNS
            page = await named.changes(0, 1, wait=0)
            assert page["lastLsn"] == 7 and page["peer"] == certs.pod_identity(NAMESPACE, NAME)
            with pytest.raises(UpstreamError) as err:
                await NodeClient(url, session).changes(0, 1, wait=0)  # the bare IP is not in the certificate
            assert err.value.status == 503
    finally:
        await runner.cleanup()


async def test_peer_cas_are_trusted_once_published_and_a_broken_bundle_changes_nothing(
        tmp_path: Path, tls_dir: Path, caplog):
    """--replication-dir: a client of another ShardSet's CA is refused until that CA is in peers-ca.crt, then
    verified by the same (reloaded) server context; a bundle that does not load is logged once and skipped."""
    from tests.support.tls_files import publish

    peer_ca = new_ca("peer")
    peer_dir = tmp_path / "peer"
    write_tls_dir(peer_dir, shard_pair(peer_ca, name="peer"), peer_ca)
    repl = tmp_path / "replication"
    server_ctx = tls.server_context(tls_dir, repl)  # no directory yet: the own CA only
    reloader = tls.CertReloader(tls_dir, [server_ctx], replication_dir=repl)
    peer = tls.client_context(peer_dir)
    peer.load_verify_locations(cafile=str(tls_dir / "ca.crt"))
    seen: list[str | None] = []
    server = await _serve(server_ctx, seen)
    async with server:
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            line, _ = await _talk(server, peer, "localhost")
            if not line:
                raise ConnectionError("server closed the connection")
        publish(repl, {"peers-ca.crt": peer_ca.cert})
        assert reloader.poll_peers() and not reloader.poll_peers()  # loaded once; unchanged is no reload
        line, _ = await _talk(server, peer, "localhost")
        assert line == b"hello\n" and seen == [f"chronoshard:shardset:{NAMESPACE}:peer"]
    caplog.set_level(logging.ERROR)
    publish(repl, {"peers-ca.crt": b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"})
    assert not reloader.poll_peers() and not reloader.poll_peers()
    assert len([r for r in caplog.records if r.getMessage().startswith(f"peer CAs in {repl} not loaded")]) == 1
    assert reloader.peer_reloads == 1
    assert tls.peers_ca(tmp_path / "absent") is None and tls.peers_ca(None) is None
