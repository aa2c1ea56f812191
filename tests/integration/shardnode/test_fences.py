"""Fences on a real node process (docs/resharding.md, "CuttingOver"): a fenced range's writes are held (reads are
not), the fence LSN covers every acknowledged write in the range, a held write is answered 421 naming the new owner
once the pushed map moves the range away (and is stored nowhere), and a held write goes on when the fence is lifted
or lapses."""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
from pathlib import Path

import pytest
from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap, format_id, initial_map, keyspace_id

from tests.integration.shardnode.procs import Proc, http, http_json, node
from tests.support.kubelet_dir import write_keyring
from tests.support.waiting import wait_for

BASE = initial_map(2)  # epoch 1: partition 0 on shard 0 (this node), partition 1 on shard 1
P0 = BASE.partitions[0]
RANGE0 = [[format_id(P0.start), format_id(P0.end)]]


def keys_in(partition: int, n: int, prefix: str = "k") -> list[str]:
    found = (k for k in (f"{prefix}{i}" for i in range(100_000))
             if BASE.owner_of(keyspace_id("t", k)).id == partition)
    return [next(found) for _ in range(n)]


def moved_away(epoch: int = 2) -> PartitionMap:
    """Partition 0 on shard 1: this node owns nothing."""
    p0, p1 = BASE.partitions
    return PartitionMap(epoch, 2, (Partition(p0.id, p0.start, p0.end, 1), p1))


@pytest.fixture
def source(tmp_path: Path):
    ring = tmp_path / "keyring"
    write_keyring(ring, 1, {1: ("primary", os.urandom(32))})
    (tmp_path / "map.json").write_text(BASE.to_json())
    n = node(tmp_path, ring)
    n.argv += ["--partition-map", str(tmp_path / "map.json"), "--shard-index", "0"]
    n.start()
    try:
        yield n
    finally:
        n.stop()


def put(n: Proc, key: str, value: bytes) -> tuple[int, dict]:
    status, body = http("PUT", f"{n.url}/v1/tables/t/blocks/{key}", value, timeout=30)
    return status, json.loads(body)


def fence(n: Proc, name: str, hold: float = 30) -> int:
    status, body = http_json("PUT", f"{n.url}/v1/fences/{name}", {"ranges": RANGE0, "holdSeconds": hold})
    assert status == 200, body
    return int(body["fenceLsn"])


def held(n: Proc) -> int:
    return int(http_json("GET", n.url + "/v1/fences")[1]["heldWrites"])


def changes_after(n: Proc, lsn: int) -> list[dict]:
    return http_json("GET", f"{n.url}/v1/changes?after={lsn}&limit=1000")[1]["changes"]


class Writer(threading.Thread):
    """Writes keys of partition 0 one after another until stopped; records every acknowledged (key, LSN, time
    it was acknowledged relative to the fence answer)."""

    def __init__(self, n: Proc, keys: list[str]) -> None:
        super().__init__(daemon=True)
        self.n, self.keys = n, keys
        self.stop = threading.Event()
        self.acked: list[tuple[str, int]] = []
        self.refused: list[dict] = []
        self.fence_answered = threading.Event()
        self.acked_before_answer: list[int] = []

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            key = self.keys[i % len(self.keys)]
            i += 1
            answered = self.fence_answered.is_set()  # read before sending: this write began before the answer
            status, body = put(self.n, key, f"v{i}".encode())
            if status == 200:
                self.acked.append((key, body["lsn"]))
                if not answered:
                    self.acked_before_answer.append(body["lsn"])
            else:
                self.refused.append(body)
                return


def test_fence_holds_writes_covers_every_ack_then_421_after_the_push(source):
    n = source
    writer = Writer(n, keys_in(0, 50))
    writer.start()
    wait_for(lambda: len(writer.acked) >= 20, what="the writer to get going")
    f = fence(n, "move-a")
    writer.fence_answered.set()
    # Every write acknowledged before the answer (and any that was in flight) has an LSN <= F.
    wait_for(lambda: held(n) == 1, what="the writer's next write to be held")
    assert writer.acked_before_answer and max(lsn for _, lsn in writer.acked) <= f
    # Reads are not held.
    key0, lsn0 = writer.acked[-1]
    assert http("GET", f"{n.url}/v1/tables/t/blocks/{key0}")[0] == 200
    # A write outside the fenced range is not held.
    other = keys_in(1, 1)[0]
    assert put(n, other, b"x")[0] == 421  # not ours at all: refused at once, not held

    status, body = http("PUT", n.url + "/v1/partitions?fence=move-a", moved_away().to_json().encode())
    assert status == 200, body  # taken while the fence stands
    writer.join(30)
    assert not writer.is_alive()
    assert writer.refused and writer.refused[0]["error"] == "misdirected"
    assert writer.refused[0]["owner"] == 1 and writer.refused[0]["epoch"] == 2
    assert max(lsn for _, lsn in writer.acked) <= f
    assert changes_after(n, f) == []  # the held write was stored nowhere
    assert http_json("DELETE", f"{n.url}/v1/fences/move-a")[1] == {"name": "move-a", "removed": True}
    assert http_json("DELETE", f"{n.url}/v1/fences/move-a")[1]["removed"] is False  # idempotent
    # The same map again after the fence went is a no-op, condition or not (an operator retrying its push).
    status, body = http("PUT", n.url + "/v1/partitions?fence=move-a", moved_away().to_json().encode())
    assert (status, json.loads(body)["outcome"]) == (200, "same")


def test_lifted_fence_lets_held_writes_through(source):
    n = source
    key = keys_in(0, 1)[0]
    f = fence(n, "lift-me")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(put, n, key, b"after")
        wait_for(lambda: held(n) == 1, what="the write to be held")
        assert not pending.done()
        assert http_json("DELETE", f"{n.url}/v1/fences/lift-me")[1]["removed"] is True
        status, body = pending.result(30)
    assert status == 200 and body["lsn"] > f
    assert http("GET", f"{n.url}/v1/tables/t/blocks/{key}")[1] == b"after"


def test_fence_lapses_after_hold_seconds(source):
    n = source
    key = keys_in(0, 1)[0]
    fence(n, "short", hold=0.5)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(put, n, key, b"v")
        status, body = pending.result(30)  # nobody lifts it: the lapse lets the write go on
    assert status == 200
    assert http_json("GET", n.url + "/v1/fences")[1] == {"fences": [], "heldWrites": 0}


def test_fence_validation(source):
    n = source
    for doc in ({"ranges": [["0000000000000001", "0000000000000000"]]}, {"ranges": []},
                {"ranges": RANGE0, "holdSeconds": 0}, {"ranges": RANGE0, "extra": 1}, {"ranges": [["x", "y"]]}):
        status, body = http_json("PUT", f"{n.url}/v1/fences/f", doc)
        assert status == 400, (doc, body)
    assert http_json("PUT", f"{n.url}/v1/fences/bad%20name", {"ranges": RANGE0})[0] == 400


def test_a_push_conditioned_on_a_lapsed_fence_is_refused(source):
    n = source
    key = keys_in(0, 1)[0]
    f = fence(n, "lapses", hold=0.3)
    wait_for(lambda: http_json("GET", n.url + "/v1/fences")[1]["fences"] == [], what="the fence to lapse")
    status, body = http_json("PUT", n.url + "/v1/partitions?fence=lapses", moved_away().to_dict())
    assert status == 409 and body["error"] == "fence_gone" and body["epoch"] == 1
    assert http_json("GET", n.url + "/v1/partitions")[1]["epoch"] == 1  # the range was not given away
    status, body = put(n, key, b"after the lapse")  # writes went on after the lapse: the cutover must be retried
    assert status == 200 and body["lsn"] > f
    status, body = http_json("PUT", n.url + "/v1/partitions?fence=never-put", moved_away().to_dict())
    assert status == 409 and body["error"] == "fence_gone"
