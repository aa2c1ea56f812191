"""Test helper: N real shard nodes (``node.server.create_app``, a temp SQLite store each, one keyring) served on
127.0.0.1 inside the test's event loop, for the client tests; and endpoints that accept and never answer."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web
from chronoshard.shardnode.keyspace.partitioning import PartitionMap
from chronoshard.shardnode.node import store
from chronoshard.shardnode.node.server import NODE, NodeConfig, create_app
from chronoshard.shardnode.serving.http_common import SERVER_LIMITS
from chronoshard.shardnode.serving.routing import PartitionMapSource, PeerURLs
from chronoshard.shardnode.serving.scaffold import Partitioning

from tests.support.servers import keyring_dir

# The routes of the block API; the fake node these tests once used counted exactly these requests.
BLOCK_ROUTE_MARK = "/blocks"
SCAN_ROUTE = "/v1/tables/{table}/blocks"


def _listening_socket() -> socket.socket:
    # Bound before any app is built, so every node knows its peers' URLs and no port can be taken meanwhile.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class ShardCluster:
    """Shard ``i`` runs the real node with map source ``maps[i]``; ``forwarding`` gives each node the others as
    peers, so a request for another shard's key is forwarded (as the cache does) instead of refused with 421."""

    def __init__(self, maps: list[PartitionMap] | list[PartitionMapSource], forwarding: bool = True,
                 tmp: Path | None = None) -> None:
        self.sources = [m if isinstance(m, PartitionMapSource) else PartitionMapSource.from_map(m) for m in maps]
        self.forwarding = forwarding
        self._tmp = tmp
        self._stack = contextlib.AsyncExitStack()
        self.apps: list[web.Application] = []
        self.urls: list[str] = []

    async def __aenter__(self) -> ShardCluster:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        tmp = self._tmp or Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="shard-cluster-")))
        keyring = keyring_dir(tmp)
        socks = [self._stack.enter_context(_listening_socket()) for _ in self.sources]
        self.urls = [f"http://127.0.0.1:{s.getsockname()[1]}" for s in socks]
        peers = PeerURLs(urls=self.urls) if self.forwarding else None
        for shard, (source, sock) in enumerate(zip(self.sources, socks, strict=True)):
            app = create_app(NodeConfig(data_dir=tmp / f"shard-{shard}", keyring_dir=keyring,
                                        partitioning=Partitioning(source, shard, peers)))
            runner = web.AppRunner(app, access_log=None, **SERVER_LIMITS)
            await runner.setup()
            self._stack.push_async_callback(runner.cleanup)
            await web.SockSite(runner, sock).start()
            self.apps.append(app)

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def holders(self, table: str, key: str) -> list[int]:
        """The shards whose store holds the block (read from each node's SQLite file, not over HTTP)."""
        return [shard for shard, app in enumerate(self.apps)
                if (s := app[NODE].store) is not None and store.get_block(s.reader(), table, key) is not None]

    def block_requests(self) -> int:
        """Block API requests (get, put, delete, batch get; not scans) all nodes answered, forwarded ones on both
        ends, from each node's own request counter."""
        total = 0.0
        for app in self.apps:
            for metric in app[NODE].metrics.requests.collect():
                total += sum(s.value for s in metric.samples if s.name.endswith("_total")
                             and BLOCK_ROUTE_MARK in s.labels["route"] and s.labels["route"] != SCAN_ROUTE)
        return int(total)

    async def put_on(self, shard: int, table: str, key: str, value: bytes) -> None:
        """Write a block straight to ``shard`` (which must own the key under its own map), bypassing the client."""
        async with aiohttp.ClientSession() as session, session.put(
            f"{self.urls[shard]}/v1/tables/{table}/blocks/{key}", data=value
        ) as resp:
            if resp.status != 200:
                raise AssertionError(f"shard {shard} refused {table}/{key}: {resp.status} {await resp.text()}")


@contextlib.asynccontextmanager
async def silent_endpoints(count: int) -> AsyncIterator[list[str]]:
    """URLs of listeners that accept connections and read requests but never answer (a hung shard)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()  # until the client gives up and closes

    servers = [await asyncio.start_server(hold, "127.0.0.1", 0) for _ in range(count)]
    try:
        yield [f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}" for srv in servers]
    finally:
        for writer in held:
            writer.close()
        for srv in servers:
            srv.close()
            await srv.wait_closed()
