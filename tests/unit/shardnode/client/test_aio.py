"""AsyncClient against real shard nodes served in-process on 127.0.0.1 (tests/support/shard_cluster.py)."""

from __future__ import annotations

import asyncio

import pytest
from chronoshard.shardnode.client import (
    AsyncClient,
    Client,
    FileMap,
    FirstOf,
    MapUnavailable,
    Misdirected,
    NodeMap,
    NotFound,
    RequestRejected,
    ScanUnsupported,
    StaticMap,
    Unavailable,
    block_path,
)
from chronoshard.shardnode.client.aio import raise_for
from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap, initial_map
from chronoshard.shardnode.serving.routing import PartitionMapSource

from tests.support.shard_cluster import ShardCluster, silent_endpoints

M3 = initial_map(3)


def holders(cluster: ShardCluster, table: str, key: str) -> list[int]:
    return cluster.holders(table, key)


def test_raise_for_maps_statuses_to_exceptions():
    raise_for(200, b"", "u", "t", "k")
    with pytest.raises(NotFound):
        raise_for(404, b'{"error":"not_found"}', "u", "t", "k")
    with pytest.raises(Misdirected) as mis:
        raise_for(421, b'{"error":"misdirected","message":"m","owner":2,"epoch":4}', "u", "t", "k")
    assert (mis.value.owner, mis.value.epoch) == (2, 4)
    with pytest.raises(RequestRejected) as rej:
        raise_for(400, b'{"error":"bad_request","message":"table name"}', "u", "t", "k")
    assert rej.value.status == 400 and "table name" in str(rej.value)
    with pytest.raises(Unavailable):
        raise_for(503, b"not json", "u", "t", "k")


def test_block_path_encodes_whole_key():
    assert block_path("t", "a/b c") == "/v1/tables/t/blocks/a%2Fb%20c"


async def test_routes_every_key_to_its_owner_and_reads_back():
    async with ShardCluster([M3] * 3) as cl, AsyncClient(StaticMap(M3), cl.urls) as c:
        # The node refuses "/" in a key (one path segment), so these exercise the encoding of the rest.
        keys = [f"key-{i}" for i in range(300)] + ["per%2Fcent", "q?uery#frag", "sp ace", "ünï"]
        await asyncio.gather(*(c.put("t", k, k.encode() * 3) for k in keys))
        for k in keys:
            assert holders(cl, "t", k) == [M3.shard_of("t", k)]
        got = await asyncio.gather(*(c.get("t", k) for k in keys))
        assert got == [k.encode() * 3 for k in keys]
        assert c.map_refreshes == 1  # 300 concurrent first requests fetched the map once
        # Direct routing: nothing was forwarded, so each server saw only its own keys.
        assert cl.block_requests() == 2 * len(keys)
        with pytest.raises(RequestRejected, match="invalid_key"):
            await c.put("t", "with/slash", b"x")


async def test_stale_map_corrected_on_first_refusal(tmp_path):
    # Epoch 2 swapped shard 0's and shard 1's ranges; the client starts from the epoch-1 file.
    new = PartitionMap(2, 3, tuple(Partition(p.id, p.start, p.end, {0: 1, 1: 0}.get(p.shard, p.shard))
                                   for p in M3.partitions))
    path = tmp_path / "map.json"
    path.write_text(M3.to_json())
    async with ShardCluster([new] * 3) as cl, AsyncClient(FileMap(path), cl.urls) as c:
        assert (await c.partition_map()).epoch == 1
        path.write_text(new.to_json())  # the operator published the new map
        k = next(f"k{i}" for i in range(1000) if M3.shard_of("t", f"k{i}") == 0)
        await c.put("t", k, b"v")
        assert holders(cl, "t", k) == [1]
        assert (await c.partition_map()).epoch == 2 and c.map_refreshes == 2
        # The next keys go straight to their owners with no further refreshes.
        for i in range(50):
            await c.put("t", f"again-{i}", b"x")
        assert c.map_refreshes == 2


async def test_lagging_map_source_trusts_the_refusing_shard_once():
    new = PartitionMap(2, 3, tuple(Partition(p.id, p.start, p.end, (p.shard + 1) % 3) for p in M3.partitions))
    async with ShardCluster([new] * 3) as cl, AsyncClient(StaticMap(M3), cl.urls) as c:
        await c.put("t", "abc", b"v")
        assert holders(cl, "t", "abc") == [new.shard_of("t", "abc")]
        assert await c.get("t", "abc") == b"v"


async def test_persistent_refusal_raises_misdirected():
    # Shards 0 and 1 each believe the other owns everything (same epoch): the client gives up after one retry.
    to1 = PartitionMap(1, 2, (Partition(0, 0, 2**64 - 1, 1),))
    to0 = PartitionMap(1, 2, (Partition(0, 0, 2**64 - 1, 0),))
    async with ShardCluster([to1, to0], forwarding=False) as cl, AsyncClient(StaticMap(to0), cl.urls) as c:
        with pytest.raises(Misdirected) as err:
            await c.put("t", "k", b"v")
        assert err.value.owner in (0, 1)
        assert holders(cl, "t", "k") == []


async def test_node_map_discovery_picks_newest_epoch():
    newer = PartitionMap(3, 3, M3.partitions)
    async with ShardCluster([M3, newer, M3]) as cl:
        assert (await NodeMap(cl.urls).fetch()).epoch == 3
        assert (await NodeMap(["http://127.0.0.1:1", cl.urls[0]]).fetch()).epoch == 1
    with pytest.raises(MapUnavailable, match="no node served"):
        await NodeMap(["http://127.0.0.1:1"], timeout=2).fetch()


async def test_first_of_falls_back(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(M3.to_json())
    m = await FirstOf(NodeMap(["http://127.0.0.1:1"], timeout=2), FileMap(path)).fetch()
    assert m == M3
    with pytest.raises(MapUnavailable, match="partition map file"):
        await FirstOf(FileMap(tmp_path / "nope.json")).fetch()


async def test_via_service_lets_the_cache_forward():
    async with ShardCluster([M3] * 3) as cl:
        c = AsyncClient.via_service(cl.urls[0])
        try:
            for i in range(60):
                await c.put("t", f"k{i}", f"v{i}".encode())
            for i in range(60):
                assert holders(cl, "t", f"k{i}") == [M3.shard_of("t", f"k{i}")]
                assert await c.get("t", f"k{i}") == f"v{i}".encode()
            assert {M3.shard_of("t", f"k{i}") for i in range(60)} == {0, 1, 2}
            with pytest.raises(ScanUnsupported, match="endpoints"):
                [b async for b in c.scan("t")]
        finally:
            await c.close()


async def test_delete_batch_get_and_scan():
    async with ShardCluster([M3] * 3) as cl, AsyncClient(M3, cl.urls) as c:
        keys = [f"u{i:03d}" for i in range(40)] + [f"w{i}" for i in range(5)]
        for k in keys:
            await c.put("t", k, k.encode())
        await c.put("other", "u000", b"other table")
        got = await c.batch_get("t", ["u001", "u002", "missing", "u001"])
        assert got == {"u001": b"u001", "u002": b"u002", "missing": None}

        infos = [b async for b in c.scan("t", page=7)]
        assert [b.key for b in infos] == sorted(keys)  # merged across shards, in key order
        assert {b.shard for b in infos} == {0, 1, 2}
        assert all(b.shard == M3.shard_of("t", b.key) and b.size == len(b.key) for b in infos)
        assert [b.key async for b in c.scan("t", prefix="w")] == [f"w{i}" for i in range(5)]
        assert len([b async for b in c.scan("t", limit=10)]) == 10

        assert await c.delete("t", "u001") is True
        with pytest.raises(NotFound):
            await c.get("t", "u001")
        with pytest.raises(NotFound):
            await c.delete("t", "u001")
        assert await c.delete("t", "u001", missing_ok=True) is False
        with pytest.raises(TypeError):
            await c.put("t", "x", "not bytes")  # type: ignore[arg-type]


async def test_timeouts_and_unreachable_shards_raise_unavailable():
    # A real node answers at once; shards that accept the request and never answer stand in for hung ones.
    async with silent_endpoints(3) as urls, AsyncClient(M3, urls, timeout=0.3) as c:
        with pytest.raises(Unavailable, match="no answer within 0.3 s"):
            await c.get("t", "slow")
    async with AsyncClient(M3, ["http://127.0.0.1:1"] * 3, timeout=2, restart_wait=0.5) as c:
        with pytest.raises(Unavailable):
            await c.put("t", "k", b"v")
    async with AsyncClient(M3, ["http://127.0.0.1:1"]) as c:  # fewer endpoints than shards
        key = next(f"k{i}" for i in range(100) if M3.shard_of("t", f"k{i}") == 2)
        with pytest.raises(Unavailable, match="no endpoint configured"):
            await c.get("t", key)


async def test_sync_client_in_a_thread():
    async with ShardCluster([M3] * 3) as cl:

        def work() -> tuple:
            with Client(M3, cl.urls) as c:
                for i in range(30):
                    c.put("t", f"s{i}", b"%d" % i)
                one = c.get("t", "s7")
                batch = c.batch_get("t", ["s1", "nope"])
                keys = [b.key for b in c.scan("t")]
                existed = c.delete("t", "s1")
                try:
                    c.get("t", "s1")
                    missing = False
                except NotFound:
                    missing = True
            with Client(None, service_url=cl.urls[1]) as svc:
                via = svc.get("t", "s7")
            return one, batch, keys, existed, missing, via

        one, batch, keys, existed, missing, via = await asyncio.to_thread(work)
        assert one == b"7" and via == b"7"
        assert batch == {"s1": b"1", "nope": None}
        assert keys == sorted(f"s{i}" for i in range(30))
        assert existed and missing


async def test_batch_get_uses_one_request_per_shard_and_recovers_refused_keys(tmp_path):
    async with ShardCluster([M3] * 3) as cl, AsyncClient(M3, cl.urls) as c:
        keys = [f"b{i}" for i in range(90)]
        for k in keys:
            await c.put("t", k, k.encode())
        before = cl.block_requests()
        got = await c.batch_get("t", keys + ["absent"])
        assert got == {k: k.encode() for k in keys} | {"absent": None}
        assert cl.block_requests() - before == 3

    # The shards moved everything of shard 0 to shard 1 (epoch 2); the client still has epoch 1.
    new = PartitionMap(2, 3, tuple(Partition(p.id, p.start, p.end, 1 if p.shard == 0 else p.shard)
                                   for p in M3.partitions))
    path = tmp_path / "map.json"
    path.write_text(M3.to_json())
    async with ShardCluster([new] * 3) as cl, AsyncClient(FileMap(path), cl.urls) as c:
        await c.partition_map()
        path.write_text(new.to_json())
        for i in range(30):
            await cl.put_on(new.shard_of("t", f"b{i}"), "t", f"b{i}", b"x%d" % i)
        got = await c.batch_get("t", [f"b{i}" for i in range(30)])
        assert got == {f"b{i}": b"x%d" % i for i in range(30)}
        assert (await c.partition_map()).epoch == 2


async def test_prefix_scan_edges():
    async with ShardCluster([M3] * 3) as cl, AsyncClient(M3, cl.urls) as c:
        # The node refuses control characters in keys, so " " (the smallest it accepts) takes the place of
        # "\x00" in stored keys; the "\x00" prefixes still exercise the client's lower-bound edge.
        keys = ["a", "ab", "abc", "abd", "ac", "b", "aa\U0010ffff", "ab ", " x"]
        for k in keys:
            await c.put("t", k, b"1")
        for prefix in ["a", "ab", "abc", "b", "zz", "\x00", "ab\x00", " ", "ab "]:
            got = [b.key async for b in c.scan("t", prefix=prefix, page=2)]
            assert got == sorted(k for k in keys if k.startswith(prefix)), prefix


async def test_shard_lagging_behind_the_client_map_gets_time_to_reload(tmp_path):
    # Epoch 2 only renumbers the epoch; the shards still run epoch 1 from their mounted file.
    new = PartitionMap(2, 3, M3.partitions)
    path = tmp_path / "map.json"
    path.write_text(M3.to_json())
    sources = [PartitionMapSource(path, min_interval=0) for _ in range(3)]
    async with ShardCluster(sources) as cl, AsyncClient(new, cl.urls, lagging_shard_wait=0.5) as c:

        async def publish_later() -> None:
            await asyncio.sleep(0.2)
            path.write_text(new.to_json())

        task = asyncio.create_task(publish_later())
        await c.put("t", "k", b"v")  # refused under epoch 1, retried after the shard reloaded
        await task
        assert holders(cl, "t", "k") == [M3.shard_of("t", "k")]

    async with ShardCluster([M3] * 3) as cl, AsyncClient(new, cl.urls, lagging_shard_wait=0.1) as c:
        with pytest.raises(Misdirected, match="epoch 1"):
            await c.put("t", "k", b"v")  # the shard never reloads: a clear error, nothing stored
        assert holders(cl, "t", "k") == []
