"""The cache with a KEK-wrapped keyring: the key cache on the read path, key hints, stats and metrics.

Real node and cache apps on 127.0.0.1, real files and real `cryptography`; only the process boundary is
skipped (tests/integration/shardnode/test_wrapped_keys.py runs them as processes).
"""

import asyncio
import json
import re
import threading

import pytest
from chronoshard.shardnode.cache.server import CACHE

from tests.support.kubelet_dir import write_keyring
from tests.support.servers import KEK, KEY1, KEY2, node_and_cache
from tests.support.waiting import wait_for_async


def metric(text: str, name: str, labels: str = "") -> float:
    """One sample's value from a Prometheus exposition (0 if absent)."""
    m = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def key_stats(s, cache: str) -> dict:
    return (await (await s.get(f"{cache}/v1/cache")).json())["keyCache"]


async def wait_stats(s, cache: str, pred, tries: int = 200) -> dict:
    for _ in range(tries):
        st = await key_stats(s, cache)
        if pred(st):
            return st
        await asyncio.sleep(0.02)
    raise AssertionError(f"key cache never reached the expected state: {st}")


async def test_wrapped_round_trip_counts_a_miss_then_hits(tmp_path):
    async with node_and_cache(tmp_path, wrapped=True) as (node, cache, s, _, capp):
        assert (await (await s.get(f"{cache}/v1/keys")).json())["wrapped"] == [1]
        assert (await (await s.get(f"{node}/v1/keys")).json())["wrapped"] == [1]
        assert (await s.put(f"{cache}/v1/tables/t/blocks/a", data=b"A")).status == 200
        assert (await s.put(f"{node}/v1/tables/t/blocks/b", data=b"B")).status == 200
        capp[CACHE].cache.invalidate_all()  # the write-through copy would be a block hit: read from the node
        assert await (await s.get(f"{cache}/v1/tables/t/blocks/a")).read() == b"A"
        assert await (await s.get(f"{cache}/v1/tables/t/blocks/b")).read() == b"B"
        st = await key_stats(s, cache)
        assert st == {"wrapped": True, "capacity": 64, "held": 1, "hits": 1, "misses": 1, "prefetched": 0,
                      "prefetchUsed": 0}
        m = await (await s.get(f"{cache}/metrics")).text()
        assert metric(m, "chronoshard_cache_key_misses_total") == 1
        assert metric(m, "chronoshard_cache_key_hits_total") == 1
        assert metric(m, "chronoshard_cache_key_unwrap_seconds_count", '{path="demand"}') == 1
        # the node encrypted both writes under the wrapped primary: one unwrap of table t's key, then a hit
        nm = await (await s.get(f"{node}/metrics")).text()
        assert metric(nm, "chronoshard_node_key_misses_total") == 1
        assert metric(nm, "chronoshard_node_key_hits_total") == 1
        assert metric(nm, "chronoshard_node_key_cache_capacity") == 1024
        # batch reads go through the same path
        capp[CACHE].cache.invalidate_all()
        r = await (await s.post(f"{cache}/v1/tables/t/blocks:batchGet", json={"keys": ["a", "b", "c"]})).json()
        assert [b["found"] for b in r["blocks"]] == [True, True, False]
        assert (await key_stats(s, cache))["hits"] == 3


async def test_raw_keyring_never_touches_the_key_cache(tmp_path):
    async with node_and_cache(tmp_path) as (node, cache, s, _, _):
        await s.put(f"{node}/v1/tables/t/blocks/a", data=b"A")
        assert await (await s.get(f"{cache}/v1/tables/t/blocks/a")).read() == b"A"
        st = await key_stats(s, cache)
        assert st["wrapped"] is False and st["hits"] == st["misses"] == st["held"] == 0
        r = await s.post(f"{cache}/v1/prefetch/keys", json={"keys": [{"table": "t", "score": 0.9}]})
        assert r.status == 202 and await r.json() == {"queued": 0, "dropped": 1}
        m = await (await s.get(f"{cache}/metrics")).text()
        assert metric(m, "chronoshard_cache_key_hints_dropped_total", '{reason="not_wrapped"}') == 1


async def test_capacity_two_with_five_tables_evicts_and_counts_misses(tmp_path):
    async with node_and_cache(tmp_path, wrapped=True, key_cache_size=2) as (node, cache, s, _, capp):
        tables = [f"t{i}" for i in range(5)]
        for t in tables:
            await s.put(f"{node}/v1/tables/{t}/blocks/k", data=t.encode())
        for _ in range(2):
            for t in tables:
                capp[CACHE].cache.invalidate_all()
                assert await (await s.get(f"{cache}/v1/tables/{t}/blocks/k")).read() == t.encode()
        st = await key_stats(s, cache)
        # round-robin over 5 tables with room for 2: every read is a miss, and never more than 2 keys are held
        assert st["capacity"] == 2 and st["held"] == 2 and st["misses"] == 10 and st["hits"] == 0
        kc = capp[CACHE].key_cache
        assert sum((t, 1) in kc for t in tables) == 2
        m = await (await s.get(f"{cache}/metrics")).text()
        assert metric(m, "chronoshard_cache_key_misses_total") == 10
        assert metric(m, "chronoshard_cache_key_cache_held") == 2


async def test_key_hint_makes_the_next_read_a_key_hit(tmp_path):
    async with node_and_cache(tmp_path, wrapped=True) as (node, cache, s, _, _):
        await s.put(f"{node}/v1/tables/orders/blocks/k", data=b"o")
        r = await s.post(f"{cache}/v1/prefetch/keys", json={"keys": [{"table": "orders", "score": 0.8}]})
        assert r.status == 202 and await r.json() == {"queued": 1, "dropped": 0}
        st = await wait_stats(s, cache, lambda st: st["prefetched"] == 1)
        assert st["held"] == 1 and st["misses"] == 0
        # a second hint for a key already held is skipped
        await s.post(f"{cache}/v1/prefetch/keys", json={"keys": [{"table": "orders"}]})
        assert await (await s.get(f"{cache}/v1/tables/orders/blocks/k")).read() == b"o"
        st = await key_stats(s, cache)
        assert (st["hits"], st["misses"], st["prefetched"], st["prefetchUsed"]) == (1, 0, 1, 1)
        m = await (await s.get(f"{cache}/metrics")).text()
        assert metric(m, "chronoshard_cache_key_prefetched_total") == 1
        assert metric(m, "chronoshard_cache_key_prefetch_used_total") == 1
        assert metric(m, "chronoshard_cache_key_unwrap_seconds_count", '{path="prefetch"}') == 1
        for _ in range(100):
            m = await (await s.get(f"{cache}/metrics")).text()
            if metric(m, "chronoshard_cache_key_hints_dropped_total", '{reason="held"}') == 1:
                break
            await asyncio.sleep(0.02)
        assert metric(m, "chronoshard_cache_key_hints_dropped_total", '{reason="held"}') == 1


async def test_hint_unwraps_primary_and_the_version_of_the_last_read(tmp_path):
    async with node_and_cache(tmp_path, wrapped=True) as (node, cache, s, _, capp):
        await s.put(f"{node}/v1/tables/t/blocks/old", data=b"v1")
        assert await (await s.get(f"{cache}/v1/tables/t/blocks/old")).read() == b"v1"
        # version 2 becomes primary; the block stays on version 1 until a rewrap
        write_keyring(tmp_path / "keyring", 2, {1: ("decrypt-only", KEY1), 2: ("primary", KEY2)}, kek=KEK,
                      wrapped={1, 2})
        for _ in range(200):
            if (await (await s.get(f"{cache}/v1/keys")).json())["primary"] == 2:
                break
            await asyncio.sleep(0.02)
        kc = capp[CACHE].key_cache
        kc.retain(())  # forget every table key, as if evicted
        assert ("t", 1) not in kc and ("t", 2) not in kc
        await s.post(f"{cache}/v1/prefetch/keys", json={"keys": [{"table": "t", "score": 0.5}]})
        await wait_stats(s, cache, lambda st: st["prefetched"] == 2)
        assert ("t", 1) in kc and ("t", 2) in kc
        # a table never read: only the primary
        await s.post(f"{cache}/v1/prefetch/keys", json={"keys": [{"table": "fresh", "score": 0.5}]})
        await wait_stats(s, cache, lambda st: st["prefetched"] == 3)
        assert ("fresh", 2) in kc and ("fresh", 1) not in kc


@pytest.mark.parametrize("body", [
    {"keys": "orders"},
    {"keys": [{"table": "bad/name"}]},
    {"keys": [{"table": 5}]},
    {"keys": [{"table": "ok", "score": 2}]},
    {"keys": [{"table": "ok", "score": True}]},
    {"keys": [{"table": "ok"}, "x"]},
    {"keys": [{"table": "ok"}] * 1001},
    {"hints": []},
    [],
])
async def test_bad_key_hint_bodies_are_400_and_queue_nothing(tmp_path, body):
    async with node_and_cache(tmp_path, wrapped=True, key_prefetch_workers=0) as (_, cache, s, _, capp):
        r = await s.post(f"{cache}/v1/prefetch/keys", data=json.dumps(body),
                         headers={"Content-Type": "application/json"})
        assert r.status == 400 and (await r.json())["error"] in ("invalid_body", "invalid_table")
        assert capp[CACHE].key_hints.qsize() == 0


async def test_full_key_hint_queue_drops_and_counts(tmp_path):
    async with node_and_cache(tmp_path, wrapped=True, key_prefetch_workers=0,
                              prefetch_queue=2) as (_, cache, s, _, _):
        r = await s.post(f"{cache}/v1/prefetch/keys", json={"keys": [{"table": f"t{i}"} for i in range(5)]})
        assert await r.json() == {"queued": 2, "dropped": 3}
        m = await (await s.get(f"{cache}/metrics")).text()
        assert metric(m, "chronoshard_cache_key_hints_dropped_total", '{reason="queue_full"}') == 3


async def test_key_cache_size_setting_resizes_live(tmp_path):
    settings = tmp_path / "cache.json"
    settings.write_text(json.dumps({"keyCacheSize": 4}))
    async with node_and_cache(tmp_path, wrapped=True, settings_path=str(settings)) as (node, cache, s, _, capp):
        await wait_stats(s, cache, lambda st: st["capacity"] == 4)
        for i in range(4):
            await s.put(f"{node}/v1/tables/t{i}/blocks/k", data=b"x")
            await s.get(f"{cache}/v1/tables/t{i}/blocks/k")
        assert (await key_stats(s, cache))["held"] == 4
        settings.write_text(json.dumps({"keyCacheSize": 1}))
        st = await wait_stats(s, cache, lambda st: st["capacity"] == 1)
        assert st["held"] == 1
        registry = capp[CACHE].metrics.registry

        def loads() -> float:
            return registry.get_sample_value("chronoshard_cache_settings_reloads_total", {"result": "ok"}) or 0.0

        seen = loads()
        settings.write_text(json.dumps({"keyCacheSize": 0}))  # out of range: logged and ignored
        # The watcher loads the file only when it changes: one more good load is this file applied.
        await wait_for_async(lambda: loads() >= seen + 1, timeout=10, what="the settings file re-read")
        assert (await key_stats(s, cache))["capacity"] == 1 and capp[CACHE].cfg.key_cache_size == 1


async def test_a_miss_unwraps_off_the_event_loop(tmp_path):
    """While one read waits for a slow unwrap, a cached read of another table is answered (ordering, not time)."""
    async with node_and_cache(tmp_path, wrapped=True) as (node, cache, s, _, capp):
        app = capp[CACHE]
        await s.put(f"{node}/v1/tables/hot/blocks/k", data=b"hot")
        await s.put(f"{node}/v1/tables/cold/blocks/k", data=b"cold")
        assert await (await s.get(f"{cache}/v1/tables/hot/blocks/k")).read() == b"hot"  # block now cached
        gate = threading.Event()
        entered = threading.Event()
        inner = app.key_cache.provider

        class Gated:  # an unwrap that waits until the test lets it finish
            def unwrap(self, table: str, version: int, blob: bytes | None = None) -> bytes:
                entered.set()
                assert gate.wait(10)
                return inner.unwrap(table, version, blob)

            def check(self, version: int, blob: bytes | None = None) -> None:
                inner.check(version, blob)

        app.key_cache.provider = Gated()
        order: list[str] = []

        async def read(table: str) -> None:
            r = await s.get(f"{cache}/v1/tables/{table}/blocks/k")
            assert r.status == 200 and await r.read() == table.encode()
            order.append(table)

        cold = asyncio.create_task(read("cold"))
        assert await asyncio.to_thread(entered.wait, 10)  # the cold read is inside its unwrap now
        await read("hot")
        gate.set()
        await cold
        assert order == ["hot", "cold"]
