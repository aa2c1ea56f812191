"""Node replication between real `chronoshard-node` processes (--insecure): a mirror seeds, streams, survives
kill -9 of either side, re-seeds when its slot fell behind, is promoted above lsnFloor, a demotion's token covers
every acknowledged write, an old primary rejoins by rewinding, read-your-writes, and a corrupted range is repaired
until the digests agree (docs/mirroring.md)."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration.shardnode.procs import Proc, http, http_json, node
from tests.support.kubelet_dir import write_keyring
from tests.support.waiting import wait_for


@pytest.fixture
def keyring(tmp_path):
    d = tmp_path / "keyring"
    write_keyring(d, 1, {1: ("primary", os.urandom(32))})
    return d


def launch(tmp: Path, keyring: Path, name: str, config: dict[str, Any] | None = None) -> Proc:
    (tmp / name).mkdir(exist_ok=True)
    return node(tmp / name, keyring, config=config).launch()


def start(tmp: Path, keyring: Path, name: str, config: dict[str, Any] | None = None) -> Proc:
    return launch(tmp, keyring, name, config).wait_ready()


def role(url: str, doc: dict[str, Any]) -> dict[str, Any]:
    status, body = http_json("PUT", url + "/v1/replication", doc)
    assert status == 200, body
    return body


def mirror_of(src: Proc, term: int = 1, consumer: str = "mirror.ns.b", diverge: int | None = None,
              shardset: str = "ns/a") -> dict[str, Any]:
    return {"term": term, "role": "mirror", "mode": "async", "source": {"url": src.url, "shardSet": shardset},
            "consumer": consumer, "divergeLsn": diverge}


def put(url: str, key: str, value: bytes, table: str = "t") -> int:
    status, body = http("PUT", f"{url}/v1/tables/{table}/blocks/{key}", value)
    assert status == 200, body
    return int(json.loads(body)["lsn"])


def state(url: str) -> dict[str, Any]:
    status, body = http_json("GET", url + "/v1/replication")
    assert status == 200, body
    return body


def last_lsn(url: str) -> int:
    return int(state(url)["lastLsn"])


def caught_up(mirror: Proc, src: Proc) -> dict[str, Any]:
    """Wait until the mirror has applied the source's last LSN."""
    target = last_lsn(src.url)
    return wait_for(lambda: (lambda s: s if s["appliedLsn"] >= target and s["state"] == "streaming" else None)(
        state(mirror.url)), what=f"the mirror to apply LSN {target}")


def digests_equal(src: Proc, mirror: Proc) -> dict[str, Any]:
    status, d_src = http_json("GET", src.url + "/v1/digest")
    assert status == 200, d_src
    status, d_mirror = http_json("GET", f"{mirror.url}/v1/digest?atLsn={d_src['lsn']}&waitSeconds=20")
    assert status == 200, d_mirror
    assert d_mirror == d_src
    return d_src


def change_lsns(url: str) -> list[tuple[int, str, str, str]]:
    out, after = [], 0
    while True:
        status, page = http_json("GET", f"{url}/v1/changes?after={after}&limit=1000")
        assert status == 200
        out += [(c["lsn"], c["table"], c["key"], c["op"]) for c in page["changes"]]
        if not page["changes"]:
            return out
        after = page["next"]


class Writer(threading.Thread):
    """Writes distinct keys to a node until stopped; keeps every acknowledged LSN."""

    def __init__(self, url: str, prefix: str = "w") -> None:
        super().__init__(daemon=True)
        self.url, self.prefix = url, prefix
        self.acked: dict[str, int] = {}
        self.refused = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop_event.is_set():
            key = f"{self.prefix}{i}"
            try:
                status, body = http("PUT", f"{self.url}/v1/tables/t/blocks/{key}", os.urandom(100), timeout=5)
            except OSError:
                self.refused += 1
                continue
            if status == 200:
                self.acked[key] = int(json.loads(body)["lsn"])
            else:
                self.refused += 1
            i += 1

    def stop(self) -> None:
        self.stop_event.set()
        self.join(30)


@pytest.fixture
def pair(tmp_path, keyring):
    """Source node A (term-0 primary) and node B, not yet a mirror."""
    a, b = launch(tmp_path, keyring, "a"), launch(tmp_path, keyring, "b")  # both cold starts at once
    a.wait_ready()
    b.wait_ready()
    yield a, b
    b.stop()
    a.stop()


def test_seed_then_stream_and_the_digests_agree(pair):
    a, b = pair
    for i in range(40):
        put(a.url, f"k{i}", os.urandom(50 + i))
    http("DELETE", f"{a.url}/v1/tables/t/blocks/k3")
    role(b.url, mirror_of(a))  # seeds from A's snapshot
    for i in range(40, 80):
        put(a.url, f"k{i}", os.urandom(10))
    http("DELETE", f"{a.url}/v1/tables/t/blocks/k41")
    st = caught_up(b, a)
    assert st["role"] == "mirror" and st["seeds"] == 1 and st["writes"] == {"accepting": False,
                                                                              "reason": "not_primary"}
    digests_equal(a, b)
    # The mirror's own log carries the source's LSNs from the snapshot on.
    assert change_lsns(b.url) == [c for c in change_lsns(a.url) if c[0] > change_lsns(b.url)[0][0] - 1]
    status, value = http("GET", f"{b.url}/v1/tables/t/blocks/k50")
    assert status == 200 and value == http("GET", f"{a.url}/v1/tables/t/blocks/k50")[1]
    req = urllib.request.Request(f"{b.url}/v1/tables/t/blocks/x", data=b"no", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(req, timeout=10)
    status, refused = answer.value.code, json.loads(answer.value.read())
    assert answer.value.headers["Retry-After"] == "1"
    assert status == 503 and refused["error"] == "not_primary" and refused["primaryShardSet"] == "ns/a"
    assert refused["term"] == 1 and refused["role"] == "mirror"
    status, body = http_json("POST", b.url + "/v1/rewrap", {})  # its rewraps come from the source's stream
    assert status == 503 and body["error"] == "not_primary"


def test_the_same_role_again_is_idempotent_and_a_lower_term_is_refused(pair):
    a, b = pair
    assert role(b.url, mirror_of(a, term=3))["changed"] is True
    assert role(b.url, mirror_of(a, term=3))["changed"] is False
    status, body = http_json("PUT", b.url + "/v1/replication", mirror_of(a, term=2))
    assert status == 409 and body["error"] == "stale_term"
    status, body = http_json("PUT", b.url + "/v1/replication", {"term": 3, "role": "fenced"})
    assert status == 409 and body["error"] == "term_conflict"


def seeded(a: Proc, b: Proc) -> int:
    """Make B a mirror of A and wait for its seed; returns the seed's LSN (B's log holds what follows)."""
    put(a.url, "seed", b"s")
    role(b.url, mirror_of(a))
    return int(caught_up(b, a)["appliedLsn"])


def same_log(a: Proc, b: Proc, after: int) -> None:
    """B's change log is A's after ``after``: every change once, with the source's LSN."""
    assert change_lsns(b.url) == [c for c in change_lsns(a.url) if c[0] > after]


def test_kill_9_of_the_mirror_mid_stream_loses_and_repeats_nothing(tmp_path, keyring, pair):
    a, b = pair
    seed = seeded(a, b)
    writer = Writer(a.url)
    writer.start()
    wait_for(lambda: state(b.url)["appliedLsn"] > 50, what="the mirror to stream a while")
    b.kill()
    wait_for(lambda: len(writer.acked) > 150, what="more writes while the mirror is down")
    b.start()
    wait_for(lambda: state(b.url)["appliedLsn"] > max(writer.acked.values(), default=0) - 20,
             what="the restarted mirror to resume")
    writer.stop()
    st = caught_up(b, a)
    assert st["seeds"] == 0  # resumed from its persisted cursor, not re-seeded
    same_log(a, b, seed)
    digests_equal(a, b)


def test_kill_9_of_the_source_and_the_mirror_resumes(tmp_path, keyring, pair):
    a, b = pair
    seed = seeded(a, b)
    writer = Writer(a.url)
    writer.start()
    wait_for(lambda: state(b.url)["appliedLsn"] > 30, what="the mirror to stream a while")
    a.kill()
    writer.stop()
    wait_for(lambda: state(b.url)["state"] == "error", what="the mirror to notice its source is gone")
    assert state(b.url)["source"]["reachable"] is False
    a.start()
    for i in range(10):
        put(a.url, f"after{i}", b"x")
    caught_up(b, a)
    same_log(a, b, seed)
    digests_equal(a, b)


def test_a_slot_that_fell_behind_re_seeds(tmp_path, keyring):
    a = launch(tmp_path, keyring, "a", {"changeLogRetain": 5, "changeLogMaxRetain": 20, "trimIntervalSeconds": 0.2})
    b = start(tmp_path, keyring, "b")
    a.wait_ready()
    try:
        role(b.url, mirror_of(a))
        put(a.url, "first", b"1")
        caught_up(b, a)
        b.stop()
        for i in range(100):
            put(a.url, f"k{i}", os.urandom(20))
        wait_for(lambda: any(s["state"] == "behind" for s in http_json("GET", a.url + "/v1/consumers")[1]
                             ["consumers"]), what="A's retention to trim past the mirror's slot")
        b.start()
        st = caught_up(b, a)
        assert st["seeds"] == 1
        digests_equal(a, b)
        metrics = http("GET", b.url + "/metrics")[1].decode()
        for line in ("chronoshard_node_replication_seeds_total 1.0",
                     'chronoshard_node_replication_role{role="mirror"} 1.0',
                     'chronoshard_node_replication_state{state="streaming"} 1.0',
                     f"chronoshard_node_replication_applied_lsn {float(st['appliedLsn'])}"):
            assert line in metrics, line
    finally:
        b.stop()
        a.stop()


def test_promotion_continues_above_the_floor_and_demotion_covers_every_ack(pair):
    a, b = pair
    role(b.url, mirror_of(a))
    writer = Writer(a.url)
    writer.start()
    wait_for(lambda: len(writer.acked) > 100, what="writes on the primary")
    fenced = role(a.url, {"term": 2, "role": "fenced", "primaryShardSet": "ns/b"})
    token = fenced["lastLsn"]
    writer.stop()
    assert writer.acked and max(writer.acked.values()) <= token  # nothing acknowledged after the token
    status, raw = http("PUT", f"{a.url}/v1/tables/t/blocks/late", b"x")
    assert status == 503 and b'"fenced"' in raw
    wait_for(lambda: state(b.url)["appliedLsn"] >= token, what="the mirror to reach the demotion token")
    floor = token + 7
    promoted = role(b.url, {"term": 2, "role": "primary", "mode": "async", "mirrors": ["mirror.ns.a"],
                            "lsnFloor": floor})
    assert promoted["promotedAtLsn"] == token and promoted["lastLsn"] == floor
    assert put(b.url, "new", b"on b") == floor + 1
    assert state(b.url)["writes"]["accepting"] is True


def test_rejoin_rewinds_what_the_new_primary_never_had(pair):
    a, b = pair
    role(b.url, mirror_of(a))
    for i in range(20):
        put(a.url, f"k{i}", b"v1")
    caught_up(b, a)
    # B is promoted while A (cut off, not yet fenced) still takes writes the mirror never gets.
    promoted = role(b.url, {"term": 2, "role": "primary", "mode": "async", "mirrors": ["mirror.ns.a"],
                            "lsnFloor": last_lsn(a.url)})
    diverge = promoted["promotedAtLsn"]
    lost = [put(a.url, "k1", b"lost"), put(a.url, "only-on-a", b"lost"), put(a.url, "k2", b"lost")]
    http("DELETE", f"{a.url}/v1/tables/t/blocks/k5")
    lost.append(last_lsn(a.url))
    old_last = lost[-1]
    put(b.url, "k1", b"on b")
    put(b.url, "k9", b"on b")
    rejoined = role(a.url, mirror_of(b, term=3, consumer="mirror.ns.a", diverge=diverge, shardset="ns/b"))
    assert rejoined["role"] == "mirror"
    st = caught_up(a, b)
    assert st["discardedLsns"] == lost
    assert st["seeds"] == 0  # rewound, not re-seeded
    digests_equal(b, a)
    assert http("GET", f"{a.url}/v1/tables/t/blocks/only-on-a")[0] == 404
    assert http("GET", f"{a.url}/v1/tables/t/blocks/k5")[0] == 200
    assert http("GET", f"{a.url}/v1/tables/t/blocks/k1")[1] == b"on b"
    # A reader of A's own log (its cache) that had read past the divergence is told to resynchronise from there.
    page = http_json("GET", f"{a.url}/v1/changes?after={old_last}")[1]
    assert old_last > page["lastLsn"] and page["gap"] is True and page["next"] == page["lastLsn"]


def test_read_your_writes(pair):
    a, b = pair
    role(b.url, mirror_of(a))
    caught_up(b, a)
    lsn = put(a.url, "ryw", b"fresh")
    req_ok = http_headers("GET", f"{b.url}/v1/tables/t/blocks/ryw", {"X-Chronoshard-Min-Lsn": str(lsn),
                                                                       "X-Chronoshard-Wait-Ms": "10000"})
    assert req_ok == (200, b"fresh")
    status, raw = http_headers("GET", f"{b.url}/v1/tables/t/frames/ryw",
                               {"X-Chronoshard-Min-Lsn": str(lsn + 1000), "X-Chronoshard-Wait-Ms": "100"})
    body = json.loads(raw)
    assert status == 409 and body["error"] == "lsn_not_reached" and body["appliedLsn"] >= lsn


def http_headers(method: str, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_repair_of_a_corrupted_range_makes_the_digests_equal(tmp_path, pair):
    a, b = pair
    role(b.url, mirror_of(a))
    for i in range(60):
        put(a.url, f"k{i}", os.urandom(30))
    caught_up(b, a)
    b.stop()
    db = sqlite3.connect(tmp_path / "b" / "data" / "blocks.sqlite3")
    with db:
        (frame, checksum) = db.execute("SELECT frame, checksum FROM blocks WHERE key = 'k1'").fetchone()
        db.execute("UPDATE blocks SET frame = ?, checksum = ? WHERE key = 'k7'", (frame, checksum))
    db.close()
    b.start()
    caught_up(b, a)
    status, d_a = http_json("GET", a.url + "/v1/digest")
    status, d_b = http_json("GET", f"{b.url}/v1/digest?atLsn={d_a['lsn']}")
    assert status == 200 and d_a["root"] != d_b["root"]
    differing = sorted(k for k in d_a["buckets"] if d_a["buckets"][k] != d_b["buckets"].get(k))
    assert len(differing) == 1
    put(a.url, "later", b"x")  # a change after the repair's snapshot still streams
    status, repaired = http_json("POST", b.url + "/v1/replication/repair", {"buckets": differing})
    assert status == 200 and repaired["buckets"] == differing and repaired["written"] >= 1
    caught_up(b, a)
    digests_equal(a, b)
    assert base64.b64encode(http("GET", f"{b.url}/v1/tables/t/blocks/k7")[1]) == base64.b64encode(
        http("GET", f"{a.url}/v1/tables/t/blocks/k7")[1])


def test_two_mirrors_held_at_the_same_lsn_agree_while_the_source_writes_on(tmp_path, keyring, pair):
    a, b = pair
    c = start(tmp_path, keyring, "c")
    try:
        role(b.url, mirror_of(a))
        role(c.url, mirror_of(a, consumer="mirror.ns.c"))
        writer = Writer(a.url)
        writer.start()
        wait_for(lambda: len(writer.acked) > 20, what="writes on the source")
        at = last_lsn(a.url) + 40  # ahead of both mirrors: each holds its apply there until its digest began
        results: dict[str, Any] = {}
        threads = [threading.Thread(target=lambda n=n, m=m: results.__setitem__(
            n, http_json("GET", f"{m.url}/v1/digest?atLsn={at}&waitSeconds=30"))) for n, m in (("b", b), ("c", c))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        wait_for(lambda: last_lsn(a.url) > at + 20, what="the source to write past the digests' LSN")
        writer.stop()
        (sb, db), (sc, dc) = results["b"], results["c"]
        assert sb == sc == 200, (db, dc)
        assert db["lsn"] == dc["lsn"] == at and db == dc
        caught_up(b, a)
        assert state(b.url)["appliedLsn"] > at  # the hold was lifted
    finally:
        c.stop()


def test_rejoin_whose_log_no_longer_reaches_the_divergence_re_seeds(tmp_path, keyring):
    a = launch(tmp_path, keyring, "a", {"changeLogRetain": 5, "changeLogMaxRetain": 10, "trimIntervalSeconds": 0.2})
    b = start(tmp_path, keyring, "b")
    a.wait_ready()
    try:
        role(b.url, mirror_of(a))
        for i in range(5):
            put(a.url, f"k{i}", b"v1")
        caught_up(b, a)
        diverge = role(b.url, {"term": 2, "role": "primary", "mode": "async", "mirrors": ["mirror.ns.a"],
                               "lsnFloor": last_lsn(a.url)})["promotedAtLsn"]
        for i in range(40):
            put(a.url, f"lost{i}", b"x")  # A, cut off, writes on; its retention trims past the divergence
        # Down to changeLogRetain (the old mirror's slot, behind, holds nothing): no later trim changes what is held.
        wait_for(lambda: http_json("GET", a.url + "/v1/status")[1]["changeLog"]["entries"] == 5,
                 what="A's log to be trimmed past the divergence point")
        held = [c[0] for c in change_lsns(a.url)]
        role(a.url, mirror_of(b, term=3, consumer="mirror.ns.a", diverge=diverge, shardset="ns/b"))
        st = caught_up(a, b)
        assert st["seeds"] == 1 and st["discardedLsns"] == held  # what the log still held past the divergence
        digests_equal(b, a)
        assert http("GET", f"{a.url}/v1/tables/t/blocks/lost39")[0] == 404
    finally:
        b.stop()
        a.stop()


def test_a_seed_cut_by_a_crash_is_done_again_on_restart(tmp_path, pair):
    a, b = pair
    for i in range(30):
        put(a.url, f"k{i}", os.urandom(40))
    role(b.url, mirror_of(a))
    caught_up(b, a)
    b.kill()
    # What kill -9 half way through a seed leaves: the marker set, only part of the blocks written.
    db = sqlite3.connect(tmp_path / "b" / "data" / "blocks.sqlite3")
    with db:
        db.execute("INSERT INTO meta (name, value) VALUES ('replication_seeding', '{\"lsn\": 30}')")
        db.execute("DELETE FROM blocks WHERE key > 'k2'")
    db.close()
    b.start()
    st = caught_up(b, a)
    assert st["seeds"] == 1 and st["seeding"] is False  # seeded again, not streamed on over half a copy
    digests_equal(a, b)


def test_read_your_writes_across_a_failover_needs_the_term(pair):
    """An old primary that kept writing after the mirror's promotion holds other writes under the new primary's
    LSNs: with the write's term it refuses to vouch for them (409), and a mirror of the new term answers once
    its rewind is done."""
    a, b = pair
    role(b.url, mirror_of(a))
    for i in range(5):
        put(a.url, f"k{i}", b"v1")
    caught_up(b, a)
    promoted = role(b.url, {"term": 2, "role": "primary", "mode": "async", "mirrors": ["mirror.ns.a"],
                            "lsnFloor": last_lsn(a.url)})
    for i in range(5):
        put(a.url, f"old-{i}", b"never acknowledged in sync mode")  # A, not yet fenced, runs ahead
    status, raw = http("PUT", f"{b.url}/v1/tables/t/blocks/ryw", b"on b")
    ack = json.loads(raw)
    assert status == 200 and ack["term"] == 2 and ack["lsn"] <= last_lsn(a.url)
    headers = {"X-Chronoshard-Min-Lsn": str(ack["lsn"]), "X-Chronoshard-Min-Term": "2", "X-Chronoshard-Wait-Ms": "100"}
    status, raw = http_headers("GET", f"{a.url}/v1/tables/t/blocks/ryw", headers)
    assert status == 409 and json.loads(raw)["error"] == "lsn_not_reached"
    # Without the term the old primary's LSN alone would have let a stale read through.
    bare = {k: v for k, v in headers.items() if k != "X-Chronoshard-Min-Term"}
    assert http_headers("GET", f"{a.url}/v1/tables/t/blocks/ryw", bare)[0] == 404
    role(a.url, mirror_of(b, term=2, consumer="mirror.ns.a", diverge=promoted["promotedAtLsn"], shardset="ns/b"))
    caught_up(a, b)
    headers["X-Chronoshard-Wait-Ms"] = "5000"
    assert http_headers("GET", f"{a.url}/v1/tables/t/blocks/ryw", headers) == (200, b"on b")
