"""A Reversion by partition on a real node and shadow: the point's state read from a woven snapshot of the split
half (weave.sqlite3 written through the weaver's code beside the shadow's history) or, without one, from the
shadow's snapshots - the same items and digest either way - and carried out through the node."""

from __future__ import annotations

import asyncio

from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap, keyspace_id
from chronoshard.shardnode.serving.routing import PartitionMapSource
from chronoshard.shardnode.serving.scaffold import Partitioning
from chronoshard.shardnode.weave import weaving
from chronoshard.shardnode.weave.store import DIFFERENTIAL, LOWER, UPPER, Weave, WeaveStore

from tests.support.shadow import Pair, node_and_shadow
from tests.support.waiting import wait_for_async
from tests.support.woven_history import KEYSPACE_MAX, RANGES, SPLIT

# One shard owning both halves of the keyspace: partition 1 is what a split at 2^63 created.
PMAP = PartitionMap(1, 1, (Partition(0, 0, SPLIT - 1, 0), Partition(1, SPLIT, KEYSPACE_MAX, 0)))
KEYS = [f"k{i:02}" for i in range(40)]
UPPER_KEYS = [k for k in KEYS if keyspace_id("t", k) >= SPLIT]
LOWER_KEYS = [k for k in KEYS if keyspace_id("t", k) < SPLIT]


async def snapshot_after(p: Pair, lsn: int) -> None:
    """Wait for a shadow snapshot covering ``lsn`` (a boundary is taken once a later change arrives)."""
    async def taken() -> bool:
        await p.put("tick", "tick", b".")
        await p.wait_caught_up()
        return any(s.lsn >= lsn for s in p.shadow.history.snapshots())

    await wait_for_async(taken, what=f"a snapshot at or after LSN {lsn}")


def weave_newest(p: Pair, store: WeaveStore, prev: dict[str, int] | None) -> dict[str, int]:
    """One weaver step: the newest snapshot's point of both halves (full first, then differential)."""
    conn = weaving.open_shadow(p.shadow.history.path)
    snap = weaving.newest_snapshot(conn)
    assert snap is not None
    if prev is None:
        rows, kind = weaving.full_rows(conn, snap.id, RANGES), "full"
    else:
        last = store.point(prev[UPPER])
        assert last is not None
        rows, kind = weaving.diff_rows(conn, last.lsn, snap.lsn, RANGES), DIFFERENTIAL
    conn.close()
    points = store.add_points([("w-0-1", h, snap.boundary, snap.lsn, kind, None if prev is None else prev[h], snap.id,
                                rows[h]) for h in RANGES])
    return {pt.half: pt.id for pt in points}


async def test_a_partition_plan_uses_the_woven_snapshot_and_equals_the_standard_path(tmp_path):
    part = Partitioning(PartitionMapSource.from_map(PMAP), 0)
    async with node_and_shadow(tmp_path, {"snapshot": {"intervalSeconds": 1}}, partitioning=part) as p:
        for k in KEYS:
            await p.put("t", k, b"v0-" + k.encode())
        first = await p.put("t", KEYS[0], b"v1")
        await snapshot_after(p, first)
        store = WeaveStore(p.shadow.history.path.with_name("weave.sqlite3"))
        store.add_weave(Weave("w-0-1", 0, SPLIT, RANGES[LOWER], RANGES[UPPER], 0.9, None, 3600.0, 0.0, "active"))
        prev = weave_newest(p, store, None)
        for k in KEYS[::3]:
            await p.put("t", k, b"v2-" + k.encode())
        await p.delete("t", UPPER_KEYS[1])
        second = await p.put("t", UPPER_KEYS[2], b"v2b")
        await snapshot_after(p, second)
        prev = weave_newest(p, store, prev)
        woven_lsn = store.point(prev[UPPER]).lsn
        store.close()
        # After the woven point: changes the plan must replay from the history.
        await p.put("t", UPPER_KEYS[3], b"v3")
        point = await p.delete("t", UPPER_KEYS[4])
        for k in KEYS:
            await p.put("t", k, b"after")
        await p.wait_caught_up()
        want = {k: await p.node_value("t", k) for k in KEYS}  # overwritten below; read the point's from history

        status, woven = await p.post("/v1/reversions", {"name": "by-woven", "partition": 1, "lsn": point})
        assert status == 201, woven
        assert woven["base"]["kind"] == "woven" and woven["base"]["lsn"] == woven_lsn
        assert woven["request"]["partition"] == 1
        weave_file = p.shadow.history.path.with_name("weave.sqlite3")
        weave_file.rename(weave_file.with_suffix(".away"))
        status, std = await p.post("/v1/reversions", {"name": "by-snapshot", "partition": 1, "lsn": point})
        assert status == 201 and std["base"]["kind"] == "snapshot" and std["base"]["lsn"] <= point
        assert std["digest"] == woven["digest"]
        assert (std["restore"], std["create"], std["delete"]) == (woven["restore"], woven["create"],
                                                                  woven["delete"])
        keys = {i["key"] for i in woven["sample"]}
        assert keys and keys <= set(UPPER_KEYS) and "tick" not in keys

        status, bad = await p.post("/v1/reversions", {"name": "x", "partition": 7, "lsn": point})
        assert status == 400 and bad["error"] == "unknown_partition"
        status, bad = await p.post("/v1/reversions", {"name": "y", "partition": 1, "keys": ["a"], "lsn": point})
        assert status == 400

        await p.post("/v1/reversions/by-woven/run", {"digest": woven["digest"]})

        async def done():
            _, body = await p.get("/v1/reversions/by-woven")
            return body if body["phase"] in ("completed", "failed") else None

        result = await wait_for_async(done, what="the partition reversion")
        assert result["phase"] == "completed" and result["skipped"] == 0
        history = p.shadow.history
        for k in UPPER_KEYS:
            then = await asyncio.to_thread(history.value_at, "t", k, lsn=point)
            assert await p.node_value("t", k) == (None if then is None else then.value), k
        for k in LOWER_KEYS:
            assert await p.node_value("t", k) == want[k] == b"after"  # the other partition: untouched
