"""BlockCache against a real node: budget, eviction, write-through consistency, prefetch accounting."""

import asyncio

import aiohttp
import pytest
from chronoshard.shardnode.cache.cache import BlockCache, DecryptError, NotFound
from chronoshard.shardnode.cache.node_client import NodeClient
from chronoshard.shardnode.eviction import LRUPolicy
from chronoshard.shardnode.keys.keyring import load_keyring
from chronoshard.shardnode.serving.metrics import CacheMetrics

from tests.support.servers import node_and_cache


@pytest.fixture
async def env(tmp_path):
    async with node_and_cache(tmp_path) as (node_url, _, session, _, _):
        ring = load_keyring(tmp_path / "keyring")
        metrics = CacheMetrics()
        cache = BlockCache(100, LRUPolicy(), lambda: ring, NodeClient(node_url, session), metrics,
                           prefetch_budget_fraction=0.5)
        yield cache, metrics, session, node_url


def value(m, name, **labels):
    return m.registry.get_sample_value(name, labels or None)


async def test_miss_then_hit_and_not_found(env):
    cache, m, _, _ = env
    await cache.put("t", "a", b"x" * 10)
    cache.invalidate(("t", "a"))
    assert await cache.get("t", "a") == (b"x" * 10, False)
    assert await cache.get("t", "a") == (b"x" * 10, True)
    with pytest.raises(NotFound):
        await cache.get("t", "missing")
    assert value(m, "chronoshard_cache_hits_total") == 1 and value(m, "chronoshard_cache_misses_total") == 2
    assert value(m, "chronoshard_cache_decrypts_total", key_version="1") == 1


async def test_budget_is_enforced_by_evicting_lru(env):
    cache, m, _, _ = env
    for i in range(5):
        await cache.put("t", f"k{i}", bytes(30))  # 30 bytes each, budget 100
    assert cache.bytes <= 100 and set(cache.entries) == {("t", "k2"), ("t", "k3"), ("t", "k4")}
    assert value(m, "chronoshard_cache_evictions_total") == 2
    await cache.put("t", "huge", bytes(101))  # larger than the whole budget: written, not cached
    assert ("t", "huge") not in cache.entries and (await cache.get("t", "huge"))[0] == bytes(101)


async def test_read_after_acknowledged_write_is_never_stale(env):
    cache, _, _, _ = env
    await cache.put("t", "k", b"old")
    assert (await cache.get("t", "k"))[0] == b"old"
    for i in range(20):
        await cache.put("t", "k", f"new{i}".encode())
        assert (await cache.get("t", "k"))[0] == f"new{i}".encode()


async def test_fetch_overtaken_by_a_write_is_not_cached(env):
    cache, _, session, node_url = env
    await cache.put("t", "k", b"v1")
    cache.invalidate(("t", "k"))
    reader = asyncio.create_task(cache.get("t", "k"))  # in flight to the node
    await asyncio.sleep(0)
    await cache.put("t", "k", b"v2")
    await reader
    assert (await cache.get("t", "k"))[0] == b"v2"


async def test_concurrent_misses_share_one_fetch(env):
    cache, m, _, _ = env
    await cache.put("t", "k", b"v")
    cache.invalidate(("t", "k"))
    results = await asyncio.gather(*(cache.get("t", "k") for _ in range(10)))
    assert {r[0] for r in results} == {b"v"}
    assert value(m, "chronoshard_cache_decrypts_total", key_version="1") == 1


async def test_delete_through_invalidates(env):
    cache, _, _, _ = env
    await cache.put("t", "k", b"v")
    await cache.delete("t", "k")
    assert ("t", "k") not in cache.entries
    with pytest.raises(NotFound):
        await cache.get("t", "k")


async def test_prefetch_used_and_wasted_accounting(env):
    cache, m, _, _ = env
    for k in ("p1", "p2"):
        await cache.put("t", k, bytes(20))
        cache.invalidate(("t", k))
    assert await cache.prefetch("t", "p1", 0.9)
    assert await cache.prefetch("t", "p2", 0.9)
    assert not await cache.prefetch("t", "p1", 0.9)  # already cached: dropped, no fetch
    assert value(m, "chronoshard_cache_prefetches_issued_total") == 2
    await cache.get("t", "p1")
    assert value(m, "chronoshard_cache_prefetches_used_total") == 1
    cache.invalidate(("t", "p2"))
    assert value(m, "chronoshard_cache_prefetches_wasted_total") == 1
    assert value(m, "chronoshard_cache_prefetches_dropped_total", why="cached") == 1


async def test_prefetch_budget_limits_unused_prefetched_bytes(env):
    cache, m, _, _ = env
    for i in range(4):
        await cache.put("t", f"p{i}", bytes(20))
        cache.invalidate(("t", f"p{i}"))
    for i in range(4):
        await cache.prefetch("t", f"p{i}", 0.5)
    assert cache.unused_prefetch_bytes <= 50 and len(cache.entries) == 2
    assert value(m, "chronoshard_cache_prefetches_dropped_total", why="budget") == 2
    assert value(m, "chronoshard_cache_prefetches_wasted_total") == 2  # fetched, then not kept


async def test_prefetch_of_a_missing_block_is_wasted_and_caches_nothing(env):
    cache, m, _, _ = env
    assert await cache.prefetch("t", "never-written", 0.9)
    assert ("t", "never-written") not in cache.entries
    assert value(m, "chronoshard_cache_prefetches_issued_total") == 1
    assert value(m, "chronoshard_cache_prefetches_wasted_total") == 1


async def test_unknown_key_version_is_a_named_error_and_not_cached(env, tmp_path):
    cache, m, session, node_url = env
    await cache.put("t", "k", b"v")
    cache.invalidate(("t", "k"))
    from chronoshard.shardnode.keys.keyring import Keyring, KeyVersion

    cache._keyring = lambda: Keyring(9, [KeyVersion(2, "primary")], {2: bytes(32)})
    with pytest.raises(DecryptError) as exc:
        await cache.get("t", "k")
    assert exc.value.status == 503 and "key version 1" in exc.value.message
    assert ("t", "k") not in cache.entries
    assert value(m, "chronoshard_cache_decrypt_failures_total", reason="missing_key") == 1


async def test_node_down_is_upstream_error(tmp_path):
    from chronoshard.shardnode.cache.node_client import UpstreamError

    async with aiohttp.ClientSession() as s:
        cache = BlockCache(100, LRUPolicy(), lambda: None, NodeClient("http://127.0.0.1:9", s, timeout=2),
                           CacheMetrics())
        with pytest.raises(UpstreamError) as exc:
            await cache.get("t", "k")
        assert exc.value.status == 503 and exc.value.body["error"] == "node_unavailable"
        assert exc.value.body["sent"] is False  # no connection: our client may send it again


async def test_tail_that_starts_late_drops_what_was_cached_before_it(env):
    cache, _, session, node_url = env
    await cache.put("t", "a", b"one")
    async with session.put(f"{node_url}/v1/tables/t/blocks/a", data=b"two") as r:  # behind the cache's back
        assert r.status == 200
    assert cache.entries[("t", "a")].value == b"one"
    tail = asyncio.create_task(cache.follow_changes(poll_wait=0.1))  # learns its start only now
    for _ in range(100):
        if ("t", "a") not in cache.entries:
            break
        await asyncio.sleep(0.02)
    tail.cancel()
    assert (await cache.get("t", "a"))[0] == b"two"


async def test_batch_read_overlapping_a_write_returns_values_but_caches_nothing(env):
    cache, _, _, _ = env
    await cache.put("t", "a", b"A")
    await cache.put("t", "b", b"B")
    cache.invalidate(("t", "a"))
    cache.invalidate(("t", "b"))
    batch = asyncio.create_task(cache.get_many("t", ["a", "b"]))
    await asyncio.sleep(0)  # the batch is now waiting for the node
    await cache.put("t", "a", b"A2")  # a write lands while the batch is in flight
    got = await batch
    assert [v for _, v in got] in ([b"A", b"B"], [b"A2", b"B"])
    assert ("t", "b") not in cache.entries  # not cached: it might have been overtaken
    assert cache.entries[("t", "a")].value == b"A2"  # the acknowledged write is what stays
    await cache.get_many("t", ["b"])  # a quiet batch does cache
    assert cache.entries[("t", "b")].value == b"B"


class GatedNode(NodeClient):
    """The real client; a gated call does its real work, then waits for its gate before answering or sending."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.read_gate: asyncio.Event | None = None
        self.write_gate: asyncio.Event | None = None
        self.read_done = asyncio.Event()

    async def get_frame(self, table, key, headers=None):
        fetched = await super().get_frame(table, key, headers)
        self.read_done.set()
        if self.read_gate is not None:
            await self.read_gate.wait()
        return fetched

    async def get_frames(self, table, keys, headers=None):
        frames = await super().get_frames(table, keys, headers)
        self.read_done.set()
        if self.read_gate is not None:
            await self.read_gate.wait()
        return frames

    async def put(self, table, key, body, headers=None):
        if self.write_gate is not None:
            await self.write_gate.wait()
        return await super().put(table, key, body, headers)


@pytest.fixture
async def gated(tmp_path):
    async with node_and_cache(tmp_path) as (node_url, _, session, _, _):
        ring = load_keyring(tmp_path / "keyring")
        node = GatedNode(node_url, session)
        cache = BlockCache(100, LRUPolicy(), lambda: ring, node, CacheMetrics(), prefetch_budget_fraction=0.5)
        yield cache, node


async def _read_old_copy_across_a_write(cache, node, read) -> None:
    """A read that fetched the old copy while a write was in flight, answering only after the write was
    acknowledged and its copy evicted, must not put the old copy back."""
    await cache.put("t", "k", b"v1" * 10)
    cache.invalidate(("t", "k"))
    node.write_gate, node.read_gate = asyncio.Event(), asyncio.Event()
    writer = asyncio.create_task(cache.put("t", "k", b"v2" * 10))
    await asyncio.sleep(0)  # the write has invalidated and waits to be sent
    reader = asyncio.create_task(read())
    await node.read_done.wait()  # the node answered with v1: the write is not committed yet
    node.write_gate.set()
    await writer
    assert cache.entries[("t", "k")].value == b"v2" * 10
    node.write_gate = None
    for i in range(3):  # 3 x 40 bytes in a 100-byte cache: the acknowledged copy is evicted
        await cache.put("t", f"other{i}", bytes(40))
    assert ("t", "k") not in cache.entries
    node.read_gate.set()
    await reader
    node.read_gate = None
    assert (await cache.get("t", "k"))[0] == b"v2" * 10


async def test_a_single_read_overtaken_by_a_write_and_an_eviction_caches_nothing_stale(gated):
    cache, node = gated
    await _read_old_copy_across_a_write(cache, node, lambda: cache.get("t", "k"))


async def test_a_read_ahead_range_overtaken_by_a_write_and_an_eviction_caches_nothing_stale(gated):
    cache, node = gated
    await _read_old_copy_across_a_write(cache, node, lambda: cache.prefetch_range("t", ["k"], [0.9]))


async def test_a_batch_read_overtaken_by_a_write_and_an_eviction_caches_nothing_stale(gated):
    cache, node = gated
    await _read_old_copy_across_a_write(cache, node, lambda: cache.get_many("t", ["k"]))
