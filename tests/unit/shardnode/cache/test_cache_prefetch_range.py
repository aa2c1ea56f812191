"""BlockCache.prefetch_range against a real node: one batch fetch for a run's next blocks, admitted on their scores."""

import pytest
from chronoshard.shardnode.cache.cache import BlockCache
from chronoshard.shardnode.cache.node_client import NodeClient
from chronoshard.shardnode.eviction import ScoredPolicy
from chronoshard.shardnode.keys.keyring import load_keyring
from chronoshard.shardnode.serving.metrics import CacheMetrics

from tests.support.servers import node_and_cache


class CountingNode(NodeClient):
    """The real client, counting the batch requests it sends."""

    batches = 0

    async def get_frames(self, table, keys):
        self.batches += 1
        return await super().get_frames(table, keys)


@pytest.fixture
async def env(tmp_path):
    async with node_and_cache(tmp_path) as (node_url, _, session, _, _):
        ring = load_keyring(tmp_path / "keyring")
        metrics = CacheMetrics()
        node = CountingNode(node_url, session)
        cache = BlockCache(1000, ScoredPolicy(), lambda: ring, node, metrics, prefetch_budget_fraction=0.5)
        yield cache, metrics, node


def value(m, name, **labels):
    return m.registry.get_sample_value(name, labels or None)


async def test_a_range_is_one_node_request_and_its_blocks_are_served_as_hits(env):
    cache, m, node = env
    for i in range(8):
        await cache.put("t", f"{100 + i}", bytes([i]) * 20)
        cache.invalidate(("t", f"{100 + i}"))
    await cache.get("t", "100")  # cached now: left out of the range
    keys = [f"{100 + i}" for i in range(6)]
    before = node.batches
    assert await cache.prefetch_range("t", keys, [0.9 ** (i + 1) for i in range(6)]) == 5
    assert node.batches == before + 1
    assert value(m, "chronoshard_cache_prefetches_dropped_total", why="cached") == 1
    for i in range(1, 6):
        assert await cache.get("t", f"{100 + i}") == (bytes([i]) * 20, True)
    assert value(m, "chronoshard_cache_prefetches_used_total") == 5
    assert await cache.prefetch_range("t", keys, [0.5] * 6) == 0  # everything cached: no request at all
    assert node.batches == before + 1


async def test_missing_blocks_in_a_range_are_wasted_and_not_cached(env):
    cache, m, _ = env
    await cache.put("t", "200", b"a" * 10)
    cache.invalidate(("t", "200"))
    assert await cache.prefetch_range("t", ["200", "201", "202"], [0.9, 0.8, 0.7]) == 3
    assert ("t", "200") in cache.entries and ("t", "201") not in cache.entries
    assert value(m, "chronoshard_cache_prefetches_wasted_total") == 2


async def test_a_write_during_the_range_fetch_keeps_its_result_out_of_the_cache(env):
    cache, _, node = env
    await cache.put("t", "300", b"old" * 5)
    cache.invalidate(("t", "300"))
    real = node.get_frames

    async def racing(table, keys):
        out = await real(table, keys)
        cache.invalidate(("t", "300"))  # the change-log tail saw a newer write meanwhile
        return out

    node.get_frames = racing
    await cache.prefetch_range("t", ["300"], [0.9])
    assert ("t", "300") not in cache.entries


async def test_the_prefetch_budget_bounds_a_range(env):
    cache, m, _ = env
    for i in range(10):
        await cache.put("t", f"{400 + i}", bytes(100))
        cache.invalidate(("t", f"{400 + i}"))
    await cache.prefetch_range("t", [f"{400 + i}" for i in range(10)], [0.9] * 10)
    assert cache.unused_prefetch_bytes <= 500
    assert value(m, "chronoshard_cache_prefetches_dropped_total", why="budget") == 5
