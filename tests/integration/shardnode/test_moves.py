"""A partition move's target side between real `chronoshard-node` processes (docs/resharding.md): the target pulls
the upper half of the keyspace from the source under a concurrent writer, survives SIGKILL of the source and of the
target mid-copy and mid-catch-up, and ends with a content digest equal to the source's at the same LSN (exactly
once); a discard leaves no block of the range; the 409 cases; leftovers of an earlier move are cleared."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap, keyspace_id

from tests.integration.shardnode.procs import Proc, http, http_json, node
from tests.support.kubelet_dir import write_keyring
from tests.support.stores import open_store, ring
from tests.support.waiting import wait_for

HALF = 1 << 63
TOP = (1 << 64) - 1
UPPER = ("8000000000000000", "ffffffffffffffff")
KEYSPACE = f"{UPPER[0]}-{UPPER[1]}"


def two_shard_map(upper_shard: int, epoch: int = 1) -> PartitionMap:
    """Partition 0 (lower half) on shard 0, partition 1 (upper half) on ``upper_shard``."""
    return PartitionMap(epoch, 2, (Partition(0, 0, HALF - 1, 0), Partition(1, HALF, TOP, upper_shard)))


@pytest.fixture
def keyring(tmp_path: Path) -> Path:
    d = tmp_path / "keyring"
    write_keyring(d, 1, {1: ("primary", bytes([1]) * 32)})  # the key tests.support.stores.ring(1, (1,)) uses
    return d


def shard_node(tmp: Path, keyring: Path, name: str, index: int, config: dict[str, Any] | None = None) -> Proc:
    """A node of shard ``index`` with a map volume of its own (partition 1 still on shard 0)."""
    d = tmp / name
    d.mkdir(exist_ok=True)
    (d / "map.json").write_text(two_shard_map(0).to_json())
    p = node(d, keyring, config=config)
    p.argv += ["--partition-map", str(d / "map.json"), "--shard-index", str(index)]
    return p


def prefill(data_dir: Path, n: int, size: int = 256) -> None:
    """``n`` blocks written through the real store into a node's data directory before the node starts."""
    store, _ = open_store(data_dir, ring(1, (1,)))
    try:
        from chronoshard.shardnode.node.store import put_in_txn

        for start in range(0, n, 1000):
            def job(c: Any, start: int = start) -> None:
                for i in range(start, min(n, start + 1000)):
                    put_in_txn(c, store.current_keyring(), "t", f"pre{i}", os.urandom(size))
            store.submit(job).result()
    finally:
        store.close()


def move_body(src: Proc) -> dict[str, Any]:
    return {"source": {"url": src.url, "shard": 0}, "partition": 1, "ranges": [list(UPPER)]}


def move(url: str, name: str = "m1") -> dict[str, Any]:
    status, body = http_json("GET", f"{url}/v1/moves/{name}")
    assert status == 200, body
    return body


def last_lsn(url: str) -> int:
    status, body = http_json("GET", url + "/v1/status")
    assert status == 200, body
    return int(body["lastLsn"])


def caught_up(target: Proc, src: Proc, name: str = "m1") -> dict[str, Any]:
    want = last_lsn(src.url)
    return wait_for(lambda: (lambda m: m if m["phase"] == "catching_up" and m["sourceLsn"] >= want else None)(
        move(target.url, name)), timeout=60, what=f"the move to apply source LSN {want}")


def digests_agree(src: Proc, target: Proc, name: str = "m1") -> dict[str, Any]:
    """The source's digest at its LSN X equals the target's at source LSN X (retried when the target had already
    gone past X: the writer may still be writing)."""
    def attempt() -> dict[str, Any] | None:
        status, d_src = http_json("GET", f"{src.url}/v1/ranges/digest?keyspace={KEYSPACE}")
        assert status == 200, d_src
        status, d_dst = http_json("GET", f"{target.url}/v1/moves/{name}/digest?sourceLsn={d_src['lsn']}"
                                         "&waitSeconds=20")
        if status == 409 and d_dst["error"] == "lsn_passed":
            return None
        assert status == 200, d_dst
        assert d_dst["sourceLsn"] == d_src["lsn"]
        assert (d_dst["blocks"], d_dst["digest"], d_dst["buckets"]) == (d_src["blocks"], d_src["digest"],
                                                                        d_src["buckets"])
        return d_src
    return wait_for(attempt, timeout=60, what="a digest of the target at the source's LSN")


class Writer:
    """Writes and deletes random keys on the source until stopped, through kills (errors are counted)."""

    def __init__(self, url: str) -> None:
        self.url, self.stop_flag, self.ok, self.errors = url, threading.Event(), 0, 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        rnd = random.Random(7)
        while not self.stop_flag.is_set():
            key = f"w{rnd.randrange(400)}"
            try:
                if rnd.random() < 0.2:
                    status, _ = http("DELETE", f"{self.url}/v1/tables/t/blocks/{key}", timeout=5)
                else:
                    status, _ = http("PUT", f"{self.url}/v1/tables/t/blocks/{key}", os.urandom(200), timeout=5)
                self.ok += status in (200, 404)
            except OSError:
                self.errors += 1
                time.sleep(0.05)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        self.thread.join(10)


def all_changes(url: str, query: str = "") -> list[dict[str, Any]]:
    """Every entry of a node's change log (``query``: more filters), paging on ``next``."""
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        status, page = http_json("GET", f"{url}/v1/changes?after={after}&limit=1000{query}")
        assert status == 200, page
        out += page["changes"]
        if page["next"] <= after or page["next"] >= page["lastLsn"]:
            return out
        after = page["next"]


def applied_once(src: Proc, target: Proc, name: str = "m1") -> int:
    """Exactly once, in the target's log: after the last copy's clear, one move_in row per block of the snapshot
    plus one per change of the range the source logged after the snapshot - a change applied twice (a page
    replayed after a crash) would add a row."""
    m = move(target.url, name)
    rows = all_changes(target.url)
    last_clear = max((i for i, r in enumerate(rows) if r["origin"] == "purge"), default=-1)
    since = rows[last_clear + 1:]
    assert {r["origin"] for r in since} == {"move_in"}
    streamed = [c for c in all_changes(src.url, f"&keyspace={KEYSPACE}") if c["lsn"] > m["snapshotLsn"]]
    assert len(since) == m["copiedBlocks"] + len(streamed)
    return len(streamed)


def copying_midway(target: Proc) -> dict[str, Any]:
    """The target importing a snapshot (blocks copied, no error since this copy began)."""
    return wait_for(lambda: (lambda m: m if m["phase"] == "copying" and 0 < m["copiedBlocks"] and m["error"] is None
                             else None)(move(target.url)), timeout=60, interval=0.005, what="the target copying")


def test_a_move_survives_kills_of_either_side_and_ends_with_equal_digests(tmp_path, keyring):
    src = shard_node(tmp_path, keyring, "src", 0)
    target = shard_node(tmp_path, keyring, "dst", 1, config={"moveCopyChunk": 10, "moveBatch": 50})
    prefill(tmp_path / "src" / "data", 8000)
    src.start()
    target.start()
    try:
        with Writer(src.url) as writer:
            status, body = http_json("PUT", f"{target.url}/v1/moves/m1", move_body(src))
            assert status == 201, body
            assert body["phase"] == "copying"
            # The source dies mid-copy: the snapshot stream is cut, the target copies again once it is back.
            midway = copying_midway(target)
            assert midway["copiedBlocks"] < 4000
            src.kill()
            src.start()
            # The target dies mid-copy: it resumes the persisted move at start-up, copying again.
            copying_midway(target)
            target.kill()
            target.start()
            assert move(target.url)["phase"] in ("copying", "catching_up")
            m = caught_up(target, src)
            assert m["copiedBlocks"] == m["totalBlocks"] > 3000 and m["snapshotLsn"] is not None
            # Mid-catch-up (the writer keeps writing): the target, then the source, die and come back.
            target.kill()
            target.start()
            assert move(target.url)["phase"] == "catching_up"  # resumed from its stored cursor, no new copy
            src.kill()
            src.start()
            wait_for(lambda: writer.ok > 200, what="writes after the restarts")
            digests_agree(src, target)  # under the writer
        caught_up(target, src)
        d = digests_agree(src, target)
        assert d["blocks"] > 3000
        assert applied_once(src, target) > 20  # changes streamed after the snapshot, through both kills
        # The moved-in blocks reached the target's change log under its own LSNs with origin move_in.
        status, page = http_json("GET", f"{target.url}/v1/changes?after=0&limit=1000")
        assert status == 200 and {c["origin"] for c in page["changes"]} <= {"move_in", "purge"}
        assert any(c["origin"] == "move_in" for c in page["changes"])
        # The target never took a block outside the range.
        status, lower = http_json("GET", f"{target.url}/v1/ranges/digest?keyspace=0000000000000000-7fffffffffffffff")
        assert status == 200 and lower["blocks"] == 0
        # The slot is held on the source while the move is open.
        assert http_json("GET", f"{src.url}/v1/consumers/move.m1")[0] == 200
        # Closing the move keeps the data and drops the slot.
        status, closed = http_json("DELETE", f"{target.url}/v1/moves/m1")
        assert status == 200 and closed["slotDropped"] and closed["discardedBlocks"] == 0
        assert http_json("GET", f"{src.url}/v1/consumers/move.m1")[0] == 404
        assert http_json("GET", f"{target.url}/v1/moves/m1")[0] == 404
        status, kept = http_json("GET", f"{target.url}/v1/ranges/digest?keyspace={KEYSPACE}")
        assert kept["digest"] == d["digest"] or kept["blocks"] == d["blocks"]
    finally:
        target.stop()
        src.stop()


def test_discard_removes_every_moved_block_and_conflicts_are_409(tmp_path, keyring):
    src = shard_node(tmp_path, keyring, "src", 0)
    target = shard_node(tmp_path, keyring, "dst", 1)
    prefill(tmp_path / "src" / "data", 600)
    src.start()
    target.start()
    try:
        body = move_body(src)
        # The target owns partition 0: moving any part of it here is refused.
        owned = {**body, "partition": 0, "ranges": [["0000000000000000", "8000000000000000"]]}
        target_map = two_shard_map(0)
        (tmp_path / "dst" / "map.json").write_text(
            PartitionMap(1, 2, (Partition(0, 0, HALF - 1, 1), Partition(1, HALF, TOP, 0))).to_json())
        wait_for(lambda: http_json("GET", f"{target.url}/v1/partitions")[1]["partitions"][0]["shard"] == 1,
                 what="the target to load its map")
        status, err = http_json("PUT", f"{target.url}/v1/moves/m0", owned)
        assert (status, err["error"]) == (409, "owned")
        (tmp_path / "dst" / "map.json").write_text(target_map.to_json())
        wait_for(lambda: http_json("GET", f"{target.url}/v1/partitions")[1]["partitions"][0]["shard"] == 0,
                 what="the target to load its map back")
        assert http_json("PUT", f"{target.url}/v1/moves/m1", body)[0] == 201
        assert http_json("PUT", f"{target.url}/v1/moves/m1", body)[0] == 200  # the same body: resumed, unchanged
        status, err = http_json("PUT", f"{target.url}/v1/moves/m1", {**body, "partition": 7})
        assert (status, err["error"]) == (409, "move_conflict")
        status, err = http_json("PUT", f"{target.url}/v1/moves/m2", body)  # another move of the same range
        assert (status, err["error"]) == (409, "move_overlap")
        assert http_json("PUT", f"{target.url}/v1/moves/-bad", body)[0] == 400
        assert http_json("PUT", f"{target.url}/v1/moves/m3", {"source": {}})[0] == 400
        caught_up(target, src)
        d = digests_agree(src, target)
        assert d["blocks"] > 200
        # Writes outside the range move the cursor on without changing the range: the digest at the earlier LSN is
        # still answered. One write inside it, and that LSN has passed.
        lower = [k for k in (f"low{i}" for i in range(50)) if keyspace_id("t", k) < HALF][:3]
        for k in lower:
            assert http("PUT", f"{src.url}/v1/tables/t/blocks/{k}", b"x")[0] == 200
        caught_up(target, src)
        status, same = http_json("GET", f"{target.url}/v1/moves/m1/digest?sourceLsn={d['lsn']}")
        assert status == 200 and (same["digest"], same["sourceLsn"]) == (d["digest"], d["lsn"])
        late = [k for k in (f"late{i}" for i in range(50)) if keyspace_id("t", k) >= HALF][:3]
        for k in late:
            assert http("PUT", f"{src.url}/v1/tables/t/blocks/{k}", b"x")[0] == 200
        caught_up(target, src)
        status, err = http_json("GET", f"{target.url}/v1/moves/m1/digest?sourceLsn={d['lsn']}")
        assert (status, err["error"]) == (409, "lsn_passed")
        status, listed = http_json("GET", f"{target.url}/v1/moves")
        assert status == 200 and [m["name"] for m in listed["moves"]] == ["m1"]
        # Rollback: the imported blocks go (logged as purges for the target's own consumers), the slot too.
        status, gone = http_json("DELETE", f"{target.url}/v1/moves/m1?discard=true")
        assert status == 200 and gone["discardedBlocks"] == d["blocks"] + len(late)
        status, empty = http_json("GET", f"{target.url}/v1/ranges/digest?keyspace={KEYSPACE}")
        assert empty["blocks"] == 0
        assert http_json("GET", f"{src.url}/v1/consumers/move.m1")[0] == 404
        assert http_json("DELETE", f"{target.url}/v1/moves/m1?discard=true")[0] == 200  # idempotent
        status, page = http_json("GET", f"{target.url}/v1/changes?after=0&limit=1000&tables=t")
        assert page["changes"][-1]["origin"] == "purge"
        # The same range again, after the source deleted some keys: nothing deleted on the source comes back.
        deleted = [f"pre{i}" for i in range(0, 600, 3) if keyspace_id("t", f"pre{i}") >= HALF]
        assert http_json("PUT", f"{target.url}/v1/moves/m1", body)[0] == 201
        caught_up(target, src)
        for k in deleted:
            assert http("DELETE", f"{src.url}/v1/tables/t/blocks/{k}")[0] == 200
        caught_up(target, src)
        assert digests_agree(src, target)["blocks"] == d["blocks"] + len(late) - len(deleted)
        # Closed without discard, then moved again: the copy clears the leftovers first.
        assert http_json("DELETE", f"{target.url}/v1/moves/m1")[1]["discardedBlocks"] == 0
        more = [f"pre{i}" for i in range(1, 600, 3) if keyspace_id("t", f"pre{i}") >= HALF]
        for k in more:
            assert http("DELETE", f"{src.url}/v1/tables/t/blocks/{k}")[0] == 200
        assert http_json("PUT", f"{target.url}/v1/moves/m4", body)[0] == 201
        caught_up(target, src, "m4")
        digests_agree(src, target, "m4")
    finally:
        target.stop()
        src.stop()


def test_after_the_cutover_a_lost_slot_never_clears_the_range(tmp_path, keyring):
    """Once the target owns the range (the map moved it), a copy again would first clear the range and lose the
    writes the target took since: a slot that fell behind then stops the pulling instead."""
    src = shard_node(tmp_path, keyring, "src", 0,
                     config={"changeLogRetain": 5, "changeLogMaxRetain": 20, "trimIntervalSeconds": 0.2})
    target = shard_node(tmp_path, keyring, "dst", 1)
    prefill(tmp_path / "src" / "data", 200)
    src.start()
    target.start()
    try:
        assert http_json("PUT", f"{target.url}/v1/moves/m1", move_body(src))[0] == 201
        caught_up(target, src)
        moved = two_shard_map(1, epoch=2).to_json().encode()
        for p in (src, target):  # the cutover's push: the source first, then the target
            assert http("PUT", f"{p.url}/v1/partitions", moved)[0] == 200
        upper = next(f"new{i}" for i in range(100) if keyspace_id("t", f"new{i}") >= HALF)
        assert http("PUT", f"{target.url}/v1/tables/t/blocks/{upper}", b"taken after the cutover")[0] == 200
        before = http_json("GET", f"{target.url}/v1/ranges/digest?keyspace={KEYSPACE}")[1]
        target.kill()
        lower = [f"low{i}" for i in range(300) if keyspace_id("t", f"low{i}") < HALF][:60]
        for k in lower:  # the source's log moves on and is trimmed past the slot's ack: the slot falls behind
            assert http("PUT", f"{src.url}/v1/tables/t/blocks/{k}", b"x")[0] == 200
        wait_for(lambda: http_json("GET", f"{src.url}/v1/consumers/move.m1")[1]["state"] == "behind",
                 what="the move's slot to fall behind")
        target.start()
        m = wait_for(lambda: (lambda b: b if b["error"] and "owns" in b["error"] else None)(move(target.url)),
                     what="the target to refuse copying into a range it owns")
        assert m["copiedBlocks"] > 0
        assert http("GET", f"{target.url}/v1/tables/t/blocks/{upper}") == (200, b"taken after the cutover")
        assert http_json("GET", f"{target.url}/v1/ranges/digest?keyspace={KEYSPACE}")[1]["digest"] == before["digest"]
    finally:
        target.stop()
        src.stop()


def test_held_first_a_digest_at_the_sources_lsn_is_never_passed_under_steady_writes(tmp_path, keyring):
    """Verification as the operator runs it - the target holds at its cursor, the source digests at its X, the
    target digests at exactly X - answers on the first attempt every time while a writer keeps writing into the
    moving range (asked without the hold first, the target had nearly always passed X: 409 lsn_passed)."""
    src = shard_node(tmp_path, keyring, "src", 0)
    target = shard_node(tmp_path, keyring, "dst", 1)
    prefill(tmp_path / "src" / "data", 2000)
    src.start()
    target.start()
    try:
        with Writer(src.url) as writer:
            status, body = http_json("PUT", f"{target.url}/v1/moves/m1", move_body(src))
            assert status == 201, body
            caught_up(target, src)
            for round_ in range(5):
                before = writer.ok
                status, held = http_json("PUT", f"{target.url}/v1/moves/m1/hold?seconds=30")
                assert status == 200, held
                wait_for(lambda before=before: writer.ok > before + 20, what="writes into the range while held")
                status, d_src = http_json("GET", f"{src.url}/v1/ranges/digest?keyspace={KEYSPACE}")
                assert status == 200, d_src
                assert d_src["lsn"] >= held["sourceLsn"]
                # More writes into the range before the target is asked: without the hold it would apply them.
                after = writer.ok
                wait_for(lambda after=after: writer.ok > after + 20, what="writes into the range after X")
                status, d_dst = http_json("GET", f"{target.url}/v1/moves/m1/digest?sourceLsn={d_src['lsn']}"
                                                 "&waitSeconds=20")
                assert status == 200, (round_, d_dst)
                assert (d_dst["sourceLsn"], d_dst["blocks"], d_dst["digest"]) == (d_src["lsn"], d_src["blocks"],
                                                                                  d_src["digest"])
            # The digest took the hold over and let it go: the target catches up again.
            caught_up(target, src)
        # A hold nobody takes over lapses on its own.
        status, held = http_json("PUT", f"{target.url}/v1/moves/m1/hold?seconds=0.5")
        assert status == 200, held
        for i in range(20):
            http("PUT", f"{src.url}/v1/tables/t/blocks/late{i}", b"x", timeout=5)
        caught_up(target, src)
        status, missing = http_json("PUT", f"{target.url}/v1/moves/nope/hold")
        assert status == 404, missing
    finally:
        target.stop()
        src.stop()
