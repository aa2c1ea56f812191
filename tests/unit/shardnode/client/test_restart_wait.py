"""A shard whose pod is being replaced (connection refused, or no Ready pod known) is waited for, bounded by
``restart_wait``, with the endpoints re-discovered between attempts; a request the shard has seen is not resent."""

from __future__ import annotations

import asyncio
import time

import pytest
from chronoshard.shardnode.client import AsyncClient, Unavailable, Unreachable
from chronoshard.shardnode.keyspace.partitioning import initial_map

from tests.support.shard_cluster import ShardCluster, silent_endpoints

M3 = initial_map(3)
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
