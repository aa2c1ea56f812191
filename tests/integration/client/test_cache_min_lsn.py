"""Read-your-writes and the write refusals through real `chronoshard-cache` processes in front of real nodes
(docs/mirroring.md, "Clients and the CLI during trouble"): a cache in front of a mirror node passes its 409
lsn_not_reached and 503 not_primary (with Retry-After) through unchanged, answers once the mirror applied the LSN,
and a cache that forwards a key to its owner's cache forwards the Min-LSN and wait headers with it."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from chronoshard.shardnode.keyspace.partitioning import initial_map

from tests.integration.shardnode.procs import cache, http_json, node
from tests.support.kubelet_dir import write_keyring
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

MIN, WAIT = "X-Chronoshard-Min-Lsn", "X-Chronoshard-Wait-Ms"


def request(method: str, url: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def test_a_cache_before_a_mirror_passes_its_refusals_through(tmp_path: Path):
    keyring = tmp_path / "keyring"
    write_keyring(keyring, 1, {1: ("primary", os.urandom(32))})
    procs = []
    try:
        for name in ("a", "b"):  # both launched, then both waited for: the cold starts overlap
            (tmp_path / name).mkdir()
            procs.append(node(tmp_path / name, keyring).launch())
        a, b = (p.wait_ready() for p in procs)
        assert http_json("PUT", b.url + "/v1/replication", {
            "term": 1, "role": "mirror", "mode": "async", "source": {"url": a.url, "shardSet": "ns/a"},
            "consumer": "mirror.ns.b", "divergeLsn": None})[0] == 200
        c = cache(tmp_path, keyring, b.url).start()
        procs.append(c)
        status, body, _ = request("PUT", f"{a.url}/v1/tables/t/blocks/k", b"v1")
        lsn = json.loads(body)["lsn"]
        # Answered once the mirror applied the write (the node waits up to Wait-Ms).
        status, body, headers = request("GET", f"{c.url}/v1/tables/t/blocks/k", None, {MIN: str(lsn), WAIT: "10000"})
        assert (status, body, headers["X-Chronoshard-Cache"]) == (200, b"v1", "miss")
        # An LSN the mirror does not reach: its 409 with its applied LSN, unchanged.
        status, body, _ = request("GET", f"{c.url}/v1/tables/t/blocks/k", None, {MIN: str(lsn + 1000), WAIT: "100"})
        doc = json.loads(body)
        assert status == 409 and doc["error"] == "lsn_not_reached" and doc["appliedLsn"] >= lsn
        status, body, _ = request("POST", f"{c.url}/v1/tables/t/blocks:batchGet", json.dumps({"keys": ["k"]}).encode(),
                                  {MIN: str(lsn + 1000), WAIT: "100", "Content-Type": "application/json"})
        assert status == 409 and json.loads(body)["error"] == "lsn_not_reached"
        # A write to the mirror: 503 not_primary naming the primary, and Retry-After.
        status, body, headers = request("PUT", f"{c.url}/v1/tables/t/blocks/k", b"nope")
        doc = json.loads(body)
        assert status == 503 and headers["Retry-After"] == "1"
        assert (doc["error"], doc["role"], doc["term"], doc["primaryShardSet"]) == ("not_primary", "mirror", 1, "ns/a")
    finally:
        for p in reversed(procs):
            p.stop()


def test_a_forwarded_read_keeps_its_min_lsn(caches):
    pmap = initial_map(3)
    key = next(f"k{i}" for i in range(1000) if pmap.shard_of("t", f"k{i}") == 1)
    owner, other = caches.urls[1], caches.urls[0]
    status, body, _ = request("PUT", f"{owner}/v1/tables/t/blocks/{key}", b"v")
    lsn = json.loads(body)["lsn"]
    wait_for(lambda: request("GET", f"{owner}/v1/tables/t/blocks/{key}")[2]["X-Chronoshard-Cache"] == "hit",
             what="the owner's cache to hold the block")
    # Shard 0's cache forwards to shard 1's, which has the block in memory but has not seen LSN lsn+1000: only
    # with the header does it read through, and its node refuses.
    status, body, _ = request("GET", f"{other}/v1/tables/t/blocks/{key}", None, {MIN: str(lsn + 1000), WAIT: "50"})
    assert status == 409 and json.loads(body)["error"] == "lsn_not_reached"
    status, body, headers = request("GET", f"{other}/v1/tables/t/blocks/{key}", None, {MIN: str(lsn)})
    assert (status, body) == (200, b"v")
