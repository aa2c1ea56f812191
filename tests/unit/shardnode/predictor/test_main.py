"""`chronoshard-predictor` as a real process against a real `chronoshard-cache` and `chronoshard-node`."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.client.shards import write_keyring
from tests.integration.shardnode.procs import BIN, Proc, cache, free_port, http, http_json, node, wait_for

BLOCK = 4096


def predictor(tmp: Path, cache_url: str, config: Path) -> Proc:
    port = free_port()
    argv = [str(BIN / "chronoshard-predictor"), "--insecure",
            "--host", "127.0.0.1", "--port", str(port), "--cache-url", cache_url,
            "--data-dir", str(tmp / "predictor"), "--config", str(config)]
    return Proc(argv, port, tmp / f"predictor-{port}.log")


def metric(url: str, name: str) -> float:
    _, body = http("GET", url + "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def shard(tmp_path: Path) -> Iterator[tuple[Proc, Proc, Path]]:
    write_keyring(tmp_path / "keyring")
    n = node(tmp_path, tmp_path / "keyring").start()
    c = cache(tmp_path, tmp_path / "keyring", n.url, "--budget-bytes", str(64 << 20)).start()
    try:
        for i in range(800):  # straight into the node, so the cache starts cold
            status, _ = http("PUT", f"{n.url}/v1/tables/t/blocks/blk-{i:06d}", bytes([i % 251]) * BLOCK)
            assert status in (200, 201, 204)
        yield n, c, tmp_path
    finally:
        c.stop()
        n.stop()


def scan(cache_url: str, start: int, length: int, pause: float) -> list[bool]:
    """Read a run of consecutive blocks through the cache; True where the cache already had the block."""
    hits = []
    for i in range(start, start + length):
        status, body = http("GET", f"{cache_url}/v1/tables/t/blocks/blk-{i:06d}")
        assert status == 200 and len(body) == BLOCK
        hits.append(True)
        time.sleep(pause)
    return hits


def test_predictor_process_learns_scans_and_the_cache_prefetches(shard: tuple[Proc, Proc, Path]) -> None:
    _, c, tmp = shard
    cfg = tmp / "predictor.json"
    cfg.write_text(json.dumps({"model": "stats", "horizonSeconds": 2, "scoreThreshold": 0.5, "blockBytes": BLOCK,
                               "minTrainAccesses": 150, "pollIntervalSeconds": 0.05,
                               "retrainIntervalSeconds": 3600}))
    p = predictor(tmp, c.url, cfg).start()
    try:
        st = http_json("GET", p.url + "/v1/status")[1]
        assert st["model"] is None and "no model file" in st["modelError"]
        assert "prefetching disabled" in p.log()
        rng = random.Random(5)
        for _ in range(10):  # training phase: scans in the first 400 blocks
            scan(c.url, rng.randrange(0, 380), 20, 0.0)
        time.sleep(2.5)  # the last candidates' horizon has to pass before they are labelled
        wait_for(lambda: http_json("GET", p.url + "/v1/status")[1]["model"] == "stats", timeout=30)
        assert (tmp / "predictor" / "model.bin").exists()

        used_before = metric(c.url, "chronoshard_cache_prefetches_used_total")
        first_seq = http_json("GET", c.url + "/v1/access-log?after=0&limit=1")[1]["last"]
        for start in (420, 480, 540, 600, 660):  # blocks nobody has read yet
            scan(c.url, start, 40, 0.1)
        entries = http_json("GET", f"{c.url}/v1/access-log?after={first_seq}&limit=1000")[1]["entries"]
        hit_rate = sum(e["hit"] for e in entries) / len(entries)
        assert len(entries) == 200
        # Cold blocks: without prefetching every read would miss; the first blocks of each scan still do.
        assert hit_rate > 0.6, hit_rate
        assert metric(c.url, "chronoshard_cache_prefetches_used_total") - used_before > 100
        assert metric(p.url, "chronoshard_predictor_hints_sent_total") > 100
        st = http_json("GET", p.url + "/v1/status")[1]
        assert st["precision"] > 0.7 and st["cacheError"] is None

        # Hot reload: the PrefetchPolicy switches prefetching off; no more hints are sent.
        cfg.write_text(json.dumps({"enabled": False, "blockBytes": BLOCK, "pollIntervalSeconds": 0.1}))
        wait_for(lambda: http_json("GET", p.url + "/v1/status")[1]["enabled"] is False, timeout=10)
        sent = metric(p.url, "chronoshard_predictor_hints_sent_total")
        scan(c.url, 700, 40, 0.05)
        # The predictor is done with those reads once a later tick has fetched an access made after it read them.
        for what in ("the scan", "a later read"):
            last = http_json("GET", c.url + "/v1/access-log?after=0&limit=1")[1]["last"]
            wait_for(lambda last=last: http_json("GET", p.url + "/v1/status")[1]["cursor"] >= last, timeout=10,
                     what=f"the predictor to read {what}")
            scan(c.url, 0, 1, 0.0)
        assert metric(p.url, "chronoshard_predictor_hints_sent_total") == sent

        # A broken file keeps the previous settings and says why.
        cfg.write_text("{not json")
        wait_for(lambda: http_json("GET", p.url + "/v1/status")[1]["configError"], timeout=10)
        assert http_json("GET", p.url + "/v1/status")[1]["enabled"] is False
        assert metric(p.url, "chronoshard_predictor_config_errors_total") >= 1
        assert http("GET", p.url + "/healthz")[0] == 200
    finally:
        p.stop()


def test_predictor_survives_a_cache_outage(tmp_path: Path) -> None:
    cfg = tmp_path / "predictor.json"
    cfg.write_text(json.dumps({"pollIntervalSeconds": 0.1}))
    p = predictor(tmp_path, f"http://127.0.0.1:{free_port()}", cfg).start()
    try:
        wait_for(lambda: metric(p.url, "chronoshard_predictor_cache_errors_total") >= 2, timeout=10)
        st = http_json("GET", p.url + "/v1/status")[1]
        assert st["cacheError"] and http("GET", p.url + "/readyz")[0] == 200
    finally:
        p.stop()
