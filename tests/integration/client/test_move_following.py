"""The Python client following a partition move's cutover (docs/resharding.md), against real node and cache processes.

A cutover hands the new map to the source first, then the target, then everyone else. Here each shard mounts a map
volume of its own (``ShardNodes(own_maps=True)``) and the test publishes the next epoch shard by shard, holding the
moment when the source and the target each refuse the moved range (the source: "shard 1 owns it under epoch 2"; the
target: "shard 0 owns it under epoch 1"). The data copy is not part of these tests (the move's own tests and the e2e
test do it): every key is written again after the cutover, so its last value is on the new owner.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field

import aiohttp
import pytest
from chronoshard.shardnode.client import AsyncClient, FileMap, Misdirected, NodeMap, NotFound
from chronoshard.shardnode.client.errors import ChronoshardError
from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap, initial_map

from tests.support.histories import seq_of, value_of
from tests.support.waiting import wait_for_async

from .checks import node_keys
from .shards import ShardCaches, ShardNodes

TABLE = "orders"
M1 = initial_map(3)
# Epoch 2: shard 0's partition moves to shard 1.
M2 = PartitionMap(2, 3, tuple(Partition(p.id, p.start, p.end, 1 if p.shard == 0 else p.shard) for p in M1.partitions))
WRITERS = 24


@pytest.fixture()
def split_nodes(tmp_path):
    n = ShardNodes(tmp_path, M1, own_maps=True)
    yield n
    n.stop()


@pytest.fixture()
def split_caches(split_nodes):
    c = ShardCaches(split_nodes)
    yield c
    c.stop()


async def serves_epoch(urls: list[str], epoch: int) -> None:
    """Wait until every URL's ``GET /v1/partitions`` is at ``epoch`` (they re-read the mounted file each second)."""
    async with aiohttp.ClientSession() as s:

        async def at() -> bool:
            for u in urls:
                async with s.get(f"{u}/v1/partitions") as r:
                    if (await r.json()).get("epoch") != epoch:
                        return False
            return True

        await wait_for_async(at, timeout=15, interval=0.05, what=f"{urls} at epoch {epoch}")


@dataclass
class Workload:
    """One writer per key (sequential writes, each read back), recording starts and acknowledgements."""

    client: AsyncClient
    keys: list[str]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    acked: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # key -> (seq, start) acknowledged
    failed: list[str] = field(default_factory=list)
    not_found_reads: int = 0

    async def writer(self, key: str) -> None:
        seq = 0
        while not self.stop.is_set():
            seq += 1
            start = time.monotonic()
            try:
                await self.client.put(TABLE, key, value_of(key, seq))
                self.acked.setdefault(key, []).append((seq, start))
            except ChronoshardError as exc:
                self.failed.append(f"put {key}#{seq}: {exc!r}")
            try:
                await self.client.get(TABLE, key)
            except NotFound:
                self.not_found_reads += 1  # no copy in this test: a key not rewritten yet since the cutover
            except ChronoshardError as exc:
                self.failed.append(f"get {key}: {exc!r}")


async def stored_seq(session: aiohttp.ClientSession, node_url: str, key: str) -> int | None:
    """The seq of ``key`` held by one node (asked by scan, which no ownership check refuses)."""
    params = {"values": "true", "limit": "1000"}
    async with session.get(f"{node_url}/v1/tables/{TABLE}/blocks", params=params) as r:
        assert r.status == 200, await r.text()
        items = (await r.json())["items"]
    found = [it for it in items if it["key"] == key]
    return seq_of(key, base64.b64decode(found[0]["value"])) if found else None


async def test_writers_follow_a_staged_cutover_without_an_error(split_nodes, split_caches):
    keys = [f"w{i}" for i in range(200)]
    moved = [k for k in keys if M1.shard_of(TABLE, k) == 0][:WRITERS // 2]
    stayed = [k for k in keys if M1.shard_of(TABLE, k) != 0][:WRITERS // 2]
    async with AsyncClient(NodeMap(split_caches.urls), split_caches.urls, lagging_shard_wait=0.2) as c:
        w = Workload(c, moved + stayed)
        tasks = [asyncio.create_task(w.writer(k)) for k in w.keys]
        await wait_for_async(lambda: len(w.acked) == len(w.keys), timeout=30, interval=0.05,
                             what="every writer acknowledged once")
        # The source first: from the moment it serves epoch 2 it must refuse every write to the moved range.
        split_nodes.publish_map(M2, [0])
        await serves_epoch([split_nodes.urls[0], split_caches.urls[0]], 2)
        source_switched = time.monotonic()
        retries_before = c.misdirected_retries
        await asyncio.sleep(0.6)  # source and target each name the other as owner meanwhile
        split_nodes.publish_map(M2, [1])
        await serves_epoch([split_nodes.urls[1], split_caches.urls[1]], 2)
        split_nodes.publish_map(M2, [2])
        await serves_epoch([split_nodes.urls[2], split_caches.urls[2]], 2)
        rewritten = time.monotonic()
        # Every key is written again under epoch 2 everywhere.
        await wait_for_async(lambda: all(s > rewritten for k in w.keys for _, s in w.acked[k][-1:]), timeout=30,
                             interval=0.05, what="every writer acknowledged after the cutover")
        w.stop.set()
        await asyncio.gather(*tasks)

        assert w.failed == [], w.failed[:5]
        assert c.misdirected_retries > retries_before  # the cutover was met, not slipped through
        assert (await c.partition_map()).epoch == 2
        # The last acknowledged value of every key is what the client reads now.
        for k in w.keys:
            assert seq_of(k, await c.get(TABLE, k)) == w.acked[k][-1][0], k

    async with aiohttp.ClientSession() as s:
        held = [set(await node_keys(s, u, TABLE)) for u in split_nodes.urls]
        # The moved keys were written on the target after the cutover; nothing of the others moved.
        assert set(moved) <= held[1] and not set(stayed) & held[0]
        for k in moved:
            # The source took no write to the moved range once it had the new map: what it holds was begun before.
            begun_before = max(seq for seq, start in w.acked[k] if start < source_switched)
            held_seq = await stored_seq(s, split_nodes.urls[0], k)
            assert held_seq is not None and held_seq <= begun_before, (k, held_seq, begun_before)


async def test_a_target_that_never_takes_the_map_fails_the_write_boundedly(split_nodes):
    split_nodes.publish_map(M2, [0])
    await serves_epoch([split_nodes.urls[0]], 2)
    key = next(f"k{i}" for i in range(1000) if M1.shard_of(TABLE, f"k{i}") == 0)
    async with AsyncClient(M1, split_nodes.urls, timeout=3, lagging_shard_wait=0.2) as c:
        with pytest.raises(Misdirected) as err:
            await c.put(TABLE, key, b"v")
        # Shard 1 still runs epoch 1 and names shard 0; shard 0 names shard 1 under epoch 2.
        assert err.value.owner in (0, 1) and c.misdirected_retries >= 2
    async with aiohttp.ClientSession() as s:
        assert [await node_keys(s, u, TABLE) for u in split_nodes.urls] == [[], [], []]


async def test_the_map_is_taken_from_the_refusing_shard_when_the_map_source_lags(split_nodes, tmp_path):
    lagging = tmp_path / "configmap-map.json"
    lagging.write_text(M1.to_json())  # the published map the client reads stays at epoch 1
    split_nodes.publish_map(M2)
    await serves_epoch(split_nodes.urls, 2)
    keys = [f"k{i}" for i in range(40) if M1.shard_of(TABLE, f"k{i}") == 0]
    async with AsyncClient(FileMap(lagging), split_nodes.urls) as c:
        assert (await c.partition_map()).epoch == 1
        for k in keys:
            await c.put(TABLE, k, value_of(k, 1))
        assert (await c.partition_map()).epoch == 2
        # One refusal taught the whole map: the other keys went straight to shard 1.
        assert c.misdirected_retries == 1
    async with aiohttp.ClientSession() as s:
        assert sorted(await node_keys(s, split_nodes.urls[1], TABLE)) == sorted(keys)
        assert await node_keys(s, split_nodes.urls[0], TABLE) == []
