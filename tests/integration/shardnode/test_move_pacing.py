"""A move's copy yields to the clients on both ends (docs/resharding.md#pacing), between real `chronoshard-node`
processes: the source's keyspace-limited snapshot pauses between chunks while its clients read and not while they
are idle (a full snapshot, a mirror's seed, never does); the target's import pauses while its own clients are
active, not while idle; a fixed ``movePauseSeconds: 0`` turns the pacing off."""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap, keyspace_id
from chronoshard.shardnode.node.pacing import PaceSettings

from tests.integration.shardnode.procs import Proc, http, http_json, node
from tests.integration.shardnode.test_moves import (
    HALF,
    KEYSPACE,
    TOP,
    caught_up,
    keyring,
    move_body,
    prefill,
    shard_node,
)
from tests.support.waiting import wait_for

__all__ = ["keyring"]  # the fixture, shared with test_moves


def pauses(url: str, side: str) -> float:
    """chronoshard_node_move_copy_pauses_total{side=...} from the node's /metrics (0 before the first)."""
    text = http("GET", url + "/metrics")[1].decode()
    m = re.search(rf'^chronoshard_node_move_copy_pauses_total\{{side="{side}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


class Reader:
    """A client reading one block in a loop until stopped (the node's foreground); ``ok`` counts the answers."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key, self.stop_flag, self.ok = url, key, threading.Event(), 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop_flag.is_set():
            status, _ = http("GET", f"{self.url}/v1/tables/t/blocks/{self.key}", timeout=10)
            self.ok += status in (200, 404)  # served (a 404: not written), not refused as another shard's

    def __enter__(self) -> Reader:
        self.thread.start()
        wait_for(lambda: self.ok >= 3, what="the reader's first answers")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        self.thread.join(10)


def snapshot_lines(url: str, query: str) -> list[dict[str, Any]]:
    status, body = http("GET", f"{url}/v1/snapshot?{query}", timeout=60)
    assert status == 200
    return [json.loads(line) for line in body.splitlines()]


def test_a_move_snapshot_pauses_for_busy_clients_and_not_for_idle_ones(tmp_path, keyring):
    n = node(tmp_path, keyring)
    prefill(tmp_path / "data", 3000, size=2048)  # ~1,500 blocks in the upper half: several 256 KiB chunks
    n.start()
    try:
        idle = snapshot_lines(n.url, f"keyspace={KEYSPACE}")
        assert idle[-1]["end"] and idle[-1]["blocks"] > 1000
        assert pauses(n.url, "source") == 0  # no client: full speed
        with Reader(n.url, "pre0"):
            full = snapshot_lines(n.url, "")  # a mirror's seed is never paced
            assert full[-1]["blocks"] == 3000 and pauses(n.url, "source") == 0
            busy = snapshot_lines(n.url, f"keyspace={KEYSPACE}")
        assert busy == idle  # the same blocks, only slower
        paced = pauses(n.url, "source")
        assert paced >= 1
        # Idle again (the reader stopped: once ``idle_after`` has passed the node counts as idle): no pause.
        time.sleep(PaceSettings().idle_after * 1.5)
        snapshot_lines(n.url, f"keyspace={KEYSPACE}")
        assert pauses(n.url, "source") == paced
    finally:
        n.stop()


def test_a_fixed_zero_pause_turns_the_pacing_off(tmp_path, keyring):
    n = node(tmp_path, keyring, config={"movePauseSeconds": 0})
    prefill(tmp_path / "data", 3000, size=2048)
    n.start()
    try:
        with Reader(n.url, "pre0"):
            busy = snapshot_lines(n.url, f"keyspace={KEYSPACE}")
        assert busy[-1]["blocks"] > 1000 and pauses(n.url, "source") == 0
    finally:
        n.stop()


def copy_moved(target: Proc, src: Proc) -> int:
    status, body = http_json("PUT", f"{target.url}/v1/moves/m1", move_body(src))
    assert status == 201, body
    m = caught_up(target, src)
    assert m["copiedBlocks"] == m["totalBlocks"] > 500
    return int(m["copiedBlocks"])


def test_the_targets_import_pauses_for_its_own_busy_clients_only(tmp_path, keyring):
    config = {"moveCopyChunk": 100}
    src = shard_node(tmp_path, keyring, "src", 0)
    idle_target = shard_node(tmp_path, keyring, "idle", 1, config=config)
    busy_target = shard_node(tmp_path, keyring, "busy", 1, config=config)
    # The busy target's clients need a partition of its own to read (a misdirected read is no foreground).
    (tmp_path / "busy" / "map.json").write_text(PartitionMap(1, 2, (Partition(0, 0, HALF - 1, 1),
                                                                     Partition(1, HALF, TOP, 0))).to_json())
    own = next(f"k{i}" for i in range(100) if keyspace_id("t", f"k{i}") < HALF)
    prefill(tmp_path / "src" / "data", 2000)
    for p in (src, idle_target, busy_target):
        p.start()
    try:
        copy_moved(idle_target, src)
        assert pauses(idle_target.url, "target") == 0
        with Reader(busy_target.url, own):
            copied = copy_moved(busy_target, src)
        assert pauses(busy_target.url, "target") >= 1
        assert copied == int(http_json("GET", f"{idle_target.url}/v1/moves/m1")[1]["copiedBlocks"])
    finally:
        for p in (busy_target, idle_target, src):
            p.stop()
