"""A shard whose pod is being replaced (connection refused, or no Ready pod known) is waited for, bounded by
``restart_wait``, with the endpoints re-discovered between attempts; a request the shard has seen is not resent."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from chronoshard.shardnode.cache.server import CacheConfig
from chronoshard.shardnode.client import AsyncClient, Unavailable, Unreachable
from chronoshard.shardnode.keyspace.partitioning import initial_map
from chronoshard.shardnode.node.server import NodeConfig

from tests.support.servers import create_cache, create_node, keyring_dir, serve
from tests.support.shard_cluster import ShardCluster, silent_endpoints

M1, M3 = initial_map(1), initial_map(3)
REFUSED = "http://127.0.0.1:1"  # nothing listens on port 1: the connection is refused


async def test_a_replaced_pod_is_followed_to_its_new_address() -> None:
    async with ShardCluster([M3] * 3) as cl:
        where = dict.fromkeys(range(3), REFUSED)  # the old pods' addresses, gone
        rediscoveries = 0

        async def rediscover() -> None:
            nonlocal rediscoveries
            rediscoveries += 1
            if rediscoveries == 3:  # the new pods are Ready now
                where.update(enumerate(cl.urls))

        async with AsyncClient(M3, lambda s: where[s], restart_wait=10, rediscover=rediscover) as c:
            await c.put("t", "k", b"v")
            assert await c.get("t", "k") == b"v"
            assert c.restart_waits == 3 and rediscoveries == 3


async def test_the_wait_is_bounded_and_raises_unreachable() -> None:
    async with AsyncClient(M3, [REFUSED] * 3, restart_wait=0.6) as c:
        began = time.monotonic()
        with pytest.raises(Unreachable, match="Cannot connect"):
            await c.get("t", "k")
        assert 0.5 <= time.monotonic() - began < 3
        assert c.restart_waits >= 2


async def test_no_ready_pod_is_waited_for_too() -> None:
    async with ShardCluster([M3] * 3) as cl:
        ready = asyncio.Event()

        def endpoint(shard: int) -> str:
            if not ready.is_set():
                raise Unreachable(f"shard {shard}", "no Ready pod with an IP")
            return cl.urls[shard]

        async with AsyncClient(M3, endpoint, restart_wait=10) as c:
            asyncio.get_running_loop().call_later(0.5, ready.set)
            await c.put("t", "k", b"v")
            assert c.restart_waits >= 1


async def test_a_request_the_shard_received_is_not_sent_again() -> None:
    # The servers accept the connection and never answer: the request was sent, so it times out at once.
    async with silent_endpoints(3) as urls, AsyncClient(M3, urls, timeout=0.3, restart_wait=10) as c:
        began = time.monotonic()
        with pytest.raises(Unavailable, match="no answer within 0.3 s") as info:
            await c.put("t", "k", b"v")
        assert not isinstance(info.value, Unreachable)
        assert time.monotonic() - began < 2 and c.restart_waits == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_pods_cache_whose_node_is_not_up_yet_is_waited_for(tmp_path: Path) -> None:
    # A pod being replaced can have its cache listening before (or after) its node: the cache cannot connect,
    # answers 503 with "sent": false, and the client waits and sends again as for an unreachable pod.
    port = _free_port()
    kdir = keyring_dir(tmp_path)
    cache = create_cache(CacheConfig(node_url=f"http://127.0.0.1:{port}", keyring_dir=kdir, keyring_poll_seconds=0.05))
    node = create_node(NodeConfig(data_dir=tmp_path / "data", keyring_dir=kdir, keyring_poll_seconds=0.05))
    stop = asyncio.Event()

    async def node_later() -> None:
        await asyncio.sleep(0.5)
        async with serve(node, port=port):
            await stop.wait()

    async with serve(cache) as cache_url:
        task = asyncio.create_task(node_later())
        try:
            async with AsyncClient(M1, [cache_url], restart_wait=10) as c:
                await c.put("t", "k", b"v")
                assert c.restart_waits >= 1
                assert await c.get("t", "k") == b"v"
        finally:
            stop.set()
            await task


async def test_a_cache_whose_node_took_the_request_and_failed_is_not_sent_again(tmp_path: Path) -> None:
    # The node accepted the connection, read the request and hung up: it may have applied the write, so the
    # cache's 503 does not say "sent": false and the client does not send it again.
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    node_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        cache = create_cache(CacheConfig(node_url=node_url, keyring_dir=keyring_dir(tmp_path)))
        async with serve(cache) as cache_url, AsyncClient(M1, [cache_url], restart_wait=10) as c:
            began = time.monotonic()
            with pytest.raises(Unavailable, match="503") as info:
                await c.put("t", "k", b"v")
            assert not isinstance(info.value, Unreachable)
            assert time.monotonic() - began < 3 and c.restart_waits == 0
    finally:
        server.close()
        await server.wait_closed()
