"""The Python client against three real shards on 127.0.0.1 (node + cache processes, real map file)."""

from __future__ import annotations

import json

import aiohttp
import pytest
from chronoshard.shardnode.client import AsyncClient, NodeMap
from chronoshard.shardnode.keyspace.partitioning import (
    Partition,
    PartitionMap,
    StrandedPartitionsError,
    initial_map,
    rescale,
)

from .checks import N_BLOCKS, TABLE, assert_even, bounded, check_placement, node_keys, value_of, wait_epoch


async def test_10k_blocks_direct_routing_to_caches(nodes, caches):
    keys = [f"order-{i:05d}" for i in range(N_BLOCKS)]
    # The client talks to the shards' caches (the read path) and learns the map from them.
    async with AsyncClient(NodeMap(caches.urls), caches.urls, concurrency=32) as c:
        pmap = await c.partition_map()
        assert pmap == initial_map(3)
        await bounded(c.put(TABLE, k, value_of(i)) for i, k in enumerate(keys))
        assert c.map_refreshes == 1  # never refused: every write went straight to its owner

        # Placement is checked by asking each node itself what it stores.
        counts = await check_placement(nodes.urls, pmap, keys)
        assert sum(counts.values()) == N_BLOCKS
        assert_even(counts, N_BLOCKS)

        got = await c.batch_get(TABLE, keys)
        assert all(got[k] == value_of(i) for i, k in enumerate(keys))
        sample = keys[::97]
        assert await bounded(c.get(TABLE, k) for k in sample) == [value_of(keys.index(k)) for k in sample]
        assert [b.key async for b in c.scan(TABLE)] == keys

    # A node asked directly for a key it does not own answers 421 naming the owner and epoch.
    async with aiohttp.ClientSession() as s:
        for k in keys[:30]:
            owner = pmap.shard_of(TABLE, k)
            other = (owner + 1) % 3
            async with s.get(f"{nodes.urls[other]}/v1/tables/{TABLE}/blocks/{k}") as r:
                assert r.status == 421
                doc = await r.json()
                assert (doc["error"], doc["owner"], doc["epoch"]) == ("misdirected", owner, 1)


async def test_stale_client_map_is_corrected_on_first_refusal(nodes):
    m1 = initial_map(3)
    async with AsyncClient(NodeMap(nodes.urls), nodes.urls) as c:
        assert (await c.partition_map()).epoch == 1
        # The operator moves shard 0's range to shard 1 and publishes epoch 2; the nodes hot-reload it.
        m2 = PartitionMap(2, 3, tuple(Partition(p.id, p.start, p.end, 1 if p.shard == 0 else p.shard)
                                      for p in m1.partitions))
        nodes.publish_map(m2)
        await wait_epoch(nodes.urls, 2)
        k = next(f"k{i}" for i in range(1000) if m1.shard_of(TABLE, f"k{i}") == 0)
        await c.put(TABLE, k, b"moved")  # refused by shard 0 (epoch 1 != 2), refreshed, retried at 1
        assert c.map_refreshes == 2 and (await c.partition_map()).epoch == 2
        async with aiohttp.ClientSession() as s:
            assert await node_keys(s, nodes.urls[1], TABLE) == [k]
            assert await node_keys(s, nodes.urls[0], TABLE) == []
        assert await c.get(TABLE, k) == b"moved"
        assert c.map_refreshes == 2


async def test_scaling_rule_with_real_nodes(nodes):
    m1 = initial_map(3)
    # Scale-up: shard 3 joins owning nothing; data stays where it is (epoch 2).
    m2 = rescale(m1, 4)
    assert m2.partitions_of(3) == [] and m2.epoch == 2
    nodes.publish_map(m2)
    nodes.add()
    await wait_epoch(nodes.urls, 2)
    keys = [f"s{i}" for i in range(300)]
    async with AsyncClient(NodeMap(nodes.urls), nodes.urls) as c:
        await bounded(c.put(TABLE, k, b"v") for k in keys)
        counts = await check_placement(nodes.urls, m2, keys)
        assert counts[3] == 0 and sum(counts.values()) == len(keys)
    # Scale-down that would strand shards 1 and 2 is refused; removing the empty shard 3 is allowed.
    with pytest.raises(StrandedPartitionsError, match="shard\\(s\\) 1, 2 still own"):
        rescale(m2, 1)
    m3 = rescale(m2, 3)
    assert m3.shards == 3 and m3.epoch == 3 and m3.partitions == m1.partitions


def test_partition_endpoint_serves_the_mounted_map(nodes):
    import urllib.request

    with urllib.request.urlopen(f"{nodes.urls[2]}/v1/partitions") as r:
        doc = json.loads(r.read())
    assert PartitionMap.from_dict(doc) == initial_map(3) and doc["loadError"] is None
