"""A forward between caches names the writer of the request it carries, never the one a caller claimed: real
apps on loopback, the forwarding one behind the auth middleware (identities injected at the authenticator)."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from chronoshard.shardnode.auth.apiserver import ApiServer, ApiServerConnection
from chronoshard.shardnode.auth.config import parse_security_config
from chronoshard.shardnode.auth.identity import Identity
from chronoshard.shardnode.auth.policy import Access
from chronoshard.shardnode.auth.writer import ON_BEHALF_HEADER
from chronoshard.shardnode.serving.peer_http import PeerPool
from chronoshard.shardnode.serving.routing import forward
from chronoshard.shardnode.serving.scaffold import Probes, Route, create_server_app, secure_app
from prometheus_client import CollectorRegistry

from tests.support.rbac import security_doc
from tests.support.servers import serve

CFG = parse_security_config(security_doc("shop"))


class HeaderIdentity:
    async def authenticate(self, request: web.Request) -> Identity | None:
        kind = request.headers.get("X-Test-As")
        if kind == "pod":
            return Identity(CFG.pod_identity, (), "pod", "client-certificate")
        if kind == "operator":
            return Identity("chronoshard:operator", (), "operator", "client-certificate")
        return None


class Svc:
    async def start(self, app: web.Application) -> None: ...
    async def shutting_down(self, app: web.Application) -> None: ...
    async def stop(self, app: web.Application) -> None: ...


async def echo(request: web.Request) -> web.Response:
    return web.json_response({"onBehalf": request.headers.get(ON_BEHALF_HEADER)})


def forwarding_app(owner: list[str], secured: bool) -> web.Application:
    from kubernetes import client

    async def fwd(request: web.Request) -> web.StreamResponse:
        pool = PeerPool()
        try:
            return await forward(request, owner[0], 1, session=pool)
        finally:
            await pool.close()

    app = create_server_app(Svc(), Probes(CollectorRegistry(), lambda: {"ready": True}),
                            [Route("PUT", "/v1/fwd", fwd, Access.ADMIN)])
    if secured:
        api = ApiServer(ApiServerConnection("https://127.0.0.1:9", False, client.Configuration()))
        secure_app(app, CFG, api, "test", authenticators=[HeaderIdentity()])
    return app


async def test_forward_names_the_writer_of_the_request():
    peer = web.Application()
    peer.router.add_put("/v1/fwd", echo)
    owner: list[str] = []
    async with serve(peer) as peer_url, serve(forwarding_app(owner, True)) as url, \
            serve(forwarding_app(owner, False)) as open_url, aiohttp.ClientSession() as s:
        owner.append(peer_url)

        async def sent(base: str, headers: dict[str, str]) -> object:
            r = await s.put(f"{base}/v1/fwd", data=b"v", headers=headers)
            assert r.status == 200, await r.text()
            return (await r.json())["onBehalf"]

        assert await sent(url, {"X-Test-As": "pod", ON_BEHALF_HEADER: "alice"}) == "alice"
        assert await sent(url, {"X-Test-As": "pod"}) == CFG.pod_identity
        assert await sent(url, {"X-Test-As": "operator", ON_BEHALF_HEADER: "alice"}) == "chronoshard:operator"
        assert await sent(url, {"X-Test-As": "pod", ON_BEHALF_HEADER.lower(): "y" * 300}) == CFG.pod_identity
        assert await sent(open_url, {ON_BEHALF_HEADER: "alice"}) is None  # no authentication: nothing passed on
