"""GET /v1/partitions/stats's parts: counters per partition under the map in force (batch keys each, a map change
moves the counting), the partitions a node owns, and blocks/bytes per partition from a real store."""

from __future__ import annotations

import os
from typing import Any

from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap, keyspace_id
from chronoshard.shardnode.node.partition_stats import (
    PartitionCounters,
    owned_partitions,
    partition_sizes,
    stats_body,
)
from chronoshard.shardnode.node.store import put_in_txn
from chronoshard.shardnode.serving.routing import PartitionMapSource
from chronoshard.shardnode.serving.scaffold import Partitioning

from tests.support.stores import open_store, ring

HALF, TOP = 1 << 63, (1 << 64) - 1
PMAP = PartitionMap(1, 2, (Partition(0, 0, HALF - 1, 0), Partition(1, HALF, TOP, 1)))
KEYS = [f"k{i}" for i in range(50)]


def owner(key: str) -> int:
    return PMAP.owner_of(keyspace_id("t", key)).id


def test_counters_follow_the_map():
    c = PartitionCounters(Partitioning(PartitionMapSource.from_map(PMAP), 0))
    for k in KEYS:
        c.note("t", [k], write=True)
    c.note("t", KEYS[:10], write=False)
    assert c.writes == {p: sum(1 for k in KEYS if owner(k) == p) for p in (0, 1)}
    assert sum(c.reads.values()) == 10 and all(c.reads[owner(k)] for k in KEYS[:10])


def test_without_a_map_everything_is_partition_0():
    c = PartitionCounters(None)
    c.note("t", KEYS, write=False)
    assert c.reads == {0: len(KEYS)} and c.writes == {}
    assert owned_partitions(None, None) == [Partition(0, 0, TOP, 0)]
    assert owned_partitions(PMAP, 1) == [PMAP.partitions[1]]


def test_sizes_from_the_store_and_the_body(tmp_path):
    store, _ = open_store(tmp_path, ring(1, (1,)))
    values = {k: os.urandom(10 + i) for i, k in enumerate(KEYS)}
    try:
        def job(c: Any) -> None:
            for k, v in values.items():
                put_in_txn(c, store.current_keyring(), "t", k, v)
        store.submit(job).result()
        sizes = partition_sizes(store.reader(), PMAP.partitions)
    finally:
        store.close()
    assert sizes == [(sum(1 for k in KEYS if owner(k) == p), sum(len(v) for k, v in values.items() if owner(k) == p))
                     for p in (0, 1)]
    c = PartitionCounters(None)
    c.note("t", ["x"], write=True)
    body = stats_body(PMAP, [Partition(0, 0, 15, 0)], [(3, 30)], c)
    assert body["epoch"] == 1 and body["startedAt"] == c.started_at
    assert body["partitions"] == [{"id": 0, "ranges": [["0000000000000000", "000000000000000f"]], "blocks": 3,
                                   "bytes": 30, "reads": 0, "writes": 1}]
