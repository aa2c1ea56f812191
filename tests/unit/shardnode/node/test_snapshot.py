"""The seeding snapshot: one read transaction (a write committed meanwhile is not in it, S matches the blocks),
streamed in chunks from a reader thread while the node keeps serving."""

import asyncio
import json
import threading

import aiohttp
from chronoshard.shardnode.node import snapshot
from chronoshard.shardnode.node.server import NODE, NodeConfig, create_app
from chronoshard.shardnode.node.store import connect
from chronoshard.shardnode.serving.changestream import ChangeStreamClient, SnapshotBlock

from tests.support.servers import keyring_dir, serve
from tests.support.stores import open_store, ring
from tests.support.waiting import wait_for_async


async def test_lines_come_from_one_transaction(tmp_path):
    s, _ = open_store(tmp_path, ring(1, (1,)))
    try:
        for i in range(5):
            await s.put("t", f"k{i}", b"old")
        conn = connect(s.path)
        lines = snapshot.snapshot_lines(conn, None)
        head = json.loads(next(lines))  # the transaction's snapshot is fixed here
        await s.put("t", "k4", b"overwritten meanwhile")
        await s.put("t", "k5", b"created meanwhile")
        await s.delete("t", "k0")
        rest = [json.loads(line) for line in lines]
        conn.close()
    finally:
        s.close()
    assert head == {"lsn": 5}
    blocks, end = rest[:-1], rest[-1]
    assert [b["key"] for b in blocks] == [f"k{i}" for i in range(5)] and [b["lsn"] for b in blocks] == [1, 2, 3, 4, 5]
    assert end == {"end": True, "blocks": 5}


async def test_a_write_during_the_http_stream_is_not_in_it(tmp_path):
    app = create_app(NodeConfig(data_dir=tmp_path / "data", keyring_dir=keyring_dir(tmp_path)))
    async with serve(app) as url, aiohttp.ClientSession() as session:
        node = app[NODE]
        # ~17 MB of NDJSON: far more than the queue (2 MiB) and the socket buffers hold, so the reader thread is
        # still inside its transaction, short of the last keys, when the writes below commit.
        value = b"v" * 16384
        await asyncio.gather(*(node.db.put("t", f"k{i:04}", value) for i in range(800)))
        cs = ChangeStreamClient(url, session)
        stream = cs.snapshot()
        s_lsn = await anext(stream)
        first = await anext(stream)
        late = await node.db.put("t", "k0799", b"overwritten during the stream")
        new = await node.db.put("t", "zzz", b"created during the stream")
        assert any(t.name == "snapshot-reader" for t in threading.enumerate())  # the stream is still being read
        blocks = [first, *[b async for b in stream]]
        assert s_lsn == 800 and late.lsn == 801 and new.lsn == 802
        assert all(isinstance(b, SnapshotBlock) for b in blocks)
        assert len(blocks) == 800 and blocks[-1].key == "k0799" and blocks[-1].size == 16384
        assert max(b.lsn for b in blocks if isinstance(b, SnapshotBlock)) == s_lsn
        # meanwhile the node answered ordinary reads (the stream holds a thread of its own, not the loop)
        r = await session.get(f"{url}/v1/tables/t/blocks/zzz")
        assert await r.read() == b"created during the stream"


async def test_a_client_that_hangs_up_ends_the_reader(tmp_path):
    app = create_app(NodeConfig(data_dir=tmp_path / "data", keyring_dir=keyring_dir(tmp_path)))
    async with serve(app) as url:
        node = app[NODE]
        await asyncio.gather(*(node.db.put("t", f"k{i:04}", b"v" * 16384) for i in range(400)))
        async with aiohttp.ClientSession() as session:
            resp = await session.get(f"{url}/v1/snapshot")
            assert json.loads(await resp.content.readline()) == {"lsn": 400}
            resp.close()  # hang up mid-stream

        def reader_gone() -> bool:
            return not any(t.name == "snapshot-reader" for t in threading.enumerate())
        await wait_for_async(reader_gone, what="the snapshot reader thread to end")
        # its read transaction is over: a checkpoint can now copy the whole WAL back
        conn = connect(node.db.path)
        busy, log_frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        conn.close()
        assert busy == 0 and log_frames == done
