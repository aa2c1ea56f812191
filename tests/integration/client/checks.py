"""Checks shared by the client integration tests: what each node holds, spread, bounded concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import aiohttp
from chronoshard.shardnode.keyspace.partitioning import PartitionMap

from tests.support.waiting import wait_for_async

N_BLOCKS = 10_000
TABLE = "orders"


def value_of(i: int) -> bytes:
    return f"block {i} ".encode() * (1 + i % 7)


async def node_keys(session: aiohttp.ClientSession, url: str, table: str) -> list[str]:
    """Every key a node holds, asked of the node itself (paged scan, no routing involved)."""
    keys: list[str] = []
    after = None
    while True:
        params = {"limit": "1000"} | ({"after": after} if after else {})
        async with session.get(f"{url}/v1/tables/{table}/blocks", params=params) as r:
            assert r.status == 200, await r.text()
            doc = await r.json()
        keys += [item["key"] for item in doc["items"]]
        after = doc["next"]
        if not after:
            return keys


async def bounded(coros, limit: int = 32) -> list:
    sem = asyncio.Semaphore(limit)

    async def one(c):
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


async def check_placement(urls: list[str], pmap: PartitionMap, keys: list[str]) -> dict[int, int]:
    async with aiohttp.ClientSession() as s:
        held = [set(await node_keys(s, u, TABLE)) for u in urls]
    for shard, got in enumerate(held):
        assert got == {k for k in keys if pmap.shard_of(TABLE, k) == shard}, f"shard {shard} holds wrong keys"
    return {shard: len(got) for shard, got in enumerate(held)}


def assert_even(counts: dict[int, int], total: int) -> None:
    even = total / len(counts)
    for shard, c in counts.items():
        assert abs(c - even) <= 0.10 * even, f"shard {shard} holds {c}, even is {even:.0f}"


async def wait_epoch(urls: list[str], epoch: int) -> None:
    """Wait until every node serves the given map epoch (they re-check the mounted file each second)."""
    async with aiohttp.ClientSession() as s:

        async def epochs() -> list[int]:
            served = []
            for u in urls:
                async with s.get(f"{u}/v1/partitions") as r:
                    served.append((await r.json())["epoch"])
            return served

        await wait_for_async(lambda: _all_at(epochs(), epoch), timeout=10, interval=0.1,
                             what=f"every node to serve epoch {epoch}")


async def _all_at(served: Awaitable[list[int]], epoch: int) -> list[int] | None:
    """The epochs the nodes serve if they all serve ``epoch``; None (not yet) otherwise."""
    got = await served
    return got if set(got) == {epoch} else None
