"""Read-your-writes through the cache (docs/mirroring.md): a read with X-Chronoshard-Min-Lsn is answered from memory
only once the cache's change-log tail has seen that LSN, else it reads through to the node with the headers; the
node's refusals (409 lsn_not_reached, 503 mirror_seeding / not_primary, with Retry-After) reach the client
unchanged.

The first tests use the real node. The refusals a real node gives only in passing (fenced, lease_lost, mirror_lag,
sync_timeout, mirror_seeding) are checked against a small stand-in node on a real port that answers exactly the
contract's bodies and records what the cache sent it; the real mirror node's 409 and not_primary through a real
cache process are tests/integration/client/test_cache_min_lsn.py.
"""

import base64
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from chronoshard.shardnode.cache.server import CACHE, CacheConfig
from chronoshard.shardnode.cache.server import create_app as create_cache

from tests.support.servers import keyring_dir, node_and_cache, serve
from tests.support.waiting import wait_for_async

MIN, WAIT = "X-Chronoshard-Min-Lsn", "X-Chronoshard-Wait-Ms"


async def test_a_read_needing_a_later_lsn_than_the_cache_has_seen_reads_through(tmp_path):
    # No change-log tail: the cache never learns of writes that bypass it, so a plain read stays stale.
    async with node_and_cache(tmp_path, follow_changes=False) as (node, cache, s, _, capp):
        ack = await (await s.put(f"{node}/v1/tables/t/blocks/k", data=b"old")).json()
        r = await s.get(f"{cache}/v1/tables/t/blocks/k")
        assert await r.read() == b"old" and r.headers["X-Chronoshard-Cache"] == "miss"
        new = await (await s.put(f"{node}/v1/tables/t/blocks/k", data=b"new")).json()
        assert new["lsn"] > ack["lsn"]
        r = await s.get(f"{cache}/v1/tables/t/blocks/k")
        assert await r.read() == b"old" and r.headers["X-Chronoshard-Cache"] == "hit"
        # The writer's LSN: memory has not seen it, so the node answers (and the fresh copy replaces the old).
        r = await s.get(f"{cache}/v1/tables/t/blocks/k", headers={MIN: str(new["lsn"]), WAIT: "0"})
        assert r.status == 200 and await r.read() == b"new" and r.headers["X-Chronoshard-Cache"] == "miss"
        r = await s.get(f"{cache}/v1/tables/t/blocks/k")
        assert await r.read() == b"new" and r.headers["X-Chronoshard-Cache"] == "hit"
        # Batch reads too: a key held in memory is fetched again when the read needs a newer LSN.
        newer = await (await s.put(f"{node}/v1/tables/t/blocks/k", data=b"newer")).json()
        batch = await (await s.post(f"{cache}/v1/tables/t/blocks:batchGet", json={"keys": ["k"]},
                                    headers={MIN: str(newer["lsn"])})).json()
        assert base64.b64decode(batch["blocks"][0]["value"]) == b"newer"
        assert capp[CACHE].bc.seen_lsn == 0


async def test_memory_answers_once_the_tail_has_seen_the_lsn(tmp_path):
    async with node_and_cache(tmp_path) as (node, cache, s, _, capp):
        ack = await (await s.put(f"{cache}/v1/tables/t/blocks/k", data=b"v")).json()
        bc = capp[CACHE].bc
        await wait_for_async(lambda: bc.seen_lsn >= ack["lsn"], what="the tail to pass the write's LSN")
        r = await s.get(f"{cache}/v1/tables/t/blocks/k", headers={MIN: str(ack["lsn"])})
        assert await r.read() == b"v" and r.headers["X-Chronoshard-Cache"] == "hit"
        assert not bc.has_seen(bc.seen_lsn + 1) and bc.has_seen(None)


@pytest.mark.parametrize("headers", [{MIN: "-1"}, {MIN: "x"}, {MIN: "1" * 40}, {MIN: "1", WAIT: "10001"},
                                     {MIN: "1", WAIT: "0.5"}, {MIN: "\u0663"}])
async def test_bad_consistency_headers_are_refused(tmp_path, headers):
    async with node_and_cache(tmp_path) as (_, cache, s, _, _):
        r = await s.get(f"{cache}/v1/tables/t/blocks/k", headers=headers)
        assert r.status == 400 and (await r.json())["error"] == "invalid_header"


class StandInNode:
    """Answers the node's refusals from docs/mirroring.md and records the headers of each request."""

    def __init__(self, applied: int) -> None:
        self.applied = applied
        self.seen: list[dict[str, str]] = []
        self.refusal: tuple[int, dict[str, Any]] | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/tables/{table}/frames/{key}", self.read)
        app.router.add_post("/v1/tables/{table}/frames:batchGet", self.read)
        app.router.add_put("/v1/tables/{table}/blocks/{key}", self.write)
        app.router.add_delete("/v1/tables/{table}/blocks/{key}", self.write)
        return app

    async def read(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        if self.refusal is not None:
            return web.json_response(self.refusal[1], status=self.refusal[0])
        return web.json_response({"error": "lsn_not_reached", "message": "applied LSN below 9",
                                  "appliedLsn": self.applied}, status=409)

    async def write(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        assert self.refusal is not None
        return web.json_response(self.refusal[1], status=self.refusal[0], headers={"Retry-After": "1"})


@pytest.fixture
async def stand_in(tmp_path):
    node = StandInNode(applied=5)
    async with serve(node.app()) as node_url:
        capp = create_cache(CacheConfig(node_url=node_url, keyring_dir=keyring_dir(tmp_path),
                                        follow_changes=False, keyring_poll_seconds=0.05))
        async with serve(capp) as cache_url, aiohttp.ClientSession() as s:
            yield node, cache_url, s


async def test_node_refusals_of_reads_pass_through_with_the_headers(stand_in):
    node, cache, s = stand_in
    r = await s.get(f"{cache}/v1/tables/t/blocks/k", headers={MIN: "9", WAIT: "250"})
    assert r.status == 409 and await r.json() == {"error": "lsn_not_reached", "message": "applied LSN below 9",
                                                  "appliedLsn": 5}
    assert node.seen[-1][MIN] == "9" and node.seen[-1][WAIT] == "250"
    r = await s.post(f"{cache}/v1/tables/t/blocks:batchGet", json={"keys": ["a", "b"]}, headers={MIN: "9"})
    assert r.status == 409 and (await r.json())["appliedLsn"] == 5
    assert node.seen[-1][MIN] == "9" and WAIT not in node.seen[-1]
    seeding = {"error": "mirror_seeding", "message": "seeding from ns-a/orders-a", "state": "seeding"}
    node.refusal = (503, seeding)
    r = await s.get(f"{cache}/v1/tables/t/blocks/k")
    assert r.status == 503 and await r.json() == seeding
    assert MIN not in node.seen[-1]  # no Min-LSN asked, none sent


@pytest.mark.parametrize("reason", ["not_primary", "fenced", "lease_lost", "mirror_lag", "sync_timeout"])
async def test_node_refusals_of_writes_pass_through_with_retry_after(stand_in, reason):
    node, cache, s = stand_in
    body = {"error": reason, "message": f"writes refused: {reason}", "role": "fenced", "term": 5,
            "primaryShardSet": "ns-b/orders-b"}
    node.refusal = (503, body)
    for method in ("PUT", "DELETE"):
        r = await s.request(method, f"{cache}/v1/tables/t/blocks/k", data=b"v" if method == "PUT" else None)
        assert r.status == 503 and r.headers["Retry-After"] == "1"
        assert json.loads(await r.read()) == body


async def test_a_read_with_a_min_term_always_goes_to_the_node(tmp_path):
    """The cache cannot tell which term its node's LSNs belong to: with X-Chronoshard-Min-Term the node decides,
    even when memory has seen the LSN."""
    async with node_and_cache(tmp_path) as (node, cache, s, _, capp):
        ack = await (await s.put(f"{cache}/v1/tables/t/blocks/k", data=b"v")).json()
        assert ack["term"] == 0  # a node outside any MirrorSet: term 0
        bc = capp[CACHE].bc
        await wait_for_async(lambda: bc.seen_lsn >= ack["lsn"], what="the tail to pass the write's LSN")
        await s.get(f"{cache}/v1/tables/t/blocks/k")  # in memory now
        r = await s.get(f"{cache}/v1/tables/t/blocks/k", headers={MIN: str(ack["lsn"]), "X-Chronoshard-Min-Term": "0"})
        assert await r.read() == b"v" and r.headers["X-Chronoshard-Cache"] == "miss"
        r = await s.get(f"{cache}/v1/tables/t/blocks/k", headers={MIN: str(ack["lsn"]), "X-Chronoshard-Min-Term": "1"})
        assert r.status == 409 and (await r.json())["error"] == "lsn_not_reached"
