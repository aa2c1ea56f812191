"""`GET /v1/changes?keyspace=` (a move's catch-up, docs/resharding.md): only the changes of keys in the ranges, at
most ``limit`` entries looked at, ``next`` past the ones left out (so the move's slot can be acked), the frame budget
still applied; read_page on a real store, and the parameter through the real handler and the stream client."""

from __future__ import annotations

import time

import aiohttp
from chronoshard.shardnode.keyspace.partitioning import keyspace_id
from chronoshard.shardnode.node import consumers
from chronoshard.shardnode.node.server import NodeConfig, create_app
from chronoshard.shardnode.node.store import connect, put_in_txn
from chronoshard.shardnode.node.stream_api import read_page
from chronoshard.shardnode.serving.changestream import ChangeStreamClient

from tests.support.servers import keyring_dir, serve
from tests.support.stores import open_store, ring

HALF = 1 << 63
UPPER = ((HALF, (1 << 64) - 1),)


def upper(key: str) -> bool:
    return keyspace_id("t", key) >= HALF


def test_read_page_filters_by_keyspace(tmp_path):
    store, _ = open_store(tmp_path, ring(1, (1,)))
    try:
        store.submit(lambda c: consumers.register(c, "m", None, False, time.time())).result()
        keys = [f"k{i}" for i in range(40)]
        lsns = {k: store.submit(lambda c, k=k: put_in_txn(c, store.current_keyring(), "t", k, b"v" * 100,
                                                           frames=True)).result().lsn for k in keys}
        inside = [k for k in keys if upper(k)]
        assert 5 < len(inside) < 35
        conn = connect(store.path)
        try:
            page = read_page(conn, 0, 1000, None, True, 1 << 20, None, UPPER)
            assert [e.key for e in page.entries] == inside and all(e.frame for e in page.entries)
            assert page.next == page.last == 40 and not page.gap  # past the keys left out, to the end
            # At most `limit` entries looked at: `next` is the last one looked at, in the range or not.
            page = read_page(conn, 0, 10, None, False, 1 << 20, None, UPPER)
            assert [e.key for e in page.entries] == [k for k in keys[:10] if upper(k)] and page.next == 10
            # Paging on from `next` sees every change of the range exactly once.
            seen, after = [], 0
            while after < 40:
                page = read_page(conn, after, 7, None, False, 1 << 20, None, UPPER)
                seen += [e.key for e in page.entries]
                assert page.next > after
                after = page.next
            assert seen == inside
            # The frame budget still cuts a page (after at least one entry), at the last entry kept.
            page = read_page(conn, 0, 1000, None, True, 1, None, UPPER)
            assert len(page.entries) == 1 and page.next == lsns[inside[0]]
            # Nothing in the ranges: an empty page that still moves `next` to the end.
            empty = read_page(conn, 0, 1000, None, False, 1 << 20, None, ((0, 0),))
            assert empty.entries == [] and empty.next == 40
        finally:
            conn.close()
    finally:
        store.close()


async def test_the_handler_and_the_client_pass_it(tmp_path):
    kdir = keyring_dir(tmp_path)
    async with serve(create_app(NodeConfig(data_dir=tmp_path / "data", keyring_dir=kdir))) as url, \
            aiohttp.ClientSession() as session:
        client = ChangeStreamClient(url, session)
        await client.register("m")
        keys = [f"k{i}" for i in range(20)]
        for k in keys:
            async with session.put(f"{url}/v1/tables/t/blocks/{k}", data=b"v") as r:
                assert r.status == 200
        page = await client.changes(0, keyspace=list(UPPER), consumer="m")
        assert [c.key for c in page.changes] == [k for k in keys if upper(k)] and page.next == 20
        assert all(c.frame is not None for c in page.changes)
        async with session.get(f"{url}/v1/changes", params={"keyspace": "zz"}) as r:
            assert r.status == 400
