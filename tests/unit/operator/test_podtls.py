"""The operator's pod clients over TLS: which URL and name a pod is reached at, the operator's client
certificate in a real handshake against a shard server's context, and the key-report probe end to end."""

from __future__ import annotations

import asyncio
import random
import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from chronoshard.operator import certs, podtls
from chronoshard.operator.keyrotation import probe
from chronoshard.shardnode.serving import tls

from tests.support.tls_files import NAME, NAMESPACE, new_ca, now, shard_pair, write_tls_dir


def pod(ip: str | None, secure: bool = True, shard: int = 1) -> dict:
    command = ["chronoshard-node", "--host", "$(POD_IP)"] + (["--tls-dir", "/etc/chronoshard/tls"] if secure else [])
    return {"metadata": {"name": f"{NAME}-{shard}", "namespace": NAMESPACE,
                         "labels": {"app.kubernetes.io/instance": NAME}},
            "spec": {"containers": [{"name": "node", "command": command}]},
            "status": {"podIP": ip} if ip else {}}


def test_endpoint_follows_the_pods_spec():
    at = podtls.endpoint(pod("10.0.0.5"), 1, "node", "/v1/keys")
    assert at == podtls.Endpoint("https://10.0.0.5:7400/v1/keys", f"{NAME}-1.{NAME}-headless.{NAMESPACE}.svc")
    assert podtls.endpoint(pod("10.0.0.5", secure=False), 1, "cache", "/metrics") == \
        podtls.Endpoint("http://10.0.0.5:7401/metrics", None)
    assert podtls.endpoint(pod("fd00::5"), 1, "predictor", "/v1/status").url == "https://[fd00::5]:7402/v1/status"
    assert podtls.endpoint(pod(None), 1, "node", "/v1/keys") is None
    assert podtls.uses_tls(pod("1.2.3.4")) and not podtls.uses_tls(pod("1.2.3.4", secure=False))


@pytest.fixture()
def shard_tls(tmp_path: Path):
    ca = new_ca()
    d = tmp_path / "tls"
    write_tls_dir(d, shard_pair(ca, shards=2), ca)
    return ca, d


async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str) -> list[str | None]:
    seen: list[str | None] = []

    async def on_client(reader, writer):
        seen.append(tls.peer_common_name(writer.transport))
        writer.write(b"ok\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=server_ctx)
    async with server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname=hostname)
        assert await reader.readline() == b"ok\n"
        writer.close()
    return seen


async def test_operator_certificate_is_accepted_and_names_the_operator(shard_tls):
    ca, d = shard_tls
    ctx = podtls.client_context(ca.cert, certs.issue_operator_certificate(ca, now()))
    seen = await _handshake(tls.server_context(d), ctx, f"{NAME}-1.{NAME}-headless.{NAMESPACE}.svc")
    assert seen == ["chronoshard:operator"]
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(tls.server_context(d), ctx, f"{NAME}-5.{NAME}-headless.{NAMESPACE}.svc")
    # Another ShardSet's CA does not vouch for these pods.
    other = new_ca("other")
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(tls.server_context(d), podtls.client_context(other.cert, None), "localhost")
    # Without a client certificate the operator is anonymous (the pods' auth layer then refuses it).
    assert await _handshake(tls.server_context(d), podtls.client_context(ca.cert, None), "localhost") == [None]


async def test_key_report_probe_over_https(shard_tls):
    ca, d = shard_tls
    seen: list[str | None] = []

    async def keys(request: web.Request) -> web.Response:
        seen.append(tls.peer_common_name(request.transport))
        return web.json_response({"generation": 3, "primary": 2, "versions": [{"id": 2, "state": "primary"}],
                                  "loadError": None})

    app = web.Application()
    app.router.add_get("/v1/keys", keys)
    runner = web.AppRunner(app)
    await runner.setup()
    # A loopback address of its own, so the node's fixed port 7400 is free on it.
    ip = f"127.{random.randint(1, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    await web.TCPSite(runner, ip, 7400, ssl_context=tls.server_context(d)).start()
    ctx = podtls.client_context(ca.cert, certs.issue_operator_certificate(ca, now()))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            report = await probe._get_keys(session, 1, "node", pod(ip))
            plain = await probe._get_keys(session, 1, "node", pod(ip, secure=False))
    finally:
        await runner.cleanup()
    assert report.reachable and report.generation == 3 and report.primary == 2
    assert seen == ["chronoshard:operator"]
    assert not plain.reachable  # an HTTP request to an HTTPS-only server fails, and is reported
