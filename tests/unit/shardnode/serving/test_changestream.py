"""The change-stream client against a real node (real SQLite in tmp_path, real HTTP on 127.0.0.1): slots, frames
that open to the written plaintext, acks and retention, behind + re-seed, restart, conditional writes, snapshot."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from chronoshard.shardnode.keys.crypto import open_block
from chronoshard.shardnode.node.server import NODE, Node, NodeConfig, create_app
from chronoshard.shardnode.serving.changestream import ChangeStreamClient, ChangeStreamError, SnapshotBlock

from tests.support.servers import keyring_dir, serve
from tests.support.waiting import wait_for_async


@contextlib.asynccontextmanager
async def running_node(tmp: Path, **cfg: object) -> AsyncIterator[tuple[ChangeStreamClient, Node, str,
                                                                        aiohttp.ClientSession]]:
    """A node on ``tmp/data`` (trim only when the test calls it, unless cfg says otherwise) and a client."""
    kdir = tmp / "keyring" if (tmp / "keyring").exists() else keyring_dir(tmp)
    cfg.setdefault("trim_interval_seconds", 3600.0)
    app = create_app(NodeConfig(data_dir=tmp / "data", keyring_dir=kdir, keyring_poll_seconds=0.05,
                                **cfg))  # type: ignore[arg-type]
    async with serve(app) as url, aiohttp.ClientSession() as session:
        yield ChangeStreamClient(url, session), app[NODE], url, session


async def put(session: aiohttp.ClientSession, url: str, table: str, key: str, value: bytes) -> int:
    r = await session.put(f"{url}/v1/tables/{table}/blocks/{key}", data=value)
    assert r.status == 200
    return int((await r.json())["lsn"])


async def test_register_read_frames_that_open_to_the_plaintext_and_ack(tmp_path):
    async with running_node(tmp_path) as (cs, node, url, s):
        await put(s, url, "t", "before", b"written before any consumer")
        slot = await cs.register("shadow")
        assert (slot["ackedLsn"], slot["registeredLsn"], slot["state"], slot["lagLsn"]) == (1, 1, "active", 0)
        assert await cs.register("shadow") == slot  # idempotent
        await put(s, url, "t", "a", b"alpha")
        await put(s, url, "u", "b", b"bravo")
        await s.delete(f"{url}/v1/tables/t/blocks/a")
        page = await cs.changes(slot["ackedLsn"])
        assert [(c.lsn, c.op, c.table, c.key) for c in page.changes] == [(2, "put", "t", "a"), (3, "put", "u", "b"),
                                                                          (4, "delete", "t", "a")]
        ring = node.keys.keyring
        assert ring is not None
        opened = [open_block(ring, c.table, c.key, c.frame, c.checksum) for c in page.changes[:2]]
        assert opened == [b"alpha", b"bravo"]
        assert page.changes[2].frame is None and page.changes[2].checksum is None
        assert (page.next, page.last_lsn, page.first_lsn, page.gap) == (4, 4, 1, False)
        # the entry from before registration has no frame, and the slot cannot start before it
        with pytest.raises(ChangeStreamError) as err:
            await cs.register("late", start_lsn=0)
        assert err.value.status == 409 and err.value.body["earliestLsn"] == 1
        only_u = await cs.changes(1, tables=["u"])
        assert [c.key for c in only_u.changes] == ["b"] and only_u.next == 4
        listed = await cs.consumers()
        assert listed["lastLsn"] == 4 and listed["consumers"][0]["lagLsn"] == 3
        assert listed["consumers"][0]["lagSeconds"] > 0
        await cs.ack("shadow", 4)
        assert (await cs.consumer("shadow"))["lagLsn"] == 0
        with pytest.raises(ChangeStreamError) as err:
            await cs.ack("shadow", 5)
        assert err.value.status == 400 and err.value.body["error"] == "invalid_lsn"
        with pytest.raises(ChangeStreamError) as err:
            await cs.ack("nobody", 1)
        assert err.value.status == 404
        metrics = await (await s.get(f"{url}/metrics")).text()
        assert 'chronoshard_node_consumer_lag_lsn{consumer="shadow"} 0.0' in metrics
        assert 'chronoshard_node_consumer_behind{consumer="shadow"} 0.0' in metrics
        status = await (await s.get(f"{url}/v1/status")).json()
        assert [c["name"] for c in status["consumers"]] == ["shadow"] and status["changeLog"]["framesFrom"] == 2
        await cs.unregister("shadow")
        await put(s, url, "t", "after", b"no consumer: no frame")
        page = await cs.changes(4)
        assert page.changes[0].frame is None
        assert "consumer_lag_lsn{" not in await (await s.get(f"{url}/metrics")).text()


async def test_long_poll_returns_on_a_commit(tmp_path):
    async with running_node(tmp_path) as (cs, _, url, s):
        await cs.register("c")
        waiter = asyncio.create_task(cs.changes(0, wait=10))
        await put(s, url, "t", "k", b"v")
        page = await asyncio.wait_for(waiter, 10)
        assert [c.key for c in page.changes] == ["k"] and page.changes[0].frame is not None


async def test_trim_keeps_what_active_slots_have_not_acked(tmp_path):
    async with running_node(tmp_path, change_log_retain=2) as (cs, node, url, s):
        await cs.register("a")
        await cs.register("b")
        for i in range(10):
            await put(s, url, "t", f"k{i}", b"v")
        assert await node.trim() == 0
        assert (await cs.changes(0)).first_lsn == 1
        await cs.ack("a", 6)
        assert await node.trim() == 0  # b still holds everything
        await cs.ack("b", 9)
        assert await node.trim() == 6  # min ack is 6
        page = await cs.changes(6)
        assert page.first_lsn == 7 and not page.gap
        await cs.unregister("a")
        await cs.unregister("b")
        assert await node.trim() == 2  # back to changeLogRetain
        assert (await cs.changes(8)).first_lsn == 9


async def test_a_bound_puts_the_slot_behind_and_it_reseeds(tmp_path):
    async with running_node(tmp_path, change_log_max_retain=3) as (cs, node, url, s):
        await cs.register("shadow")
        for i in range(6):
            await put(s, url, "t", f"k{i}", f"v{i}".encode())
        assert await node.trim() == 3
        slot = await cs.consumer("shadow")
        assert slot["state"] == "behind"
        assert (await cs.changes(0)).gap
        assert (await cs.changes(5, consumer="shadow")).gap  # behind: gap even past the trimmed part
        metrics = await (await s.get(f"{url}/metrics")).text()
        assert 'chronoshard_node_consumer_behind{consumer="shadow"} 1.0' in metrics
        # acks of a behind slot are taken, but it stays behind until re-registered
        await cs.ack("shadow", 6)
        assert (await cs.consumer("shadow"))["state"] == "behind"
        items = [i async for i in cs.snapshot()]
        start = items[0]
        assert start == 6 and {b.key for b in items[1:] if isinstance(b, SnapshotBlock)} == {f"k{i}" for i in range(6)}
        slot = await cs.register("shadow", start_lsn=start, reset=True)
        assert slot["state"] == "active" and slot["ackedLsn"] == 6
        await put(s, url, "t", "k9", b"new")
        page = await cs.changes(start, consumer="shadow")
        assert not page.gap and [c.key for c in page.changes] == ["k9"]


async def test_the_byte_bound_trims_by_frame_bytes(tmp_path):
    async with running_node(tmp_path, change_log_max_retain_bytes=3 * 100) as (cs, node, url, s):
        await cs.register("c")
        for i in range(10):
            await put(s, url, "t", f"k{i}", b"x" * 65)  # frames of 100 bytes: 65 + 35 (header, nonce, tag)
        status = await (await s.get(f"{url}/v1/status")).json()
        assert status["changeLog"]["frameBytes"] == 1000
        assert await node.trim() == 7
        status = await (await s.get(f"{url}/v1/status")).json()
        assert status["changeLog"]["frameBytes"] == 300 and status["consumers"][0]["state"] == "behind"


async def test_slots_and_acks_survive_a_restart(tmp_path):
    async with running_node(tmp_path) as (cs, _, url, s):
        await put(s, url, "t", "a", b"1")
        await cs.register("shadow")
        await put(s, url, "t", "b", b"2")
        await put(s, url, "t", "c", b"3")
        await cs.ack("shadow", 2)
    async with running_node(tmp_path) as (cs, node, url, s):
        slot = await cs.consumer("shadow")
        assert (slot["ackedLsn"], slot["registeredLsn"], slot["state"]) == (2, 1, "active")
        assert node.db.frames_enabled
        await put(s, url, "t", "d", b"4")
        page = await cs.changes(2)
        assert [c.key for c in page.changes] == ["c", "d"] and all(c.frame for c in page.changes)


async def test_conditional_put_and_delete(tmp_path):
    async with running_node(tmp_path) as (cs, _, url, s):
        first = await cs.put_if("t", "k", b"one", 0)
        assert first == 1
        assert await cs.put_if("t", "k", b"clobber", 0) is None  # must not exist: it does
        r = await s.put(f"{url}/v1/tables/t/blocks/k", data=b"x", headers={"X-Chronoshard-If-Lsn": "7"})
        assert r.status == 412 and await r.json() == {"error": "precondition_failed", "currentLsn": 1,
                                                     "message": "block is at LSN 1, not 7; nothing was written"}
        assert await (await s.get(f"{url}/v1/tables/t/blocks/k")).read() == b"one"
        second = await cs.put_if("t", "k", b"two", first)
        assert second == 2
        assert await cs.delete_if("t", "k", first) is None
        assert await cs.delete_if("t", "k", second) == 3
        assert (await s.get(f"{url}/v1/tables/t/blocks/k")).status == 404
        assert await cs.put_if("t", "k", b"again", 0) == 4  # absent again: 0 matches
        assert (await cs.changes(0)).last_lsn == 4  # the refused writes logged nothing


async def test_concurrent_conditional_writes_exactly_one_wins(tmp_path):
    async with running_node(tmp_path) as (cs, _, url, s):
        base = await cs.put_if("t", "k", b"base", 0)
        results = await asyncio.gather(*(cs.put_if("t", "k", f"w{i}".encode(), base) for i in range(20)))
        winners = [i for i, r in enumerate(results) if r is not None]
        assert len(winners) == 1
        assert await (await s.get(f"{url}/v1/tables/t/blocks/k")).read() == f"w{winners[0]}".encode()


async def test_snapshot_is_consistent_and_filtered(tmp_path):
    async with running_node(tmp_path) as (cs, _, url, s):
        for t in ("a", "b"):
            for i in range(3):
                await put(s, url, t, f"k{i}", f"{t}{i}".encode())
        await put(s, url, "a", "k0", b"again")
        items = [i async for i in cs.snapshot()]
        assert items[0] == 7
        blocks = items[1:]
        assert [(b.table, b.key) for b in blocks] == [(t, f"k{i}") for t in ("a", "b") for i in range(3)]
        assert max(b.lsn for b in blocks) == 7 and blocks[0].lsn == 7
        only_b = [i async for i in cs.snapshot(tables=["b"])]
        assert [b.key for b in only_b[1:]] == ["k0", "k1", "k2"]


async def _cut_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    await resp.write(b'{"lsn": 3}\n{"table": "t", "key": "k", "keyVersion": 1, "size": 1, "checksum": "AA==", '
                     b'"frame": "AA==", "lsn": 3}\n')
    if request.query.get("tables") == "miscount":
        await resp.write(b'{"end": true, "blocks": 2}\n')
    return resp


@pytest.mark.parametrize("variant", [None, "miscount"])
async def test_snapshot_without_a_valid_end_line_raises(variant):
    app = web.Application()
    app.router.add_get("/v1/snapshot", _cut_stream)
    async with serve(app) as url, aiohttp.ClientSession() as s:
        seen = []
        with pytest.raises(ChangeStreamError) as err:
            async for item in ChangeStreamClient(url, s).snapshot(tables=[variant] if variant else None):
                seen.append(item)
        assert err.value.body["error"] == "snapshot_incomplete" and seen[0] == 3


async def test_unreachable_node_is_a_503_error():
    async with aiohttp.ClientSession() as s:
        with pytest.raises(ChangeStreamError) as err:
            await ChangeStreamClient("http://127.0.0.1:9", s, timeout=2).consumers()
        assert err.value.status == 503 and err.value.body["error"] == "node_unavailable"


async def test_trim_loop_runs_the_slot_aware_trim(tmp_path):
    async with running_node(tmp_path, change_log_retain=1, trim_interval_seconds=0.05) as (cs, _, url, s):
        await cs.register("c")
        for i in range(5):
            await put(s, url, "t", f"k{i}", b"v")
        await cs.ack("c", 3)

        async def trimmed() -> bool:
            return (await cs.changes(0)).first_lsn == 4
        await wait_for_async(trimmed, what="the trim loop to trim up to the ack")
        assert (await cs.consumer("c"))["state"] == "active"
