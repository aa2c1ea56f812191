"""Who made a change, end to end with authentication on: an application's writes through a real cache to a real
node (both over TLS, the cache presenting the pod's certificate), against the real API server's TokenReview and
SubjectAccessReview. The node's change log names the application's service account, not the cache's pod; a
header the application sends to pose as someone else is not honoured; a shadow following the node keeps the
identity and the byte profile in its history.

Reuses test_auth_endpoints' environment (namespace, ServiceAccount tokens bound by RBAC, ShardSet CA, pod and
operator certificates) and its way of securing a server.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from chronoshard.operator import certs
from chronoshard.shardnode.anomaly.profile import byte_profile, decode_profile, encode_profile
from chronoshard.shardnode.auth.writer import ON_BEHALF_HEADER
from chronoshard.shardnode.cache.server import CACHE, CacheConfig
from chronoshard.shardnode.cache.server import create_app as create_cache
from chronoshard.shardnode.node.server import NODE, NodeConfig
from chronoshard.shardnode.node.server import create_app as create_node
from chronoshard.shardnode.shadow.history import HistoryStore
from chronoshard.shardnode.shadow.server import SHADOW
from chronoshard.shardnode.shadow.server import create_app as create_shadow

from tests.integration.shardnode.test_auth_endpoints import Env, Server, env, partitioning, secured
from tests.support.servers import keyring_dir
from tests.support.shadow import shadow_config
from tests.support.waiting import wait_for_async

pytestmark = pytest.mark.integration
__all__ = ["env"]  # the module-scoped fixture, shared with test_auth_endpoints

NOISE = bytes(range(256)) * 4


@contextlib.asynccontextmanager
async def node_and_cache(env: Env, tmp: Path) -> AsyncIterator[tuple[Server, Server, Path]]:
    kdir = keyring_dir(tmp)
    node_app = create_node(NodeConfig(data_dir=tmp / "data", keyring_dir=kdir, partitioning=partitioning(tmp)))
    async with secured(node_app, env, node_app[NODE].metrics.registry, "node") as node:
        cache_app = create_cache(CacheConfig(node_url=node.url, keyring_dir=kdir, partitioning=partitioning(tmp)))
        async with secured(cache_app, env, cache_app[CACHE].metrics.registry, "cache") as cache:
            yield node, cache, kdir


async def send(env: Env, method: str, url: str, *, token: str | None = None, pair: certs.KeyPair | None = None,
               data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {env.tokens[token]}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=env.client_ssl(pair))) as s, \
            s.request(method, url, data=data, headers=h) as r:
        return r.status, await r.read()


async def changes(env: Env, node: Server) -> list[dict[str, object]]:
    status, body = await send(env, "GET", f"{node.url}/v1/changes?after=0&frames=true", pair=env.operator)
    assert status == 200, body
    return list(json.loads(body)["changes"])


async def test_the_node_records_the_application_user_for_writes_through_the_cache(env, tmp_path):
    reader = f"system:serviceaccount:{env.namespace}:reader"
    async with node_and_cache(env, tmp_path) as (node, cache, _):
        pose = {ON_BEHALF_HEADER: f"system:serviceaccount:{env.namespace}:stranger"}
        for method, key, data in (("PUT", "a", b"one"), ("PUT", "b", NOISE), ("DELETE", "a", None)):
            status, body = await send(env, method, f"{cache.url}/v1/tables/t/blocks/{key}", token="allowed",
                                      data=data, headers=pose)
            assert status == 200, body
        # Straight to the node with the same header: the node ignores it from anyone but the pod identity.
        status, body = await send(env, "PUT", f"{node.url}/v1/tables/t/blocks/c", token="allowed", data=b"x",
                                  headers=pose)
        assert status == 200, body
        # The pod itself (a Reversion run by the shadow) names whom it writes for.
        status, body = await send(env, "PUT", f"{node.url}/v1/tables/t/blocks/d", pair=env.pod, data=b"y",
                                  headers={ON_BEHALF_HEADER: "chronoshard:reversion:undo"})
        assert status == 200, body
        got = [(c["op"], c["key"], c["identity"]) for c in await changes(env, node)]
        assert got == [("put", "a", reader), ("put", "b", reader), ("delete", "a", reader), ("put", "c", reader),
                       ("put", "d", "chronoshard:reversion:undo")]


async def test_a_shadow_following_the_node_keeps_identity_and_profile(env, tmp_path):
    reader = f"system:serviceaccount:{env.namespace}:reader"
    async with node_and_cache(env, tmp_path) as (node, cache, kdir):
        shadow_app = create_shadow(shadow_config(tmp_path, node.url, kdir, {"tables": ["t"]}))
        async with secured(shadow_app, env, shadow_app[SHADOW].metrics.registry, "shadow") as shadow:
            async def captured(n: int, seeds: int = 0) -> bool:
                status, body = await send(env, "GET", f"{shadow.url}/v1/status", pair=env.operator)
                capture = json.loads(body)["capture"] if status == 200 else {}
                return capture.get("cursor", 0) >= n and capture.get("seeds", 0) >= seeds

            # Its first-start seed done: a write before it would be seeded from the snapshot, with no identity
            # (seen under load), where the test is about a write the shadow follows from the change log.
            await wait_for_async(lambda: captured(0, seeds=1), what="the shadow's first-start seed")
            status, body = await send(env, "PUT", f"{cache.url}/v1/tables/t/blocks/k", token="allowed", data=NOISE)
            assert status == 200, body
            lsn = json.loads(body)["lsn"]
            await wait_for_async(lambda: captured(lsn), what="the shadow to capture the write")
            status, body = await send(env, "GET", f"{shadow.url}/v1/tables/t/history/k", token="allowed")
            assert status == 200, body
            versions = json.loads(body)["versions"]
            assert [(v["lsn"], v["identity"]) for v in versions][-1] == (lsn, reader)
            store: HistoryStore = shadow_app[SHADOW].history
            (v,) = [v for v in store.history("t", "k", values=False) if v.lsn == lsn]
            assert decode_profile(v.profile) == decode_profile(encode_profile(byte_profile(NOISE)))
