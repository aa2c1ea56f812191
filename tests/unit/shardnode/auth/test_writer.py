"""Who a write is for: the pure rule, and the guard storing the caller for handlers (a real app with the auth
middleware; identities injected at the authenticator boundary, so no API server is asked)."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from chronoshard.shardnode.auth.apiserver import ApiServer, ApiServerConnection
from chronoshard.shardnode.auth.config import parse_security_config
from chronoshard.shardnode.auth.identity import Identity
from chronoshard.shardnode.auth.policy import Access
from chronoshard.shardnode.auth.writer import (
    MAX_ON_BEHALF_CHARS,
    ON_BEHALF_HEADER,
    QUEUED_APPLY_HEADER,
    effective_writer,
    on_behalf_headers,
    request_identity,
    writer_identity,
)
from chronoshard.shardnode.serving.scaffold import Probes, Route, create_server_app, secure_app
from prometheus_client import CollectorRegistry

from tests.support.rbac import security_doc

CFG = parse_security_config(security_doc("shop"))
POD = Identity(CFG.pod_identity, (), "pod", "client-certificate")
OPERATOR = Identity("chronoshard:operator", (), "operator", "client-certificate")
USER = Identity("system:serviceaccount:shop:app", ("system:serviceaccounts",), "serviceaccount", "token")
REPLICA = Identity("chronoshard:pod:dr:orders", (), "replica", "client-certificate")  # a peer member's pod


@pytest.mark.parametrize("identity, header, writer", [
    (POD, "system:serviceaccount:shop:app", "system:serviceaccount:shop:app"),  # a cache passing a write on
    (POD, "chronoshard:reversion:undo-1", "chronoshard:reversion:undo-1"),  # the shadow running a Reversion
    (POD, None, CFG.pod_identity),  # the pod writing for itself
    (POD, "", CFG.pod_identity),
    (POD, "u" * MAX_ON_BEHALF_CHARS, "u" * MAX_ON_BEHALF_CHARS),
    (POD, "u" * (MAX_ON_BEHALF_CHARS + 1), CFG.pod_identity),  # too long: ignored
    (POD, "alice\x00bob", CFG.pod_identity),  # not printable: ignored
    (USER, "system:serviceaccount:shop:admin", USER.user),  # nobody else can name another user
    (OPERATOR, "alice", OPERATOR.user),
    (None, "alice", None),  # no authentication: nothing proves who wrote
])
def test_effective_writer(identity, header, writer):
    assert effective_writer(identity, header) == writer


class HeaderIdentity:
    """Authenticates the identity named by the test header X-Test-As (pod, operator), as a certificate would."""

    async def authenticate(self, request: web.Request) -> Identity | None:
        return {"pod": POD, "operator": OPERATOR, "replica": REPLICA}.get(request.headers.get("X-Test-As", ""))


class Svc:
    async def start(self, app: web.Application) -> None: ...
    async def shutting_down(self, app: web.Application) -> None: ...
    async def stop(self, app: web.Application) -> None: ...


async def whoami(request: web.Request) -> web.Response:
    caller = request_identity(request)
    return web.json_response({"caller": caller.user if caller else None, "writer": writer_identity(request),
                              "onward": on_behalf_headers(request)})


def app_with(secured: bool) -> web.Application:
    from kubernetes import client

    registry = CollectorRegistry()
    app = create_server_app(Svc(), Probes(registry, lambda: {"ready": True}),
                            [Route("GET", "/v1/whoami", whoami, Access.ADMIN),
                             Route("PUT", "/v1/tables/{table}/blocks/{key}", whoami, Access.DATA_UPDATE)])
    if secured:  # an API server nobody listens on: pod and operator are decided without one
        api = ApiServer(ApiServerConnection("https://127.0.0.1:9", False, client.Configuration()))
        secure_app(app, CFG, api, "test", authenticators=[HeaderIdentity()])
    return app


async def test_the_guard_hands_the_caller_to_handlers():
    async with TestClient(TestServer(app_with(True))) as c:
        r = await c.get("/v1/whoami", headers={"X-Test-As": "pod", ON_BEHALF_HEADER: "alice"})
        assert await r.json() == {"caller": CFG.pod_identity, "writer": "alice", "onward": {ON_BEHALF_HEADER: "alice"}}
        r = await c.get("/v1/whoami", headers={"X-Test-As": "operator", ON_BEHALF_HEADER: "alice"})
        assert (await r.json())["writer"] == "chronoshard:operator"
    async with TestClient(TestServer(app_with(False))) as c:
        r = await c.get("/v1/whoami", headers={ON_BEHALF_HEADER: "alice"})
        assert await r.json() == {"caller": None, "writer": None, "onward": {}}


async def test_a_replica_writes_only_a_queued_apply_and_for_the_user_it_names():
    apply = {"X-Test-As": "replica", QUEUED_APPLY_HEADER: "w-1", "Idempotency-Key": "queue-w-1",
             ON_BEHALF_HEADER: "system:serviceaccount:shop:app"}
    async with TestClient(TestServer(app_with(True))) as c:
        r = await c.put("/v1/tables/t/blocks/k", headers=apply, data=b"v")
        assert r.status == 200
        assert (await r.json())["writer"] == "system:serviceaccount:shop:app"  # the token's user, not the peer pod
        for missing in (QUEUED_APPLY_HEADER, "Idempotency-Key"):  # without either it is a replica's own write
            r = await c.put("/v1/tables/t/blocks/k", headers={k: v for k, v in apply.items() if k != missing})
            assert r.status == 403 and (await r.json())["reason"] == "replica_only"
        r = await c.get("/v1/whoami", headers=apply)  # not a block write: the header opens nothing else
        assert r.status == 403
