"""The capture loop against a real node: seed on first start, tail with frames, exactly once across restarts,
the tables filter, back-off while the node is away, re-seed after the slot fell behind."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from chronoshard.shardnode.keys.keyring import KeyringWatcher
from chronoshard.shardnode.node.server import NodeConfig
from chronoshard.shardnode.node.server import create_app as create_node
from chronoshard.shardnode.serving.changestream import ChangeStreamClient
from chronoshard.shardnode.serving.http_common import SERVER_LIMITS
from chronoshard.shardnode.shadow.capture import Capture, lag_seconds
from chronoshard.shardnode.shadow.codec import Compressor
from chronoshard.shardnode.shadow.history import HistoryStore
from chronoshard.shardnode.shadow.metrics import ShadowMetrics

from tests.support.servers import keyring_dir, serve
from tests.support.shadow import shadow_config
from tests.support.waiting import wait_for_async


class Rig:
    """A node, a history on a real file and capture loops started and stopped at will (a stopped loop is a
    crashed process: nothing of it survives but the history file and the node's slot)."""

    def __init__(self, tmp: Path, node_url: str, settings: dict | None = None) -> None:
        self.tmp, self.node_url = tmp, node_url
        self.kdir = tmp / "keyring"
        self.keys = KeyringWatcher(self.kdir)
        self.keys.poll()
        self.cfg = shadow_config(tmp, node_url, self.kdir, settings)
        self.session = aiohttp.ClientSession()
        self.metrics = ShadowMetrics()
        self.history: HistoryStore | None = None
        self.capture: Capture | None = None
        self.task: asyncio.Task | None = None

    async def start(self) -> Capture:
        self.cfg.data_dir.mkdir(exist_ok=True)
        self.history = HistoryStore(self.cfg.data_dir, lambda: self.keys.keyring, Compressor())
        stream = ChangeStreamClient(self.node_url, self.session)
        self.capture = Capture(self.cfg, self.history, stream, self.metrics)
        self.task = asyncio.create_task(self.capture.run())
        return self.capture

    async def crash(self) -> None:
        assert self.task is not None and self.history is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.history.close()

    async def put(self, table: str, key: str, value: bytes) -> int:
        async with self.session.put(f"{self.node_url}/v1/tables/{table}/blocks/{key}", data=value) as r:
            assert r.status == 200
            return int((await r.json())["lsn"])

    async def node_json(self, path: str) -> dict:
        async with self.session.get(self.node_url + path) as r:
            return await r.json()

    async def caught_up(self) -> bool:
        last = (await self.node_json("/v1/changes?after=0&limit=1"))["lastLsn"]
        return self.capture is not None and self.capture.state == "running" and self.capture.position >= last


@contextlib.asynccontextmanager
async def rig(tmp: Path, settings: dict | None = None, node_settings: dict | None = None) -> AsyncIterator[Rig]:
    ncfg = NodeConfig(data_dir=tmp / "data", keyring_dir=keyring_dir(tmp), keyring_poll_seconds=0.05)
    ncfg.apply(node_settings or {})
    async with serve(create_node(ncfg)) as url:
        r = Rig(tmp, url, settings)
        try:
            yield r
        finally:
            if r.task is not None and not r.task.done():
                await r.crash()
            await r.session.close()


async def test_seed_then_tail_then_resume_after_a_crash_exactly_once(tmp_path):
    async with rig(tmp_path) as r:
        before = [await r.put("t", f"s{i}", b"seeded %d" % i) for i in range(3)]
        cap = await r.start()
        await wait_for_async(r.caught_up, what="the first seed and tail")
        assert cap.seeds == 1 and r.metrics.seeds.labels("first")._value.get() == 1
        v = r.history.value_at("t", "s1")
        assert v is not None and (v.lsn, v.op, v.value) == (before[1], "seed", b"seeded 1")
        tailed = [await r.put("t", "k", b"v%d" % i) for i in range(5)]
        await wait_for_async(r.caught_up, what="the tail")
        slot = await r.node_json("/v1/consumers/shadow")
        assert slot["ackedLsn"] == tailed[-1] == cap.position  # acknowledged only what is applied
        await r.crash()
        more = [await r.put("t", "k", b"after %d" % i) for i in range(3)]
        cap = await r.start()
        await wait_for_async(r.caught_up, what="the restarted capture")
        assert cap.seeds == 0  # resumed from the cursor, no re-seed
        versions = r.history.history("t", "k")
        assert [x.lsn for x in versions] == tailed + more  # each change once, in LSN order
        assert [x.value for x in versions] == [b"v%d" % i for i in range(5)] + [b"after %d" % i for i in range(3)]
        assert cap.status()["lagLsn"] == 0 and cap.status()["lagSeconds"] == 0


async def test_tables_filter_captures_only_those_and_still_moves_the_cursor(tmp_path):
    async with rig(tmp_path, {"tables": ["t"]}) as r:
        cap = await r.start()
        await wait_for_async(lambda: cap.seeds == 1, what="the seed")
        await r.put("t", "a", b"1")
        last = await r.put("other", "b", b"2")
        await wait_for_async(lambda: cap.position >= last, what="the cursor past the other table's change")
        assert r.history.tables() == ["t"] and r.history.cursor() == last
        assert cap.status()["tables"] == ["t"]


async def test_backs_off_while_the_node_is_away_and_resumes(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}"
    ncfg = NodeConfig(data_dir=tmp_path / "data", keyring_dir=keyring_dir(tmp_path), keyring_poll_seconds=0.05)
    r = Rig(tmp_path, url)
    try:
        cap = await r.start()
        await wait_for_async(lambda: r.metrics.node_errors._value.get() >= 2, what="failed calls while away")
        assert cap.state == "error" and "503" in (cap.error or "")
        runner = web.AppRunner(create_node(ncfg), access_log=None, **SERVER_LIMITS)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            lsn = await r.put("t", "k", b"v")
            await wait_for_async(lambda: cap.position >= lsn, what="the capture after the node came up")
            assert cap.state == "running" and cap.error is None
        finally:
            await r.crash()
            await runner.cleanup()
    finally:
        await r.session.close()


async def test_a_slot_that_fell_behind_re_seeds_and_records_the_gap(tmp_path):
    node_settings = {"changeLogRetain": 2, "changeLogMaxRetain": 4, "trimIntervalSeconds": 0.05}
    async with rig(tmp_path, node_settings=node_settings) as r:
        cap = await r.start()
        await r.put("t", "gone", b"x")
        await r.put("t", "kept", b"old")
        await wait_for_async(r.caught_up, what="the first changes")
        await r.crash()
        async with r.session.delete(f"{r.node_url}/v1/tables/t/blocks/gone") as resp:
            assert resp.status == 200
        for i in range(12):
            await r.put("t", "kept", b"new %d" % i)
        await wait_for_async(lambda: r.node_json("/v1/consumers/shadow"), what="the slot")
        await wait_for_async(lambda: _behind(r), what="the node to trim past the slot")
        cap = await r.start()
        await wait_for_async(r.caught_up, what="the re-seeded capture")
        assert cap.gaps == 1 and cap.seeds == 1
        assert r.history.value_at("t", "gone") is None  # deleted during the gap: a delete at the seed
        assert r.history.value_at("t", "kept").value == b"new 11"
        point = r.history.resolve(lsn=cap.position - 3)
        assert point.exact is False  # inside the gap the history does not know the node's state


async def _behind(r: Rig) -> bool:
    return (await r.node_json("/v1/consumers/shadow"))["state"] == "behind"


@pytest.mark.parametrize("applied, lag, now, expected", [(None, 5, 10.0, 0.0), (4.0, 0, 10.0, 0.0),
                                                         (4.0, 3, 10.0, 6.0)])
def test_lag_seconds(applied, lag, now, expected):
    assert lag_seconds(applied, lag, now) == expected


async def test_adding_a_table_re_seeds_so_its_existing_keys_are_there(tmp_path):
    async with rig(tmp_path, {"tables": ["t"]}) as r:
        await r.put("u", "before", b"in u before it was captured")
        cap = await r.start()
        await wait_for_async(r.caught_up, what="the first seed")
        assert r.history.tables() == []
        (tmp_path / "shadow.json").write_text('{"tables": ["t", "u"]}')
        r.cfg.apply({"tables": ["t", "u"]})  # what the settings watcher does when the ConfigMap changes
        await wait_for_async(lambda: cap.seeds == 2, what="the re-seed for the added table")
        await wait_for_async(r.caught_up, what="the tail after it")
        assert r.history.value_at("u", "before").value == b"in u before it was captured"
        assert cap.status()["tables"] == ["t", "u"]
