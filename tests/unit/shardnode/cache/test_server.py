"""The cache HTTP API end to end with a real node: read-through, write-through, rotation, tampering, bad input."""

import asyncio
import base64
import sqlite3

import pytest
from chronoshard.shardnode.node import store as store_mod

from tests.support.kubelet_dir import write_keyring
from tests.support.servers import KEY1, KEY2, node_and_cache
from tests.support.stores import flip_frame_bit


@pytest.fixture
async def env(tmp_path):
    async with node_and_cache(tmp_path, budget_bytes=1 << 20) as e:
        yield e


async def test_read_through_and_access_log(env):
    node, cache, s, _, _ = env
    await s.put(f"{node}/v1/tables/t/blocks/k", data=b"direct-to-node")
    r = await s.get(f"{cache}/v1/tables/t/blocks/k", headers={"X-Client-Id": "app-1"})
    assert await r.read() == b"direct-to-node" and r.headers["X-Chronoshard-Cache"] == "miss"
    r = await s.get(f"{cache}/v1/tables/t/blocks/k")
    assert r.headers["X-Chronoshard-Cache"] == "hit"
    log = await (await s.get(f"{cache}/v1/access-log", params={"after": "0"})).json()
    assert [(e["key"], e["hit"], e["client"], e["size"]) for e in log["entries"]] == [
        ("k", False, "app-1", 14), ("k", True, "127.0.0.1", 14)]
    log2 = await (await s.get(f"{cache}/v1/access-log", params={"after": str(log["next"])})).json()
    assert log2["entries"] == []


async def test_access_log_long_poll_answers_when_the_next_read_is_logged(env):
    node, cache, s, _, _ = env
    await s.put(f"{node}/v1/tables/t/blocks/k", data=b"v")
    last = (await (await s.get(f"{cache}/v1/access-log")).json())["last"]
    # The server may hold this for 20 s; the read below must release it long before.
    poll = asyncio.create_task(s.get(f"{cache}/v1/access-log", params={"after": str(last), "wait": "20"}))
    await asyncio.sleep(0.2)  # what is tested: the poll holds while nothing is logged (no "parked" signal)
    assert not poll.done()
    await (await s.get(f"{cache}/v1/tables/t/blocks/k", headers={"X-Client-Id": "late"})).read()
    body = await (await asyncio.wait_for(poll, 5)).json()
    assert [(e["key"], e["client"]) for e in body["entries"]] == [("k", "late")]
    r = await s.get(f"{cache}/v1/access-log", params={"wait": "31"})
    assert r.status == 400 and (await r.json())["error"] == "invalid_parameter"


async def test_write_through_then_read_sees_acknowledged_value(env):
    node, cache, s, _, _ = env
    for i in range(5):
        r = await s.put(f"{cache}/v1/tables/t/blocks/k", data=f"v{i}".encode())
        assert r.status == 200
        assert await (await s.get(f"{cache}/v1/tables/t/blocks/k")).read() == f"v{i}".encode()
        assert await (await s.get(f"{node}/v1/tables/t/blocks/k")).read() == f"v{i}".encode()
    assert (await s.delete(f"{cache}/v1/tables/t/blocks/k")).status == 200
    assert (await s.get(f"{cache}/v1/tables/t/blocks/k")).status == 404


async def test_writes_that_bypass_the_cache_invalidate_it_via_change_log(env):
    node, cache, s, _, _ = env
    await s.put(f"{cache}/v1/tables/t/blocks/k", data=b"one")
    assert await (await s.get(f"{cache}/v1/tables/t/blocks/k")).read() == b"one"
    await s.put(f"{node}/v1/tables/t/blocks/k", data=b"two")
    for _ in range(100):
        if await (await s.get(f"{cache}/v1/tables/t/blocks/k")).read() == b"two":
            break
        await asyncio.sleep(0.02)
    assert await (await s.get(f"{cache}/v1/tables/t/blocks/k")).read() == b"two"


async def test_decrypts_old_and_new_versions_during_rotation(env, tmp_path):
    node, cache, s, _, _ = env
    await s.put(f"{node}/v1/tables/t/blocks/old", data=b"under-v1")
    write_keyring(tmp_path / "keyring", 2, {1: ("decrypt-only", KEY1), 2: ("primary", KEY2)})
    for _ in range(100):
        keys = [await (await s.get(f"{u}/v1/keys")).json() for u in (node, cache)]
        if all(k["primary"] == 2 for k in keys):
            break
        await asyncio.sleep(0.05)
    await s.put(f"{node}/v1/tables/t/blocks/new", data=b"under-v2")
    assert await (await s.get(f"{cache}/v1/tables/t/blocks/old")).read() == b"under-v1"
    assert await (await s.get(f"{cache}/v1/tables/t/blocks/new")).read() == b"under-v2"
    metrics = await (await s.get(f"{cache}/metrics")).text()
    assert 'chronoshard_cache_decrypts_total{key_version="1"} 1.0' in metrics
    assert 'chronoshard_cache_decrypts_total{key_version="2"} 1.0' in metrics
    assert KEY1.hex() not in metrics and KEY2.hex() not in metrics


async def test_tampered_block_is_never_served(env, tmp_path):
    node, cache, s, napp, _ = env
    await s.put(f"{node}/v1/tables/t/blocks/k", data=b"sensitive-plaintext")
    conn = store_mod.connect(tmp_path / "data" / "blocks.sqlite3")
    flip_frame_bit(conn, "t", "k", 25 * 8 + 3)
    conn.close()
    for url, status in ((cache, 502), (node, 500)):
        r = await s.get(f"{url}/v1/tables/t/blocks/k")
        body = await r.read()
        assert r.status == status and b"sensitive" not in body
        assert (await r.json())["error"] == "integrity_error"
    r = await s.post(f"{cache}/v1/tables/t/blocks:batchGet", json={"keys": ["k"]})
    item = (await r.json())["blocks"][0]
    assert "value" not in item and item["error"]["error"] == "integrity_error"
    cm = await (await s.get(f"{cache}/metrics")).text()
    nm = await (await s.get(f"{node}/metrics")).text()
    assert 'chronoshard_cache_decrypt_failures_total{reason="tag"} 2.0' in cm
    assert 'chronoshard_node_integrity_failures_total{reason="tag",source="read"} 1.0' in nm


async def test_batch_get_mixes_hits_misses_and_absent(env):
    node, cache, s, _, _ = env
    await s.put(f"{cache}/v1/tables/t/blocks/a", data=b"A")
    await s.put(f"{node}/v1/tables/t/blocks/b", data=b"B")
    r = await s.post(f"{cache}/v1/tables/t/blocks:batchGet", json={"keys": ["a", "b", "c"]})
    blocks = (await r.json())["blocks"]
    assert [base64.b64decode(b["value"]) if b["found"] else None for b in blocks] == [b"A", b"B", None]


async def test_prefetch_hints_fetch_in_background(env):
    node, cache, s, _, _ = env
    for i in range(3):
        await s.put(f"{node}/v1/tables/t/blocks/p{i}", data=b"x")
    r = await s.post(f"{cache}/v1/prefetch", json={"hints": [{"table": "t", "key": f"p{i}", "score": 0.8}
                                                             for i in range(3)]})
    assert r.status == 202 and (await r.json()) == {"queued": 3, "dropped": 0}
    for _ in range(100):
        if (await (await s.get(f"{cache}/v1/cache")).json())["entries"] == 3:
            break
        await asyncio.sleep(0.02)
    r = await s.get(f"{cache}/v1/tables/t/blocks/p1")
    assert r.headers["X-Chronoshard-Cache"] == "hit"
    m = await (await s.get(f"{cache}/metrics")).text()
    assert "chronoshard_cache_prefetches_issued_total 3.0" in m and "chronoshard_cache_prefetches_used_total 1.0" in m


@pytest.mark.parametrize(
    "method, path, body, status, code",
    [
        ("POST", "/v1/prefetch", b"{}", 400, "invalid_body"),
        ("POST", "/v1/prefetch", b'{"hints": [{"table": "t", "key": "k", "score": 2}]}', 400, "invalid_body"),
        ("POST", "/v1/prefetch", b'{"hints": [{"table": "t", "key": "k", "score": true}]}', 400, "invalid_body"),
        ("POST", "/v1/prefetch", b'{"hints": [{"table": "t", "key": "k"}, {"table": "", "key": "k"}]}', 400,
         "invalid_table"),
        ("POST", "/v1/prefetch", b'{"hints": [{"table": "t", "key": ""}]}', 400, "invalid_key"),
        ("POST", "/v1/prefetch", b"nope", 400, "invalid_body"),
        ("GET", "/v1/access-log?after=x", None, 400, "invalid_parameter"),
        ("GET", "/v1/access-log?limit=0", None, 400, "invalid_parameter"),
        ("PUT", "/v1/tables/t%20t/blocks/k", b"x", 400, "invalid_table"),
        ("GET", "/v1/tables/t/blocks?limit=5000", None, 400, "invalid_parameter"),
        ("POST", "/v1/tables/t/blocks:batchGet", b'{"keys": "k"}', 400, "invalid_body"),
    ],
)
async def test_bad_input_gets_json_4xx_and_changes_nothing(env, method, path, body, status, code):
    node, cache, s, _, _ = env
    before = (await (await s.get(f"{cache}/v1/cache")).json(), await (await s.get(f"{node}/v1/changes")).json())
    r = await s.request(method, cache + path, data=body)
    assert r.status == status and (await r.json())["error"] == code
    await asyncio.sleep(0.05)  # a wrongly queued prefetch would have landed by now
    after = (await (await s.get(f"{cache}/v1/cache")).json(), await (await s.get(f"{node}/v1/changes")).json())
    assert after == before


async def test_cache_keys_endpoint_reports_loaded_versions(env):
    _, cache, s, _, _ = env
    assert (await (await s.get(f"{cache}/v1/keys")).json()) == {
        "generation": 1, "primary": 1, "versions": [{"id": 1, "state": "primary"}], "loadError": None,
        "compromised": [], "wrapped": []}
    assert (await s.get(f"{cache}/readyz")).status == 200


def test_sqlite_module_is_real():
    assert sqlite3.sqlite_version_info >= (3, 35)


def test_cache_json_as_the_operator_writes_it():
    from pathlib import Path

    from chronoshard.shardnode.cache.server import CacheConfig

    cfg = CacheConfig(node_url="http://127.0.0.1:1", keyring_dir=Path("/nonexistent"))
    cfg.apply({"tables": ["users"], "budgetBytes": 1234, "evictionPolicy": "lru", "unknown": 1})
    assert cfg.budget_bytes == 1234 and cfg.eviction == "lru"
    cfg.apply({"budgetBytes": "big", "evictionPolicy": "fifo"})  # bad values are ignored, old ones kept
    assert cfg.budget_bytes == 1234 and cfg.eviction == "lru"


async def test_cache_json_change_resizes_and_switches_policy_live(tmp_path):
    import json as _json

    import aiohttp
    from chronoshard.shardnode.cache.server import CACHE, CacheConfig, create_app
    from chronoshard.shardnode.eviction import LRUPolicy
    from chronoshard.shardnode.node.server import NodeConfig
    from chronoshard.shardnode.node.server import create_app as create_node

    from tests.support.servers import keyring_dir, serve

    kdir = keyring_dir(tmp_path)
    settings = tmp_path / "cache.json"
    settings.write_text(_json.dumps({"budgetBytes": 1000, "evictionPolicy": "scored"}))
    napp = create_node(NodeConfig(data_dir=tmp_path / "d", keyring_dir=kdir))
    async with serve(napp) as node_url:
        capp = create_app(CacheConfig(node_url=node_url, keyring_dir=kdir, keyring_poll_seconds=0.05,
                                      settings_path=str(settings)))
        async with serve(capp) as url, aiohttp.ClientSession() as s:
            for i in range(5):
                await s.put(f"{url}/v1/tables/t/blocks/k{i}", data=bytes(150))
            assert (await (await s.get(f"{url}/v1/cache")).json())["entries"] == 5
            settings.write_text(_json.dumps({"budgetBytes": 300, "evictionPolicy": "lru"}))
            for _ in range(100):
                stats = await (await s.get(f"{url}/v1/cache")).json()
                if stats["budget"] == 300:
                    break
                await asyncio.sleep(0.05)
            assert stats["budget"] == 300 and stats["bytes"] <= 300 and stats["policy"] == "lru"
            assert isinstance(capp[CACHE].cache.policy, LRUPolicy) and len(capp[CACHE].cache.policy) == 2
            settings.write_text("{broken")
            for _ in range(100):
                stats = await (await s.get(f"{url}/v1/cache")).json()
                if stats["settingsError"]:
                    break
                await asyncio.sleep(0.05)
            assert stats["budget"] == 300 and "cache.json" in stats["settingsError"]
            m = await (await s.get(f"{url}/metrics")).text()
            assert "chronoshard_cache_settings_load_error 1.0" in m


async def test_change_log_gap_makes_the_cache_drop_everything(tmp_path):
    import aiohttp
    from chronoshard.shardnode.cache.cache import BlockCache
    from chronoshard.shardnode.cache.node_client import NodeClient
    from chronoshard.shardnode.eviction import LRUPolicy
    from chronoshard.shardnode.keys.keyring import load_keyring
    from chronoshard.shardnode.node.server import NodeConfig
    from chronoshard.shardnode.node.server import create_app as create_node
    from chronoshard.shardnode.serving.metrics import CacheMetrics

    from tests.support.servers import keyring_dir, serve

    kdir = keyring_dir(tmp_path)
    napp = create_node(NodeConfig(data_dir=tmp_path / "d", keyring_dir=kdir, change_log_retain=1,
                                  trim_interval_seconds=0.05))
    async with serve(napp) as node_url, aiohttp.ClientSession() as s:
        ring = load_keyring(kdir)
        cache = BlockCache(1 << 20, LRUPolicy(), lambda: ring, NodeClient(node_url, s), CacheMetrics())
        await cache.put("t", "a", b"cached")  # lsn 1
        for i in range(5):  # lsn 2..6, written behind the cache's back
            await s.put(f"{node_url}/v1/tables/t/blocks/other{i}", data=b"x")
        for _ in range(100):
            if (await (await s.get(f"{node_url}/v1/changes")).json())["firstLsn"] == 6:
                break
            await asyncio.sleep(0.05)
        assert ("t", "a") in cache.entries
        tail = asyncio.create_task(cache.follow_changes(poll_wait=0.1, after=1))  # a reader that fell behind
        for _ in range(100):
            if not cache.entries:
                break
            await asyncio.sleep(0.02)
        tail.cancel()
        assert cache.entries == {}
        assert (await cache.get("t", "a")) == (b"cached", False)  # refetched from the node


async def test_cache_keys_long_poll_answers_when_the_generation_loads(env, tmp_path):
    _, cache, s, _, _ = env
    now = (await (await s.get(f"{cache}/v1/keys")).json())["generation"]
    waiting = asyncio.ensure_future(s.get(f"{cache}/v1/keys", params={"waitGeneration": str(now + 1),
                                                                      "waitRewrap": "true", "waitSeconds": "10"}))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    write_keyring(tmp_path / "keyring", now + 1, {1: ("decrypt-only", KEY1), 2: ("primary", KEY2)})
    assert (await (await asyncio.wait_for(waiting, 10)).json())["generation"] == now + 1
