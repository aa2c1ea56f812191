"""Every route of every shard-pod server declares its access rule; one without is refused (fail closed)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from chronoshard.shardnode.auth.apiserver import ApiServer, ApiServerConnection
from chronoshard.shardnode.auth.config import parse_security_config
from chronoshard.shardnode.auth.identity import Identity
from chronoshard.shardnode.auth.policy import Access
from chronoshard.shardnode.cache.server import CacheConfig
from chronoshard.shardnode.cache.server import create_app as create_cache
from chronoshard.shardnode.keyspace.partitioning import initial_map
from chronoshard.shardnode.node.server import NodeConfig
from chronoshard.shardnode.node.server import create_app as create_node
from chronoshard.shardnode.predictor.main import PredictorService
from chronoshard.shardnode.predictor.main import create_app as create_predictor
from chronoshard.shardnode.serving.routing import PartitionMapSource
from chronoshard.shardnode.serving.scaffold import (
    Partitioning,
    Probes,
    Route,
    create_server_app,
    route_policies,
    secure_app,
)
from prometheus_client import CollectorRegistry

from tests.support.rbac import security_doc
from tests.support.servers import keyring_dir

CFG = parse_security_config(security_doc("shop"))


def unreachable_api() -> ApiServer:
    """An API server nobody listens on: any review would answer 503, so a test passing proves none was asked."""
    from kubernetes import client
    return ApiServer(ApiServerConnection("https://127.0.0.1:9", False, client.Configuration()))


def apps(tmp: Path) -> dict[str, web.Application]:
    (tmp / "map.json").write_text(initial_map(1).to_json())
    part = Partitioning(PartitionMapSource(tmp / "map.json"), 0)
    kdir = keyring_dir(tmp)
    (tmp / "p").mkdir()
    return {"node": create_node(NodeConfig(data_dir=tmp / "data", keyring_dir=kdir, partitioning=part)),
            "cache": create_cache(CacheConfig(node_url="http://127.0.0.1:9", keyring_dir=kdir, partitioning=part)),
            "predictor": create_predictor(PredictorService("http://127.0.0.1:9", tmp / "p", None))}


def test_every_route_of_every_server_has_a_policy(tmp_path):
    for name, app in apps(tmp_path).items():
        table = route_policies(app)
        registered = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
        # Every registered route is in the table (HEAD is checked as its GET) and none lacks a policy.
        assert {(("GET" if m == "HEAD" else m), p) for m, p in registered} == set(table), name
        assert [k for k, v in table.items() if v is None] == [], name
        assert table[("GET", "/healthz")] is Access.PUBLIC and table[("GET", "/readyz")] is Access.PUBLIC
        assert table[("GET", "/metrics")] is Access.METRICS


def test_block_routes_and_admin_routes(tmp_path):
    node = route_policies(apps(tmp_path)["node"])
    t = "/v1/tables/{table}"
    assert node[("GET", t + "/blocks/{key}")] is Access.DATA_GET
    assert node[("POST", t + "/blocks:batchGet")] is Access.DATA_GET
    assert node[("GET", t + "/blocks")] is Access.DATA_LIST
    assert node[("PUT", t + "/blocks/{key}")] is Access.DATA_UPDATE
    assert node[("DELETE", t + "/blocks/{key}")] is Access.DATA_DELETE
    assert node[("GET", "/v1/partitions")] is Access.PARTITIONS
    for route in (("POST", "/v1/rewrap"), ("POST", "/v1/verify"), ("GET", "/v1/keys")):
        assert node[route] is Access.ADMIN
    # The change stream and status are for the pods, the operator and peer replicas (docs/mirroring.md).
    for route in (("GET", "/v1/changes"), ("GET", "/v1/consumers"), ("PUT", "/v1/consumers/{name}"),
                  ("GET", "/v1/consumers/{name}"), ("DELETE", "/v1/consumers/{name}"),
                  ("POST", "/v1/consumers/{name}/ack"), ("GET", "/v1/snapshot"), ("GET", "/v1/status"),
                  ("GET", t + "/frames/{key}"), ("POST", t + "/frames:batchGet")):
        assert node[route] is Access.REPLICATION


class Injected:
    """An identity at the authenticator boundary (the place the tiered tokens will plug in)."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    async def authenticate(self, request: web.Request) -> Identity | None:
        return self.identity if "X-Test-Identity" in request.headers else None


class Svc:
    async def start(self, app: web.Application) -> None: ...
    async def shutting_down(self, app: web.Application) -> None: ...
    async def stop(self, app: web.Application) -> None: ...


async def ok(request: web.Request) -> web.StreamResponse:
    return web.json_response({"ok": True})


def small_app(registry: CollectorRegistry) -> web.Application:
    return create_server_app(Svc(), Probes(registry, lambda: {"ready": True}),
                             [Route("GET", "/v1/unclassified", ok), Route("GET", "/v1/admin", ok, Access.ADMIN)])


@pytest.mark.parametrize("kind, admin", [("pod", 200), ("operator", 200), ("serviceaccount", 403)])
async def test_unclassified_route_is_refused_even_for_the_pod(kind, admin):
    registry = CollectorRegistry()
    app = small_app(registry)
    who = Identity("someone", (), kind, "test")
    secure_app(app, CFG, unreachable_api(), "test", authenticators=[Injected(who)])
    async with TestClient(TestServer(app)) as c:
        r = await c.get("/v1/unclassified", headers={"X-Test-Identity": "1"})
        assert r.status == 403 and (await r.json())["error"] == "forbidden"
        assert (await c.get("/v1/admin", headers={"X-Test-Identity": "1"})).status == admin
        assert (await c.get("/healthz")).status == 200
    assert registry.get_sample_value("chronoshard_auth_decisions_total",
                                     {"server": "test", "result": "forbidden", "reason": "no_policy"}) == 1


async def test_refusals_before_any_review():
    """No credential, a malformed header, an expired JWT, an unknown path: 401 without asking the API server."""
    from tests.support.rbac import expired_jwt

    registry = CollectorRegistry()
    app = small_app(registry)
    secure_app(app, CFG, unreachable_api(), "test")
    tok = expired_jwt("chronoshard.io/shop/orders", "system:serviceaccount:shop:app")
    async with TestClient(TestServer(app)) as c:
        for headers, reason in (({}, "missing"), ({"Authorization": "Basic abc"}, "malformed"),
                                ({"Authorization": "Bearer"}, "malformed"),
                                ({"Authorization": f"Bearer {tok}"}, "expired")):
            r = await c.get("/v1/admin", headers=headers)
            body = await r.text()
            assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer", reason
            assert tok not in body
            assert registry.get_sample_value("chronoshard_auth_decisions_total",
                                             {"server": "test", "result": "unauthenticated", "reason": reason}) >= 1
        assert (await c.get("/no/such/path")).status == 401
        # The API server being unreachable is a 503, never a pass.
        r = await c.get("/v1/admin", headers={"Authorization": "Bearer opaque-token"})
        assert r.status == 503 and (await r.json())["error"] == "unavailable"


async def test_open_app_logs_one_warning(caplog):
    caplog.set_level(logging.WARNING)
    async with TestClient(TestServer(small_app(CollectorRegistry()))) as c:
        assert (await c.get("/v1/unclassified")).status == 200
    warnings = [r for r in caplog.records if "WITHOUT authentication" in r.getMessage()]
    assert len(warnings) == 1
