"""POST /v1/prefetch with read-ahead ranges, against a real node and cache: one hint, one node request, one count;
the per-block form unchanged; bad ranges rejected whole."""

import asyncio
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import node_and_cache


@pytest.fixture
async def env(tmp_path):
    # No change-log tail: its invalidations, racing a range fetch, would rightly keep the range out of the cache.
    async with node_and_cache(tmp_path, budget_bytes=1 << 20, prefetch_min_score=0.5, follow_changes=False) as e:
        yield e


async def samples(s, url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of metric ``name`` at ``url``/metrics, by their labels."""
    text = await (await s.get(f"{url}/metrics")).text()
    return {tuple(sorted(smp.labels.items())): smp.value for fam in text_string_to_metric_families(text)
            for smp in fam.samples if smp.name == name}


async def node_reads(s, node: str) -> dict[str, float]:
    """The node's 2xx answers to frame reads (what the cache fetches), by route (single GET vs batchGet)."""
    out: dict[str, float] = {}
    for labels, v in (await samples(s, node, "chronoshard_node_requests_total")).items():
        d = dict(labels)
        if "/frames" in d["route"] and d["status"].startswith("2"):
            out[d["route"]] = out.get(d["route"], 0) + v
    return out


async def wait_entries(s, cache: str, n: int) -> dict:
    """/v1/cache once it holds ``n`` blocks (the background workers fill it; bounded, never a timing check)."""
    for _ in range(500):
        doc = await (await s.get(f"{cache}/v1/cache")).json()
        if doc["entries"] >= n and doc["prefetchQueue"] == 0:
            return doc
        await asyncio.sleep(0.01)
    raise AssertionError(f"the cache never held {n} blocks: {doc}")


def range_hint(key: str, extra: list[tuple[str, float]], score: float = 0.9) -> dict:
    return {"table": "t", "key": key, "score": score, "readAhead": [{"key": k, "score": p} for k, p in extra]}


async def test_a_range_is_one_hint_one_node_request_and_one_issued_fetch(env):
    node, cache, s, _, _ = env
    for i in range(6):
        await s.put(f"{node}/v1/tables/t/blocks/r{i}", data=bytes([i]) * 10)
    before = await node_reads(s, node)
    hint = range_hint("r0", [(f"r{i}", 0.9 ** (i + 1)) for i in range(1, 6)])
    r = await s.post(f"{cache}/v1/prefetch", json={"hints": [hint]})
    assert r.status == 202 and await r.json() == {"queued": 1, "dropped": 0}
    await wait_entries(s, cache, 6)
    after = await node_reads(s, node)
    grown = {route: after[route] - before.get(route, 0) for route in after if after[route] != before.get(route, 0)}
    assert grown == {"/v1/tables/{table}/frames:batchGet": 1}, grown
    assert (await samples(s, cache, "chronoshard_cache_prefetches_issued_total")) == {(): 1.0}
    for i in range(6):
        r = await s.get(f"{cache}/v1/tables/t/blocks/r{i}")
        assert await r.read() == bytes([i]) * 10 and r.headers["X-Chronoshard-Cache"] == "hit"
    assert (await samples(s, cache, "chronoshard_cache_prefetches_used_total")) == {(): 6.0}


async def test_the_cache_floor_cuts_read_ahead_blocks_and_drops_low_hints(env):
    node, cache, s, _, _ = env
    for k in ("a0", "a1", "a2", "a3", "b0"):
        await s.put(f"{node}/v1/tables/t/blocks/{k}", data=b"x")
    hints = [range_hint("a0", [("a1", 0.8), ("a2", 0.4), ("a3", 0.6)]), range_hint("b0", [], score=0.3)]
    r = await s.post(f"{cache}/v1/prefetch", json={"hints": hints})
    assert await r.json() == {"queued": 1, "dropped": 1}
    await wait_entries(s, cache, 3)
    assert [(await s.get(f"{cache}/v1/tables/t/blocks/{k}")).headers["X-Chronoshard-Cache"]
            for k in ("a0", "a1", "a3", "a2", "b0")] == ["hit", "hit", "hit", "miss", "miss"]
    dropped = await samples(s, cache, "chronoshard_cache_prefetches_dropped_total")
    assert dropped[(("why", "threshold"),)] == 1.0


async def test_the_per_block_form_and_a_range_mix_in_one_request(env):
    node, cache, s, _, _ = env
    for k in ("m0", "m1", "s0"):
        await s.put(f"{node}/v1/tables/t/blocks/{k}", data=b"y")
    hints = [{"table": "t", "key": "s0", "score": 0.7}, range_hint("m0", [("m1", 0.8)])]
    assert await (await s.post(f"{cache}/v1/prefetch", json={"hints": hints})).json() == {"queued": 2, "dropped": 0}
    await wait_entries(s, cache, 3)
    assert (await samples(s, cache, "chronoshard_cache_prefetches_issued_total")) == {(): 2.0}


def _too_long() -> dict:
    return range_hint("k0", [(f"k{i}", 0.9) for i in range(1, 33)])


@pytest.mark.parametrize(
    "hint, code",
    [
        ({"table": "t", "key": "k0", "readAhead": "k1"}, "invalid_body"),
        ({"table": "t", "key": "k0", "readAhead": {"key": "k1", "score": 0.9}}, "invalid_body"),
        ({"table": "t", "key": "k0", "readAhead": ["k1"]}, "invalid_body"),
        (range_hint("k0", [("k1", 0.9), ("", 0.9)]), "invalid_key"),
        (range_hint("k0", [("k1", 0.9), ("a/b", 0.9)]), "invalid_key"),
        ({"table": "t", "key": "k0", "readAhead": [{"score": 0.9}]}, "invalid_key"),
        ({"table": "t", "key": "k0", "readAhead": [{"key": "k1"}]}, "invalid_body"),
        (range_hint("k0", [("k1", 1.5)]), "invalid_body"),
        (range_hint("k0", [("k1", float("nan"))]), "invalid_body"),
        ({"table": "t", "key": "k0", "readAhead": [{"key": "k1", "score": True}]}, "invalid_body"),
        (range_hint("k0", [("k1", 0.9), ("k1", 0.8)]), "invalid_body"),
        (range_hint("k0", [("k0", 0.9)]), "invalid_body"),
        (_too_long(), "invalid_body"),
    ],
)
async def test_a_bad_range_rejects_the_whole_request_and_queues_nothing(env, hint, code):
    node, cache, s, _, _ = env
    await s.put(f"{node}/v1/tables/t/blocks/good", data=b"z")
    good = {"table": "t", "key": "good", "score": 0.9}
    body = json.dumps({"hints": [good, hint]}, allow_nan=True)
    r = await s.post(f"{cache}/v1/prefetch", data=body, headers={"Content-Type": "application/json"})
    assert r.status == 400, await r.text()
    doc = await r.json()
    assert doc["error"] == code and doc["message"]
    assert (await samples(s, cache, "chronoshard_cache_prefetches_issued_total")) == {(): 0.0}
    assert (await (await s.get(f"{cache}/v1/cache")).json())["entries"] == 0


async def test_the_longest_range_is_accepted(env):
    _, cache, s, _, _ = env
    hint = range_hint("k0", [(f"k{i}", 0.9) for i in range(1, 32)])
    assert (await s.post(f"{cache}/v1/prefetch", json={"hints": [hint]})).status == 202
