"""A plain HTTP client through one ``chronoshard-cache`` (the client Service): the caches forward."""

from __future__ import annotations

import aiohttp
from chronoshard.shardnode.keyspace.partitioning import initial_map

from .checks import TABLE, assert_even, bounded, check_placement, value_of

# Fewer than the routing tests' 10,000: every request here takes the forwarding detour, and 3,000 keys still show
# an even spread (one shard's expected 1,000 ± 10% is about four standard deviations).
N_BLOCKS = 3_000


async def test_plain_http_through_one_cache_forwards(nodes, caches):
    keys = [f"plain-{i:05d}" for i in range(N_BLOCKS)]
    entry = caches.urls[0]  # what the client Service would pick
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as s:

        async def put(i: int, k: str) -> int:
            async with s.put(f"{entry}/v1/tables/{TABLE}/blocks/{k}", data=value_of(i)) as r:
                return r.status

        async def get(k: str) -> bytes:
            async with s.get(f"{entry}/v1/tables/{TABLE}/blocks/{k}") as r:
                assert r.status == 200, await r.text()
                return await r.read()

        statuses = await bounded(put(i, k) for i, k in enumerate(keys))
        assert set(statuses) == {200}
        counts = await check_placement(nodes.urls, initial_map(3), keys)
        assert_even(counts, N_BLOCKS)
        got = await bounded(get(k) for k in keys)
        assert got == [value_of(i) for i in range(N_BLOCKS)]
        # A request already forwarded once is not forwarded again: the entry cache refuses it.
        k = next(k for k in keys if initial_map(3).shard_of(TABLE, k) != 0)
        hdr = {"X-Chronoshard-Forwarded": "1"}
        async with s.get(f"{entry}/v1/tables/{TABLE}/blocks/{k}", headers=hdr) as r:
            assert r.status == 421 and (await r.json())["owner"] == initial_map(3).shard_of(TABLE, k)
