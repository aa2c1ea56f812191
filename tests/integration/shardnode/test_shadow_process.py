"""Real `chronoshard-node` and `chronoshard-shadow` processes on 127.0.0.1: a writer with its own log, the shadow and
the node killed (-9) three times each while it writes; afterwards every acknowledged write is in the history at
its LSN and the state at sampled LSNs and times equals the reference built from the writer's log. Then a reversion
of the table to a time T while the writer goes on: keys written after the plan are untouched, every other key
equals the reference at T, and a run with a stale digest is refused (409)."""

from __future__ import annotations

import base64
import json
import os
import random
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.integration.shardnode.procs import BIN, INSECURE, Proc, free_port, http, http_json, node
from tests.support.kubelet_dir import write_keyring
from tests.support.shadow_reference import Op, WriterLog
from tests.support.waiting import wait_for

TABLE = "orders"
KEYS = [f"k{i:02}" for i in range(40)]


class Writer(threading.Thread):
    """One sequential writer (puts and deletes of KEYS); pauses while the node is away and, when it is back,
    learns from the node's change log whether the write in flight at the crash committed."""

    def __init__(self, url: str, log: WriterLog, keys: list[str], seed: int) -> None:
        super().__init__(daemon=True)
        self.url, self.log, self.keys = url, log, keys
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.failures = 0

    def run(self) -> None:
        while not self.stop.is_set():
            key = self.rng.choice(self.keys)
            delete = self.rng.random() < 0.2
            value = None if delete else os.urandom(self.rng.randint(1, 300))
            self._one(key, value)
            if self.rng.random() < 0.1:
                time.sleep(0.01)  # quiet moments: times at which the log proves the node's state

    def _one(self, key: str, value: bytes | None) -> None:
        url = f"{self.url}/v1/tables/{TABLE}/blocks/{key}"
        sent = time.time()
        try:
            status, body = http("DELETE" if value is None else "PUT", url, value, timeout=5)
        except OSError:
            self.failures += 1
            self._recover(key, value, sent)
            return
        answered = time.time()
        if status == 200:
            self._record(Op(json.loads(body)["lsn"], key, "delete" if value is None else "put", value, sent,
                            answered))
        elif status != 404:  # a delete of an absent key changes nothing
            raise AssertionError(f"write answered {status}: {body[:200]!r}")

    def _recover(self, key: str, value: bytes | None, sent: float) -> None:
        """Wait for the node, then look for this write in its log (this writer is its only writer)."""
        after = self.log.last_lsn()
        while not self.stop.is_set():
            try:
                status, page = http_json("GET", f"{self.url}/v1/changes?after={after}&limit=10")
            except OSError:
                time.sleep(0.05)
                continue
            if status == 200:
                break
        else:
            return
        for change in page["changes"]:
            assert change["key"] == key, "only the write in flight can be in the log after the last acknowledged"
            self._record(Op(change["lsn"], key, change["op"], value, sent, time.time()))

    def _record(self, op: Op) -> None:
        with self.log.lock:
            assert not self.log.ops or op.lsn > self.log.ops[-1].lsn
            self.log.ops.append(op)


def shadow(tmp: Path, keyring: Path, node_url: str, port: int) -> Proc:
    argv = [str(BIN / "chronoshard-shadow"), "--host", "127.0.0.1", "--port", str(port), "--node-url", node_url,
            "--data-dir", str(tmp / "data"), "--keyring-dir", str(keyring), "--settings",
            str(tmp / "shadow.json"), *INSECURE]
    return Proc(argv, port, tmp / f"shadow-{port}.log")


def history_of(url: str, key: str) -> list[dict[str, Any]]:
    """Every version of a key, all pages."""
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        status, page = http_json("GET", f"{url}/v1/tables/{TABLE}/history/{key}?after={after}&limit=7")
        assert status == 200, page
        out += page["versions"]
        if page["next"] is None:
            return out
        after = page["next"]


def state_of(url: str, query: str) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The table's state at a point (all pages, at the LSN the first page resolved)."""
    state: dict[str, bytes] = {}
    status, page = http_json("GET", f"{url}/v1/tables/{TABLE}/state?{query}&values=true&limit=9")
    assert status == 200, page
    first = page
    while True:
        state.update({e["key"]: base64.b64decode(e["value"]) for e in page["entries"]})
        if page["next"] is None:
            return state, first
        q = urllib.parse.urlencode({"lsn": first["lsn"], "after": page["next"], "values": "true", "limit": 9})
        status, page = http_json("GET", f"{url}/v1/tables/{TABLE}/state?{q}")
        assert status == 200, page


def caught_up(shadow_url: str, node_url: str) -> bool:
    last = http_json("GET", f"{node_url}/v1/changes?after=0&limit=1")[1]["lastLsn"]
    st = http_json("GET", f"{shadow_url}/v1/status")[1]
    return st["capture"]["state"] == "running" and st["capture"]["cursor"] >= last


def node_values(url: str) -> dict[str, bytes]:
    status, body = http_json("POST", f"{url}/v1/tables/{TABLE}/blocks:batchGet", {"keys": KEYS})
    assert status == 200
    return {b["key"]: base64.b64decode(b["value"]) for b in body["blocks"] if b["found"]}


@pytest.fixture
def keyring(tmp_path: Path) -> Path:
    d = tmp_path / "keyring"
    write_keyring(d, 1, {1: ("primary", os.urandom(32))})
    return d


def test_kill9_of_either_side_loses_nothing_and_a_reversion_reverts_in_place(tmp_path, keyring):
    (tmp_path / "shadow.json").write_text(json.dumps({"tables": [TABLE]}))
    n = node(tmp_path, keyring).start()
    s = shadow(tmp_path, keyring, n.url, free_port()).start()
    wait_for(lambda: http_json("GET", f"{s.url}/v1/status")[1]["capture"]["seeds"] == 1, what="the first seed")
    log = WriterLog()
    writer = Writer(n.url, log, KEYS, seed=14)
    writer.start()
    try:
        for round_ in range(3):
            wait_for(lambda r=round_: len(log.ops) >= 60 * (r + 1), what="writes before the next kill")
            s.kill()
            s.start()
            wait_for(lambda r=round_: len(log.ops) >= 60 * (r + 1) + 30, what="writes between kills")
            n.kill()
            n = node(tmp_path, keyring, port=n.port).start()
        wait_for(lambda: len(log.ops) >= 300, what="writes after the last kill")
        writer.stop.set()
        writer.join(10)
        assert writer.failures >= 1  # a kill did hit a write in flight at least once
        wait_for(lambda: caught_up(s.url, n.url), what="the shadow to catch up with the node")
        _check_history(s.url, log)
        _check_reversion(s, n, log)
    finally:
        writer.stop.set()
        s.stop()
        n.stop()


def _check_history(url: str, log: WriterLog) -> None:
    for key in KEYS:
        versions = {(v["lsn"], v["op"]): v for v in history_of(url, key)}
        for op in (o for o in log.ops if o.key == key):
            v = versions.get((op.lsn, op.op))
            assert v is not None, f"{key}: acknowledged {op.op} at LSN {op.lsn} is not in the history"
            assert v["exact"] is True
            if op.value is not None:
                assert base64.b64decode(v["value"]) == op.value
    rng = random.Random(7)
    last = log.ops[-1].lsn
    for lsn in sorted(rng.sample(range(1, last + 1), 8)) + [last]:
        state, page = state_of(url, f"lsn={lsn}")
        assert page["lsn"] == lsn and page["exact"] is True
        assert state == log.state_at(lsn), f"state at LSN {lsn}"
    for i in rng.sample(range(5, len(log.ops) - 5), 8):
        t = log.quiet_time(i)
        lsn = log.lsn_at_time(t)
        assert lsn == log.ops[i].lsn  # the writer's log proves what the node held at t
        state, page = state_of(url, f"time={t!r}")
        assert state == log.state_at(lsn), f"state at time {t} (LSN {lsn})"


def _check_reversion(s: Proc, n: Proc, log: WriterLog) -> None:
    i = len(log.ops) // 2
    point, t = log.ops[i], log.quiet_time(i)
    reference = log.state_at(point.lsn)
    request = {"name": "undo", "tables": [TABLE], "time": t}
    status, stale = http_json("POST", f"{s.url}/v1/reversions", request)
    assert status == 201, stale
    assert (stale["point"]["lsn"], stale["phase"]) == (point.lsn, "planned")
    # More writes, then the same request planned again: a new digest; the first one is stale now.
    writer = Writer(n.url, log, KEYS[::2], seed=15)
    writer.start()
    wait_for(lambda: log.ops[-1].lsn > stale["planLsn"] + 20, what="writes after the first plan")
    wait_for(lambda: http_json("GET", f"{s.url}/v1/status")[1]["capture"]["cursor"] > stale["planLsn"] + 20,
             what="the shadow to see them")
    assert http_json("DELETE", f"{s.url}/v1/reversions/undo")[0] == 200
    status, plan = http_json("POST", f"{s.url}/v1/reversions", request)
    assert status == 201 and plan["digest"] != stale["digest"]
    assert http_json("POST", f"{s.url}/v1/reversions", request)[1]["digest"] == plan["digest"]  # same plan
    status, refused = http_json("POST", f"{s.url}/v1/reversions/undo/run", {"digest": stale["digest"]})
    assert status == 409 and refused["error"] == "digest_mismatch"
    assert http_json("GET", f"{s.url}/v1/reversions/undo")[1]["phase"] == "planned"  # nothing ran
    wait_for(lambda: log.ops[-1].lsn > plan["planLsn"] + 20, what="writes after the plan")
    status, started = http_json("POST", f"{s.url}/v1/reversions/undo/run", {"digest": plan["digest"]})
    assert status == 202, started
    done = wait_for(lambda: (lambda b: b if b["phase"] == "completed" else None)(
        http_json("GET", f"{s.url}/v1/reversions/undo")[1]), what="the reversion to complete")
    writer.stop.set()
    writer.join(10)
    wait_for(lambda: caught_up(s.url, n.url), what="the shadow to catch up")
    assert done["remaining"] == 0 and done["done"] + done["skipped"] == done["restore"] + done["create"] + done[
        "delete"]
    assert done["conflicts"] >= 1  # the writer did write keys of the plan after it was made
    writer_lsns = {op.lsn for op in log.ops}
    final = node_values(n.url)
    for key in KEYS:
        later = [op for op in log.ops if op.key == key and op.lsn > plan["planLsn"]]
        ours = [v for v in history_of(s.url, key) if v["lsn"] > plan["planLsn"] and v["lsn"] not in writer_lsns]
        assert len(ours) <= 1, f"{key} was written more than once by the reversion"
        if ours:
            # The reversion wrote it: to the reference at T, and only while nobody had written it since the plan.
            value = base64.b64decode(ours[0]["value"]) if ours[0]["value"] else None
            assert value == reference.get(key) and (ours[0]["op"] == "delete") == (key not in reference)
            assert not [op for op in later if op.lsn < ours[0]["lsn"]], f"{key} was written over"
        if not later:
            assert final.get(key) == reference.get(key), f"{key} does not equal the reference at T"
        else:
            assert final.get(key) == later[-1].value, f"{key}: the write after the plan was not kept"
