"""Key prefetching end to end: real node, cache and predictor processes over a KEK-wrapped keyring."""

from __future__ import annotations

import json
import os
import random
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from chronoshard.shardnode.keys.provider import wrap_key

from tests.integration.shardnode.procs import BIN, Proc, free_port, http, http_json
from tests.support.waiting import wait_for

BLOCK = 1024
# Planted table chains: each job reads one of them in this order. Eight chains of three tables against a
# key cache of 4: a chain's keys are gone by the time it runs again, so only a prediction can have them ready.
CHAINS = [(f"orders{i}x", f"lines{i}x", f"stock{i}x") for i in range(8)]
NOISE = [f"misc{i}x" for i in range(24)]


def write_wrapped_keyring(root: Path) -> tuple[Path, Path]:
    """`keyring.json` + `v1.wrapped` and, in its own directory, `kek.key` (flat files)."""
    kek, master = os.urandom(32), os.urandom(32)
    keyring, kek_dir = root / "keyring", root / "kek"
    keyring.mkdir()
    kek_dir.mkdir()
    (keyring / "keyring.json").write_text(json.dumps({
        "format": 1, "generation": 1, "algorithm": "AES-256-GCM",
        "versions": [{"id": 1, "state": "primary", "created": "2026-11-22T00:00:00Z"}]}))
    (keyring / "v1.wrapped").write_bytes(wrap_key(kek, master, 1))
    (kek_dir / "kek.key").write_bytes(kek)
    return keyring, kek_dir


def predictor(tmp: Path, cache_url: str, config: Path) -> Proc:
    port = free_port()
    return Proc([str(BIN / "chronoshard-predictor"), "--insecure",
                 "--host", "127.0.0.1", "--port", str(port), "--cache-url",
                 cache_url, "--data-dir", str(tmp / "predictor"), "--config", str(config)], port,
                tmp / f"predictor-{port}.log")


def metric(url: str, name: str) -> float:
    _, body = http("GET", url + "/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
               if line.startswith(name) and not line.startswith("#"))


@pytest.fixture
def shard(tmp_path: Path) -> Iterator[tuple[Proc, Path]]:
    keyring, kek_dir = write_wrapped_keyring(tmp_path)
    np_, cp = free_port(), free_port()
    n = Proc([str(BIN / "chronoshard-node"), "--insecure", "--host", "127.0.0.1", "--port", str(np_), "--data-dir",
              str(tmp_path / "data"), "--keyring-dir", str(keyring), "--kek-dir", str(kek_dir)], np_,
             tmp_path / "node.log").start()
    (tmp_path / "cache.json").write_text(json.dumps({"keyCacheSize": 4}))
    # A block budget of 8 blocks: nearly every read decrypts a block from the node and needs its table key.
    c = Proc([str(BIN / "chronoshard-cache"), "--insecure",
              "--host", "127.0.0.1", "--port", str(cp), "--node-url", n.url,
              "--keyring-dir", str(keyring), "--kek-dir", str(kek_dir), "--unwrap-latency-ms", "2",
              "--config", str(tmp_path / "cache.json"), "--budget-bytes", str(8 * BLOCK)], cp,
             tmp_path / "cache.log")
    try:
        for table in (*(t for chain in CHAINS for t in chain), *NOISE):
            for b in range(8):
                status, _ = http("PUT", f"{n.url}/v1/tables/{table}/blocks/blk-{b}", os.urandom(BLOCK))
                assert status in (200, 201, 204)
        c.start()
        assert http_json("GET", c.url + "/v1/keys")[1]["wrapped"] == [1]
        yield c, tmp_path
    finally:
        c.stop()
        n.stop()


def read(cache_url: str, table: str, client: str, rng: random.Random) -> None:
    """One GET through the cache as `client` (the predictor counts successors per client)."""
    url = f"{cache_url}/v1/tables/{table}/blocks/blk-{rng.randrange(8)}"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"X-Client-Id": client}), timeout=10) as r:
        assert r.status == 200 and len(r.read()) == BLOCK


def jobs(cache_url: str, rng: random.Random, runs: int, first: int, pause: float) -> None:
    """Each job (its own client id) reads a chain in order; between jobs, two other tables."""
    for j in range(first, first + runs):
        for table in rng.choice(CHAINS):
            read(cache_url, table, f"job{j}", rng)
            time.sleep(pause)
        for table in rng.sample(NOISE, 2):
            read(cache_url, table, "noise", rng)


def test_predictor_prefetches_keys_of_a_planted_table_chain(shard: tuple[Proc, Path]) -> None:
    c, tmp = shard
    cfg = tmp / "predictor.json"
    cfg.write_text(json.dumps({
        "model": "stats", "horizonSeconds": 1, "scoreThreshold": 1.0,  # no block hints: keys only
        "minTrainAccesses": 150, "pollIntervalSeconds": 0.05, "retrainIntervalSeconds": 3600,
        "keyPrefetch": {"enabled": True, "scoreThreshold": 0.3, "maxKeysPerSecond": 100}}))
    p = predictor(tmp, c.url, cfg).start()
    try:
        st = http_json("GET", p.url + "/v1/status")[1]["keyHints"]
        assert st["enabled"] is True and st["model"] is None and "no model file" in st["modelError"]
        assert "key prefetching disabled until a new key model is trained" in p.log()
        rng = random.Random(3)
        jobs(c.url, rng, 60, 0, 0.0)  # training: 300 reads
        time.sleep(1.5)  # the last candidates' horizon passes, so they are labelled
        wait_for(lambda: http_json("GET", p.url + "/v1/status")[1]["keyHints"]["model"] == "stats", timeout=30)
        assert (tmp / "predictor" / "keymodel.bin").exists()

        before = http_json("GET", c.url + "/v1/cache")[1]["keyCache"]
        assert before["wrapped"] is True and before["capacity"] == 4
        jobs(c.url, rng, 20, 100, 0.25)  # the pause gives each hint time to reach the cache
        after = http_json("GET", c.url + "/v1/cache")[1]["keyCache"]
        assert after["prefetched"] - before["prefetched"] > 0, after
        # 40 chain steps (2 per job) were predictable; most of them find their key prefetched.
        assert after["prefetchUsed"] - before["prefetchUsed"] > 20, (before, after)
        st = http_json("GET", p.url + "/v1/status")[1]
        kh = st["keyHints"]
        # Used: the hinted table was read within the horizon (the chains); the noise tables' one-off successors
        # are the wasted ones.
        assert kh["used"] > 20 and kh["used"] + kh["wasted"] <= kh["sent"], kh
        assert kh["precision"] == pytest.approx(kh["used"] / (kh["used"] + kh["wasted"]))
        assert st["cacheError"] is None and st["hintsSent"] == 0  # no block hints

        def counters_agree() -> bool:
            # The predictor may still be handling the last reads (it long-polls the log), so compare fresh reads.
            now = http_json("GET", p.url + "/v1/status")[1]["keyHints"]
            return (metric(p.url, "chronoshard_predictor_key_hints_sent_total") == now["sent"]
                    and metric(p.url, "chronoshard_predictor_key_hints_used_total") == now["used"])

        wait_for(counters_agree, timeout=10)
        assert metric(c.url, "chronoshard_cache_key_prefetched_total") >= after["prefetched"] > 0
    finally:
        p.stop()

    # A restarted predictor loads its key model (and the successor statistics) from the volume.
    again = predictor(tmp, c.url, cfg).start()
    try:
        wait_for(lambda: "loaded stats key model" in again.log(), timeout=10)
        assert http_json("GET", again.url + "/v1/status")[1]["keyHints"]["model"] == "stats"
    finally:
        again.stop()


def test_key_prefetching_off_sends_no_key_hints(shard: tuple[Proc, Path]) -> None:
    c, tmp = shard
    cfg = tmp / "predictor.json"
    cfg.write_text(json.dumps({"model": "stats", "horizonSeconds": 1, "scoreThreshold": 1.0,
                               "minTrainAccesses": 150, "pollIntervalSeconds": 0.05}))
    p = predictor(tmp, c.url, cfg).start()
    try:
        jobs(c.url, random.Random(4), 60, 0, 0.0)
        wait_for(lambda: http_json("GET", p.url + "/v1/status")[1]["cursor"] >= 300, timeout=10)
        st = http_json("GET", p.url + "/v1/status")[1]["keyHints"]
        assert st["enabled"] is False and st["sent"] == 0 and st["model"] is None
        kc = http_json("GET", c.url + "/v1/cache")[1]["keyCache"]
        assert kc["prefetched"] == 0 and kc["misses"] > 0
        assert not (tmp / "predictor" / "keymodel.bin").exists()  # disabled: no training, no CPU spent
    finally:
        p.stop()
