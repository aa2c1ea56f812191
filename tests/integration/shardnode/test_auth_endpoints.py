"""Every endpoint of every shard-pod server (node, cache, predictor, shadow, in-process over real TLS) against the
real API server with RBAC: no credential / malformed / expired / wrong audience / valid but not allowed / allowed
→ 401 / 401 / 401 / 401 / 403 / 2xx, with real TokenRequest tokens, TokenReview and SubjectAccessReview.

"Allowed" is a token of a ServiceAccount bound to a Role on ``shardsets/data`` (data routes), on the ShardSet
(``/v1/partitions``) and a ClusterRole on ``/metrics``; for the administrative routes it is the operator's
client certificate (CN ``chronoshard:operator``, signed by the ShardSet CA). "Expired" is a crafted JWT whose
``exp`` is past (TokenRequest issues nothing shorter than 10 minutes): it must be refused before any review.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from chronoshard.operator import certs
from chronoshard.shardnode.auth.apiserver import ApiServer, load_connection
from chronoshard.shardnode.auth.config import parse_security_config
from chronoshard.shardnode.auth.policy import Access
from chronoshard.shardnode.cache.server import CACHE, CacheConfig
from chronoshard.shardnode.cache.server import create_app as create_cache
from chronoshard.shardnode.keyspace.partitioning import initial_map
from chronoshard.shardnode.node.server import NODE, NodeConfig
from chronoshard.shardnode.node.server import create_app as create_node
from chronoshard.shardnode.predictor.main import PredictorService
from chronoshard.shardnode.predictor.main import create_app as create_predictor
from chronoshard.shardnode.serving import tls
from chronoshard.shardnode.serving.routing import PartitionMapSource
from chronoshard.shardnode.serving.scaffold import Partitioning, route_policies, secure_app
from chronoshard.shardnode.shadow.server import SHADOW
from chronoshard.shardnode.shadow.server import create_app as create_shadow
from chronoshard.shardnode.weave.api import WEAVER
from chronoshard.shardnode.weave.config import WeaverConfig
from chronoshard.shardnode.weave.server import create_app as create_weaver
from kubernetes import client
from prometheus_client import CollectorRegistry

from tests.support import rbac, tls_files
from tests.support.servers import keyring_dir, serve
from tests.support.shadow import shadow_config
from tests.support.waiting import wait_for, wait_for_async

pytestmark = pytest.mark.integration

CASES = ("none", "malformed", "expired", "wrong_audience", "forbidden", "allowed")
UNAUTHENTICATED = {"none": "missing", "malformed": "malformed", "expired": "expired",
                   "wrong_audience": "wrong_audience"}
ADMIN_LIKE = (Access.ADMIN, Access.REPLICATION)


@dataclass
class Env:
    """The namespace, the tokens and the TLS files every test uses."""

    namespace: str
    kubeconfig: Path
    tls_dir: Path
    tokens: dict[str, str]
    ca: certs.KeyPair
    operator: certs.KeyPair
    pod: certs.KeyPair
    root: Path
    secrets: list[str] = field(default_factory=list)  # every credential text, for the leak checks

    def security(self, **kw: Any) -> Any:
        return parse_security_config(rbac.security_doc(self.namespace, **kw))

    def client_ssl(self, pair: certs.KeyPair | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.tls_dir / "ca.crt"))
        if pair is not None:
            d = self.root / f"client-{uuid.uuid4().hex[:6]}"
            d.mkdir()
            (d / "c.crt").write_bytes(pair.cert)
            (d / "c.key").write_bytes(pair.key)
            ctx.load_cert_chain(d / "c.crt", d / "c.key")
        return ctx


def _allowed(authz: client.AuthorizationV1Api, user: str, attrs: dict[str, Any]) -> bool:
    review = authz.create_subject_access_review(client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(user=user, **attrs)))
    return bool(review.status.allowed)


@pytest.fixture(scope="module")
def env(control_plane, k8s_client, tmp_path_factory) -> Iterator[Env]:
    core, rb = client.CoreV1Api(k8s_client), client.RbacAuthorizationV1Api(k8s_client)
    ns = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    root = tmp_path_factory.mktemp("auth")
    deleg = rbac.delegator(control_plane, core, rb, ns, root)
    reader = rbac.service_account(core, ns, "reader")
    rbac.bind_role(rb, ns, "reader", rbac.data_rules(["t"], ["get", "list", "update", "delete"]))
    metrics_role = rbac.metrics_cluster_role(rb)
    metrics_binding = rbac.bind_cluster_role(rb, metrics_role, ns, "reader")
    rbac.service_account(core, ns, "stranger")
    aud = rbac.audience(ns)
    tokens = {"allowed": rbac.token(core, ns, "reader", [aud]),
              "forbidden": rbac.token(core, ns, "stranger", [aud]),
              "wrong_audience": rbac.token(core, ns, "reader", ["other.example/elsewhere"]),
              "expired": rbac.expired_jwt(aud, reader),
              "kubeconfig": rbac.token(core, ns, "reader", None)}
    # RBAC reaches the authorizer through informers: wait until the bindings decide, so no test caches a stale "no".
    authz = client.AuthorizationV1Api(k8s_client)
    wait_for(lambda: _allowed(authz, reader, {"resource_attributes": client.V1ResourceAttributes(
        group="chronoshard.io", resource="shardsets", subresource="data", name="t", namespace=ns, verb="get")})
        and _allowed(authz, reader, {"non_resource_attributes": client.V1NonResourceAttributes(
            path="/metrics", verb="get")}), what="the reader's RBAC bindings to take effect")
    ca = tls_files.new_ca(rbac.SHARDSET)
    pod = certs.issue_shard_certificate(ca, ns, rbac.SHARDSET, 1, [], tls_files.now(), certs.SERVING_LIFETIME)
    tls_dir = root / "tls"
    tls_files.write_tls_dir(tls_dir, pod, ca)
    e = Env(ns, deleg.kubeconfig, tls_dir, tokens, ca, certs.issue_operator_certificate(ca, tls_files.now()), pod,
            root)
    e.secrets = [*tokens.values(), deleg.token]
    yield e
    for name in (deleg.binding, metrics_binding):
        rb.delete_cluster_role_binding(name)
    rb.delete_cluster_role(metrics_role)
    core.delete_namespace(ns)


# ---- the servers, secured as a pod's would be ------------------------------------------------------------
@dataclass
class Server:
    url: str
    registry: CollectorRegistry
    name: str
    app: web.Application
    node_url: str = ""  # the open node a cache or shadow under test follows


def partitioning(tmp: Path) -> Partitioning:
    (tmp / "map.json").write_text(initial_map(1).to_json())
    return Partitioning(PartitionMapSource(tmp / "map.json"), 0)


@contextlib.asynccontextmanager
async def secured(app: web.Application, env: Env, registry: CollectorRegistry, name: str,
                  **security: Any) -> AsyncIterator[Server]:
    secure_app(app, env.security(**security), ApiServer(load_connection(str(env.kubeconfig))), name)
    async with serve(app, tls.install(app, env.tls_dir)) as url:
        yield Server(url, registry, name, app)


@contextlib.asynccontextmanager
async def node_server(env: Env, tmp: Path, **security: Any) -> AsyncIterator[Server]:
    cfg = NodeConfig(data_dir=tmp / "data", keyring_dir=keyring_dir(tmp), partitioning=partitioning(tmp))
    app = create_node(cfg)
    async with secured(app, env, app[NODE].metrics.registry, "node", **security) as srv:
        yield srv


@contextlib.asynccontextmanager
async def cache_server(env: Env, tmp: Path) -> AsyncIterator[Server]:
    # The cache's own node is an open, in-process one: what is tested here is the cache's front door.
    kdir = keyring_dir(tmp)
    async with serve(create_node(NodeConfig(data_dir=tmp / "data", keyring_dir=kdir))) as node_url:
        app = create_cache(CacheConfig(node_url=node_url, keyring_dir=kdir, partitioning=partitioning(tmp)))
        async with secured(app, env, app[CACHE].metrics.registry, "cache") as srv:
            yield srv


@contextlib.asynccontextmanager
async def shadow_server(env: Env, tmp: Path) -> AsyncIterator[Server]:
    # The node it follows is an open, in-process one (as for the cache): what is tested is the shadow's front door.
    kdir = keyring_dir(tmp)
    node_app = create_node(NodeConfig(data_dir=tmp / "data", keyring_dir=kdir))
    async with serve(node_app) as node_url:
        app = create_shadow(shadow_config(tmp, node_url, kdir, {"tables": ["t"]}))
        async with secured(app, env, app[SHADOW].metrics.registry, "shadow") as srv:
            srv.node_url = node_url
            yield srv


@contextlib.asynccontextmanager
async def weaver_server(env: Env, tmp: Path) -> AsyncIterator[Server]:
    # The node it samples is an open, in-process one; no shadow history: the weaver's front door is what is tested.
    kdir = keyring_dir(tmp)
    async with serve(create_node(NodeConfig(data_dir=tmp / "data", keyring_dir=kdir))) as node_url:
        app = create_weaver(WeaverConfig(node_url=node_url, data_dir=tmp / "weave", keyring_dir=kdir,
                                         partitioning=partitioning(tmp)))
        async with secured(app, env, app[WEAVER].metrics.registry, "weaver") as srv:
            srv.node_url = node_url
            yield srv


@contextlib.asynccontextmanager
async def predictor_server(env: Env, tmp: Path) -> AsyncIterator[Server]:
    kdir = keyring_dir(tmp)
    async with serve(create_node(NodeConfig(data_dir=tmp / "data", keyring_dir=kdir))) as node_url, \
            serve(create_cache(CacheConfig(node_url=node_url, keyring_dir=kdir))) as cache_url:
        (tmp / "predictor").mkdir()
        service = PredictorService(cache_url, tmp / "predictor", None)
        app = create_predictor(service)
        async with secured(app, env, service.predictor.metrics.registry, "predictor") as srv:
            yield srv


# ---- the endpoints ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    method: str
    template: str
    access: Access
    path: str = ""
    body: Any = None
    ok: int = 200
    # A data route without a table (GET /v1/queue/{id}): only tiered tokens and the pods reach it; an RBAC-allowed
    # token is refused like a stranger's (admin_only). Tiered tokens: tests/integration/shardnode/test_tiered_tokens.py
    tiered_only: bool = False

    @property
    def url_path(self) -> str:
        return self.path or self.template

    def __str__(self) -> str:
        return f"{self.method} {self.template}"


T = "/v1/tables/{table}"
SLOT = "seeded"  # the node's consumer slot made by ``seed``, at the LSN of its two writes
BLOCK_ENDPOINTS = [
    Endpoint("GET", T + "/blocks/{key}", Access.DATA_GET, "/v1/tables/t/blocks/k"),
    Endpoint("PUT", T + "/blocks/{key}", Access.DATA_UPDATE, "/v1/tables/t/blocks/k", b"value"),
    Endpoint("DELETE", T + "/blocks/{key}", Access.DATA_DELETE, "/v1/tables/t/blocks/d"),
    Endpoint("POST", T + "/blocks:batchGet", Access.DATA_GET, "/v1/tables/t/blocks:batchGet", {"keys": ["k"]}),
    Endpoint("GET", T + "/blocks", Access.DATA_LIST, "/v1/tables/t/blocks"),
]
STANDARD = [
    Endpoint("GET", "/healthz", Access.PUBLIC), Endpoint("GET", "/readyz", Access.PUBLIC),
    Endpoint("GET", "/metrics", Access.METRICS),
]
NODE_ENDPOINTS = [
    *BLOCK_ENDPOINTS, *STANDARD,
    Endpoint("GET", "/openapi.json", Access.PUBLIC),
    Endpoint("GET", "/v1/partitions", Access.PARTITIONS),
    Endpoint("GET", T + "/frames/{key}", Access.REPLICATION, "/v1/tables/t/frames/k"),
    Endpoint("POST", T + "/frames:batchGet", Access.REPLICATION, "/v1/tables/t/frames:batchGet", {"keys": ["k"]}),
    Endpoint("GET", "/v1/changes", Access.REPLICATION),
    Endpoint("GET", "/v1/keys", Access.ADMIN),
    Endpoint("POST", "/v1/rewrap", Access.ADMIN, body={}, ok=202),
    Endpoint("GET", "/v1/rewrap", Access.ADMIN),
    Endpoint("POST", "/v1/verify", Access.ADMIN, body={"mode": "sample", "sample": 1}, ok=202),
    Endpoint("GET", "/v1/verify", Access.ADMIN),
    # The change stream's consumer slots: ``seed`` registers SLOT; a new slot answers 201; DELETE comes last.
    Endpoint("GET", "/v1/consumers", Access.REPLICATION),
    Endpoint("PUT", "/v1/consumers/{name}", Access.REPLICATION, "/v1/consumers/fresh", {}, ok=201),
    Endpoint("GET", "/v1/consumers/{name}", Access.REPLICATION, f"/v1/consumers/{SLOT}"),
    Endpoint("POST", "/v1/consumers/{name}/ack", Access.REPLICATION, f"/v1/consumers/{SLOT}/ack", {"lsn": 2}),
    Endpoint("DELETE", "/v1/consumers/{name}", Access.REPLICATION, f"/v1/consumers/{SLOT}"),
    Endpoint("GET", "/v1/snapshot", Access.REPLICATION),
    Endpoint("GET", "/v1/status", Access.REPLICATION),
    Endpoint("GET", "/v1/health", Access.REPLICATION),
    Endpoint("GET", "/v1/health/history", Access.REPLICATION),
    # The role routes (docs/mirroring.md): the stored document again is idempotent (200); a primary repairs
    # nothing (409 not_mirror, past the guard).
    Endpoint("GET", "/v1/replication", Access.REPLICATION),
    Endpoint("PUT", "/v1/replication", Access.ADMIN, body={"term": 0, "role": "primary"}),
    Endpoint("GET", "/v1/digest", Access.REPLICATION),
    Endpoint("POST", "/v1/replication/repair", Access.ADMIN, body={"buckets": ["0a"]}, ok=409),
    # A move's source side (docs/resharding.md): the map in force pushed again is a no-op; the node owns the whole
    # keyspace under it, so a purge reaches the handler and is refused (409 owned).
    Endpoint("PUT", "/v1/partitions", Access.ADMIN, body=initial_map(1).to_json().encode()),
    Endpoint("PUT", "/v1/fences/{name}", Access.ADMIN, "/v1/fences/f",
             {"ranges": [["0000000000000000", "0000000000000000"]], "holdSeconds": 1}),
    Endpoint("GET", "/v1/fences", Access.ADMIN),
    Endpoint("DELETE", "/v1/fences/{name}", Access.ADMIN, "/v1/fences/f"),
    Endpoint("POST", "/v1/ranges:purge", Access.ADMIN, body={"ranges": [["0000000000000000", "ffffffffffffffff"]],
                                                             "epoch": 1}, ok=409),
    Endpoint("GET", "/v1/ranges/stats", Access.ADMIN, "/v1/ranges/stats?keyspace=0000000000000000-ffffffffffffffff"),
    Endpoint("GET", "/v1/partitions/stats", Access.ADMIN),  # the WeavePlan's sampling (docs/weaving.md)
    # Tiered tokens (docs/tokens.md): queued writes (an unknown id is 404 past the guard) and revocations.
    Endpoint("GET", "/v1/queue/{id}", Access.DATA_GET, "/v1/queue/nope", ok=404, tiered_only=True),
    Endpoint("GET", "/v1/queue", Access.ADMIN),
    Endpoint("PUT", "/v1/tokens/revocations", Access.ADMIN,
             body={"revocations": [{"tokenId": "j1", "expiresAt": 4_000_000_000}]}),
    Endpoint("GET", "/v1/tokens/revocations", Access.ADMIN),
    # A move's target side: this node has no partition map, so it owns every range and takes no move (409 owned,
    # past the guard); no move exists to show (404), and closing one that does not exist is idempotent (200).
    Endpoint("PUT", "/v1/moves/{name}", Access.ADMIN, "/v1/moves/m",
             {"source": {"url": "https://127.0.0.1:1", "shard": 0}, "partition": 1,
              "ranges": [["8000000000000000", "ffffffffffffffff"]]}, ok=409),
    Endpoint("GET", "/v1/moves", Access.ADMIN),
    Endpoint("GET", "/v1/moves/{name}", Access.ADMIN, "/v1/moves/m", ok=404),
    Endpoint("DELETE", "/v1/moves/{name}", Access.ADMIN, "/v1/moves/m"),
    Endpoint("GET", "/v1/moves/{name}/digest", Access.ADMIN, "/v1/moves/m/digest?sourceLsn=1", ok=404),
    Endpoint("PUT", "/v1/moves/{name}/hold", Access.ADMIN, "/v1/moves/m/hold?seconds=1", ok=404),
    Endpoint("GET", "/v1/ranges/digest", Access.REPLICATION,
             "/v1/ranges/digest?keyspace=0000000000000000-ffffffffffffffff"),
]
CACHE_ENDPOINTS = [
    *BLOCK_ENDPOINTS, *STANDARD,
    Endpoint("GET", "/openapi.json", Access.PUBLIC),
    Endpoint("GET", "/v1/partitions", Access.PARTITIONS),
    Endpoint("POST", "/v1/prefetch", Access.ADMIN, body={"hints": [{"table": "t", "key": "k", "score": 0.9}]},
             ok=202),
    Endpoint("POST", "/v1/prefetch/keys", Access.ADMIN, body={"keys": [{"table": "t", "score": 0.9}]}, ok=202),
    Endpoint("GET", "/v1/access-log", Access.ADMIN),
    Endpoint("GET", "/v1/keys", Access.ADMIN),
    Endpoint("GET", "/v1/cache", Access.ADMIN),
    Endpoint("PUT", "/v1/partitions", Access.ADMIN, body=initial_map(1).to_json().encode()),
    Endpoint("GET", "/v1/queue/{id}", Access.DATA_GET, "/v1/queue/nope", ok=404, tiered_only=True),
    Endpoint("PUT", "/v1/tokens/revocations", Access.ADMIN,
             body={"revocations": [{"tokenId": "j1", "expiresAt": 4_000_000_000}]}),
    Endpoint("GET", "/v1/tokens/revocations", Access.ADMIN),
]
PREDICTOR_ENDPOINTS = [
    *STANDARD, Endpoint("GET", "/v1/status", Access.ADMIN),
    *(Endpoint("HEAD", p, a) for p, a in (("/healthz", Access.PUBLIC), ("/readyz", Access.PUBLIC),
                                          ("/metrics", Access.METRICS), ("/v1/status", Access.ADMIN))),
]
PLAN = "seeded"  # the shadow's reversion plan made by ``seed``; its run with a wrong digest reaches the handler (409)
SHADOW_ENDPOINTS = [
    *STANDARD,
    Endpoint("GET", "/openapi.json", Access.PUBLIC),
    Endpoint("GET", T + "/history/{key}", Access.DATA_GET, "/v1/tables/t/history/k"),
    Endpoint("GET", T + "/at/{key}", Access.DATA_GET, "/v1/tables/t/at/k?lsn=1"),
    Endpoint("GET", T + "/state", Access.DATA_LIST, "/v1/tables/t/state?lsn=2"),
    Endpoint("GET", T + "/diff", Access.DATA_LIST, "/v1/tables/t/diff?fromLsn=1&toLsn=2"),
    Endpoint("POST", "/v1/reversions", Access.ADMIN, body={"name": "fresh", "tables": ["t"], "lsn": 1}, ok=201),
    Endpoint("GET", "/v1/reversions/{name}", Access.ADMIN, f"/v1/reversions/{PLAN}"),
    Endpoint("POST", "/v1/reversions/{name}/run", Access.ADMIN, f"/v1/reversions/{PLAN}/run",
             {"digest": "0" * 64}, ok=409),
    Endpoint("DELETE", "/v1/reversions/{name}", Access.ADMIN, f"/v1/reversions/{PLAN}"),
    Endpoint("GET", "/v1/status", Access.ADMIN),
    Endpoint("GET", "/v1/keys", Access.ADMIN),
    Endpoint("POST", "/v1/rewrap", Access.ADMIN, body={}, ok=202),
    Endpoint("GET", "/v1/rewrap", Access.ADMIN),
    Endpoint("GET", "/v1/anomalies", Access.ADMIN),
    Endpoint("GET", T + "/anomalies", Access.DATA_LIST, "/v1/tables/t/anomalies"),
    # No incident t.1 exists: an allowed caller reaches the handler, which answers 404.
    Endpoint("GET", T + "/anomalies/{id}/keys", Access.DATA_LIST, "/v1/tables/t/anomalies/t.1/keys", ok=404),
    Endpoint("POST", T + "/whatif", Access.DATA_GET, "/v1/tables/t/whatif",
             {"changes": [{"op": "delete", "key": "k"}]}),
]
WEAVER_ENDPOINTS = [  # docs/weaving.md; no woven snapshot 1 exists: an allowed caller reaches the handler (404)
    *STANDARD,
    Endpoint("GET", "/openapi.json", Access.PUBLIC),
    Endpoint("GET", "/v1/partitions", Access.PARTITIONS),
    Endpoint("GET", "/v1/status", Access.ADMIN),
    Endpoint("GET", "/v1/partitions/{id}/history", Access.ADMIN, "/v1/partitions/0/history"),
    Endpoint("GET", "/v1/woven", Access.ADMIN),
    Endpoint("GET", "/v1/woven/{id}", Access.ADMIN, "/v1/woven/1", ok=404),
    Endpoint("GET", "/v1/woven/{id}/state", Access.ADMIN, "/v1/woven/1/state", ok=404),
    Endpoint("GET", "/v1/keys", Access.ADMIN),
    Endpoint("POST", "/v1/rewrap", Access.ADMIN, body={"keep": 1}, ok=202),
    Endpoint("GET", "/v1/rewrap", Access.ADMIN),
]
SERVERS = {"node": (node_server, NODE_ENDPOINTS), "cache": (cache_server, CACHE_ENDPOINTS),
           "predictor": (predictor_server, PREDICTOR_ENDPOINTS), "shadow": (shadow_server, SHADOW_ENDPOINTS),
           "weaver": (weaver_server, WEAVER_ENDPOINTS)}


def headers(env: Env, case: str) -> dict[str, str]:
    if case == "none":
        return {}
    if case == "malformed":
        return {"Authorization": "Bearer not a token, twice"}
    return {"Authorization": f"Bearer {env.tokens[case]}"}


async def call(srv: Server, env: Env, ep: Endpoint, case: str, pair: certs.KeyPair | None = None
               ) -> tuple[int, bytes, dict[str, str]]:
    kw: dict[str, Any] = {"headers": headers(env, case)}
    if isinstance(ep.body, bytes):
        kw["data"] = ep.body
    elif ep.body is not None:
        kw["json"] = ep.body
    connector = aiohttp.TCPConnector(ssl=env.client_ssl(pair))
    async with aiohttp.ClientSession(connector=connector) as s, \
            s.request(ep.method, srv.url + ep.url_path, **kw) as r:
        return r.status, await r.read(), dict(r.headers)


async def seed(srv: Server, env: Env) -> None:
    """Blocks t/k and t/d for the reads and the delete, written with the pods' own certificate (for a shadow:
    written to its node, captured, and a reversion plan made)."""
    if srv.name == "shadow":
        await seed_shadow(srv, env)
        return
    for key in ("k", "d"):
        put = Endpoint("PUT", "", Access.DATA_UPDATE, f"/v1/tables/t/blocks/{key}", b"seed")
        assert (await call(srv, env, put, "none", env.pod))[0] == 200
    if srv.name == "node":
        register = Endpoint("PUT", "", Access.REPLICATION, f"/v1/consumers/{SLOT}", {})
        assert (await call(srv, env, register, "none", env.pod))[0] == 201


async def seed_shadow(srv: Server, env: Env) -> None:
    async with aiohttp.ClientSession() as s:
        for key in ("k", "d"):  # LSNs 1 and 2
            async with s.put(f"{srv.node_url}/v1/tables/t/blocks/{key}", data=b"seed") as r:
                assert r.status == 200

    async def captured() -> bool:
        status, body, _ = await call(srv, env, Endpoint("GET", "", Access.ADMIN, "/v1/status"), "none", env.pod)
        return status == 200 and json.loads(body)["capture"].get("cursor", 0) >= 2

    await wait_for_async(captured, what="the shadow to capture the two seed writes")
    plan = Endpoint("POST", "", Access.ADMIN, "/v1/reversions", {"name": PLAN, "tables": ["t"], "lsn": 1})
    assert (await call(srv, env, plan, "none", env.pod))[0] == 201


def decisions(srv: Server, result: str, reason: str) -> float:
    return srv.registry.get_sample_value("chronoshard_auth_decisions_total",
                                         {"server": srv.name, "result": result, "reason": reason}) or 0.0


def no_secret_in(env: Env, text: str) -> None:
    for secret in env.secrets:
        assert secret not in text


async def check_matrix(srv: Server, env: Env, ep: Endpoint) -> None:
    for case in CASES:
        pair = env.operator if case == "allowed" and ep.access in ADMIN_LIKE else None
        status, body, hdrs = await call(srv, env, ep, "none" if pair is not None else case, pair)
        no_secret_in(env, body.decode(errors="replace"))
        if ep.access is Access.PUBLIC:
            assert status == 200, (case, status, body)
            continue
        expected = 401 if case in UNAUTHENTICATED else 403 if case == "forbidden" or ep.tiered_only else ep.ok
        assert status == expected, (str(ep), case, status, body)
        if ep.method == "HEAD":
            continue
        if status == 401:
            assert json.loads(body)["error"] == "unauthenticated" and hdrs["WWW-Authenticate"] == "Bearer"
            words = "no credential" if case == "none" else case.replace("_", " ")
            assert words in json.loads(body)["message"]
        elif status == 403:
            assert json.loads(body)["error"] == "forbidden"
    if ep.access is Access.PUBLIC:
        return
    for reason in UNAUTHENTICATED.values():
        assert decisions(srv, "unauthenticated", reason) == 1, (str(ep), reason)
    if ep.tiered_only:
        assert decisions(srv, "forbidden", "admin_only") == 2
        return
    denied = "admin_only" if ep.access in ADMIN_LIKE else "rbac"
    assert decisions(srv, "forbidden", denied) == 1
    assert decisions(srv, "allowed", "operator" if ep.access in ADMIN_LIKE else "rbac") >= 1


def _cases(server: str) -> list[Any]:
    return [pytest.param(server, ep, id=f"{server}:{ep}") for ep in SERVERS[server][1]]


@pytest.mark.parametrize("server, ep", _cases("node") + _cases("cache") + _cases("predictor") + _cases("shadow")
                         + _cases("weaver"))
async def test_endpoint_refuses_and_allows(env, tmp_path, caplog, server, ep):
    caplog.set_level(logging.DEBUG)
    factory = SERVERS[server][0]
    async with factory(env, tmp_path) as srv:
        if server not in ("predictor", "weaver"):  # the weaver has no blocks: nothing to seed
            await seed(srv, env)
        await check_matrix(srv, env, ep)
    for record in caplog.records:
        no_secret_in(env, record.getMessage())
    if ep.access is not Access.PUBLIC:
        audit = [r.getMessage() for r in caplog.records if r.name == "chronoshard.audit"]
        assert any(f'"route": "{ep.template}"' in line and '"status": 401' in line for line in audit)


@pytest.mark.parametrize("server", list(SERVERS))
async def test_every_route_is_in_the_matrix(env, tmp_path, server):
    """The endpoint lists above are exactly the servers' routes, each with the policy it declares."""
    factory, endpoints = SERVERS[server]
    async with factory(env, tmp_path) as srv:
        table = route_policies(srv.app)
    declared = {(m, t): a for (m, t), a in table.items()}
    tested = {(ep.method, ep.template): ep.access for ep in endpoints if ep.method != "HEAD"}
    assert tested == {k: v for k, v in declared.items() if k[0] != "HEAD"}


async def test_pod_certificate_is_allowed_everything_and_unknown_cn_is_forbidden(env, tmp_path):
    stranger = certs.issue(env.ca, "somebody-else", tls_files.now(), certs.OPERATOR_LIFETIME, server=False)
    async with node_server(env, tmp_path) as srv:
        await seed(srv, env)
        for ep in NODE_ENDPOINTS:
            assert (await call(srv, env, ep, "none", env.pod))[0] in (200, 201, 202, 409, ep.ok), str(ep)
        status, body, _ = await call(srv, env, Endpoint("GET", "", Access.ADMIN, "/v1/keys"), "none", stranger)
        assert status == 403 and "somebody-else" in json.loads(body)["message"]
        assert decisions(srv, "forbidden", "unknown_certificate") == 1
        assert decisions(srv, "allowed", "pod") >= len(NODE_ENDPOINTS) - 3


async def test_reviews_are_cached(env, tmp_path):
    get = BLOCK_ENDPOINTS[0]
    async with node_server(env, tmp_path) as srv:
        await seed(srv, env)
        for _ in range(3):
            assert (await call(srv, env, get, "allowed"))[0] == 200
        look = srv.registry.get_sample_value
        labels = {"server": "node"}
        assert look("chronoshard_auth_cache_lookups_total", {**labels, "cache": "token", "result": "miss"}) == 1
        assert look("chronoshard_auth_cache_lookups_total", {**labels, "cache": "token", "result": "hit"}) == 2
        assert look("chronoshard_auth_cache_lookups_total", {**labels, "cache": "decision", "result": "hit"}) == 2


async def test_concurrent_misses_share_one_review(env, tmp_path):
    """16 requests in flight with a token the server has not seen yet: one TokenReview and one
    SubjectAccessReview (real ones), not 16 of each; all 16 allowed."""
    from chronoshard.shardnode.serving.scaffold import GUARD

    get = BLOCK_ENDPOINTS[0]
    async with node_server(env, tmp_path) as srv:
        await seed(srv, env)
        api = srv.app[GUARD].api
        made = {"token_review": 0, "subject_access_review": 0}
        for name in made:
            real = getattr(api, name)

            async def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
                made[_name] += 1
                return await _real(*args)

            setattr(api, name, counted)  # the real review, counted
        answers = await asyncio.gather(*(call(srv, env, get, "allowed") for _ in range(16)))
        assert [a[0] for a in answers] == [200] * 16
        assert made == {"token_review": 1, "subject_access_review": 1}
        look = srv.registry.get_sample_value
        assert look("chronoshard_auth_cache_lookups_total", {"server": "node", "cache": "token", "result": "miss"}) \
            + look("chronoshard_auth_cache_lookups_total", {"server": "node", "cache": "token", "result": "hit"}) == 16


@pytest.mark.parametrize("accept, expected", [(False, 401), (True, 200)])
async def test_kubeconfig_tokens_only_when_accepted(env, tmp_path, accept, expected):
    async with node_server(env, tmp_path, accept_kubeconfig=accept) as srv:
        await seed(srv, env)
        status, body, _ = await call(srv, env, BLOCK_ENDPOINTS[0], "kubeconfig")
        assert status == expected, body
        if not accept:
            assert decisions(srv, "unauthenticated", "wrong_audience") == 1
