"""A minimal in-memory block server wrapped in the real ownership middleware, on 127.0.0.1.

Fast unit tests of the client use it instead of real processes (the integration tests use the real
``chronoshard-node``); it speaks the same paths as ``shardnode/node/server.py``: put/get/delete a
block, batch get, scan a table, the partition map.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer
from chronoshard.shardnode.keyspace.partitioning import PartitionMap
from chronoshard.shardnode.serving.routing import (
    PartitionMapSource,
    PeerURLs,
    forward_session_ctx,
    ownership_middleware,
    partitions_handler,
)

STATE = web.AppKey("state", object)


@dataclass
class NodeState:
    shard: int
    blocks: dict[tuple[str, str], bytes] = field(default_factory=dict)
    requests: int = 0
    delay: float = 0.0


def make_app(source: PartitionMapSource, state: NodeState, peers: PeerURLs | None = None) -> web.Application:
    async def get_block(request: web.Request) -> web.Response:
        state.requests += 1
        if state.delay:
            await asyncio.sleep(state.delay)
        t, k = request.match_info["table"], request.match_info["key"]
        if (t, k) not in state.blocks:
            return web.json_response({"error": "not_found", "message": f"no block {k!r}"}, status=404)
        return web.Response(body=state.blocks[t, k], content_type="application/octet-stream")

    async def put_block(request: web.Request) -> web.Response:
        state.requests += 1
        t, k = request.match_info["table"], request.match_info["key"]
        state.blocks[t, k] = await request.read()
        return web.json_response({"table": t, "key": k, "shard": state.shard})

    async def delete_block(request: web.Request) -> web.Response:
        state.requests += 1
        t, k = request.match_info["table"], request.match_info["key"]
        if state.blocks.pop((t, k), None) is None:
            return web.json_response({"error": "not_found", "message": f"no block {k!r}"}, status=404)
        return web.json_response({"deleted": True})

    async def scan(request: web.Request) -> web.Response:
        t = request.match_info["table"]
        after = request.query.get("after")
        limit = int(request.query.get("limit", "100"))
        keys = sorted(k for (tt, k) in state.blocks if tt == t and (after is None or k > after))[:limit]
        blocks = [{"key": k, "size": len(state.blocks[t, k])} for k in keys]
        return web.json_response({"items": blocks, "next": keys[-1] if len(keys) == limit else None})

    async def batch_get(request: web.Request) -> web.Response:
        state.requests += 1
        t = request.match_info["table"]
        out = []
        for k in (await request.json())["keys"]:
            wrong = source.check(state.shard, t, k)
            if wrong is not None:
                out.append({"key": k, "found": False, "error": wrong.body()})
            elif (t, k) in state.blocks:
                out.append({"key": k, "found": True, "value": base64.b64encode(state.blocks[t, k]).decode()})
            else:
                out.append({"key": k, "found": False})
        return web.json_response({"blocks": out})

    app = web.Application(middlewares=[ownership_middleware(source, state.shard, peers=peers)])
    if peers is not None:
        app.cleanup_ctx.append(forward_session_ctx)
    app[STATE] = state
    app.router.add_get("/v1/partitions", partitions_handler(source))
    app.router.add_get("/v1/tables/{table}/blocks", scan)
    app.router.add_post("/v1/tables/{table}/blocks:batchGet", batch_get)
    app.router.add_get("/v1/tables/{table}/blocks/{key:.+}", get_block)
    app.router.add_put("/v1/tables/{table}/blocks/{key:.+}", put_block)
    app.router.add_delete("/v1/tables/{table}/blocks/{key:.+}", delete_block)
    return app


class Cluster:
    """N minimal shard servers on 127.0.0.1 free ports; ``forwarding`` makes them behave like caches."""

    def __init__(self, maps: list[PartitionMap] | list[PartitionMapSource], forwarding: bool = True) -> None:
        self.sources = [m if isinstance(m, PartitionMapSource) else PartitionMapSource.from_map(m)
                        for m in maps]
        self.forwarding = forwarding
        self.states = [NodeState(i) for i in range(len(maps))]
        self.servers: list[TestServer] = []
        self.urls: list[str] = []

    async def __aenter__(self) -> Cluster:
        # Reserve ports first so every app can be built knowing its peers' URLs.
        probes = [TestServer(web.Application(), host="127.0.0.1") for _ in self.states]
        for p in probes:
            await p.start_server()
        ports = [p.port for p in probes]
        for p in probes:
            await p.close()
        self.urls = [f"http://127.0.0.1:{port}" for port in ports]
        peers = PeerURLs(urls=self.urls) if self.forwarding else None
        for src, state, port in zip(self.sources, self.states, ports, strict=True):
            srv = TestServer(make_app(src, state, peers), host="127.0.0.1", port=port)
            await srv.start_server()
            self.servers.append(srv)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for s in self.servers:
            await s.close()
