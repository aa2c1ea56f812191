"""Node and cache processes on a KEK-wrapped keyring: round trip, a full rotation with rewrap, reloads, a wrong
KEK, slow unwraps that do not block other requests, key hints, and no key bytes in any log or answer."""

from __future__ import annotations

import base64
import json
import os
import re
import threading
from pathlib import Path

from chronoshard.shardnode.keys.keyring import derive_table_key

from tests.integration.shardnode.procs import cache, http, http_json, node
from tests.support.kubelet_dir import write_kek, write_keyring
from tests.support.waiting import wait_for

KEK, OTHER_KEK = os.urandom(32), os.urandom(32)
K1, K2 = os.urandom(32), os.urandom(32)
TABLES = ("orders", "users", "events")


def secret_forms(*keys: bytes) -> list[str]:
    """Hex, base64 and Python-repr forms of every key and of every table key derived from it."""
    all_keys = list(keys) + [derive_table_key(k, t) for k in keys for t in TABLES + ("hot", "cold", "hinted")]
    return [f for k in all_keys for f in (k.hex(), base64.b64encode(k).decode(), repr(k)[2:-1])]


def assert_no_key_bytes(text: str, *keys: bytes) -> None:
    leaked = [f for f in secret_forms(*keys) if f in text]
    assert not leaked, "key material found"


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def reports(urls: list[str], generation: int) -> bool:
    return all(http_json("GET", u + "/v1/keys")[1]["generation"] == generation for u in urls)


def start_pair(tmp: Path, keyring: Path, *cache_args: str, cache_cfg: dict | None = None):
    n = node(tmp, keyring, config={"keyringPollSeconds": 0.1})
    n.argv += ["--kek-dir", str(tmp / "kek"), "--log-level", "DEBUG"]
    n.start()
    (tmp / "cache.json").write_text(json.dumps({"keyringPollSeconds": 0.1, **(cache_cfg or {})}))
    c = cache(tmp, keyring, n.url, "--kek-dir", str(tmp / "kek"), "--config", str(tmp / "cache.json"),
              "--log-level", "DEBUG", *cache_args)
    try:
        c.start()
    except Exception:
        n.stop()
        raise
    return n, c


def test_wrapped_keyring_round_trip_rotation_and_reloads(tmp_path):
    keyring = tmp_path / "keyring"
    write_kek(tmp_path / "kek", KEK)
    write_keyring(keyring, 1, {1: ("primary", K1)}, kek=KEK, wrapped={1})
    n, c = start_pair(tmp_path, keyring)
    urls = [n.url, c.url]
    expected: dict[tuple[str, str], bytes] = {}
    failures: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        # Reads through the cache the whole time: a reload or a rotation step must never fail one.
        i = 0
        while not stop.is_set():
            (t, k), v = list(expected.items())[i % len(expected)]
            status, body = http("GET", f"{c.url}/v1/tables/{t}/blocks/{k}")
            if status != 200 or body != v:
                failures.append(f"{t}/{k}: {status}")
            i += 1

    try:
        for t in TABLES:
            for j in range(6):
                v = os.urandom(64)
                # half through the cache (write-through), half straight to the node (the cache must decrypt)
                assert http("PUT", f"{(c if j % 2 else n).url}/v1/tables/{t}/blocks/k{j}", v)[0] == 200
                expected[(t, f"k{j}")] = v
        for (t, k), v in expected.items():
            assert http("GET", f"{n.url}/v1/tables/{t}/blocks/{k}") == (200, v)
        assert http_json("GET", n.url + "/v1/keys")[1]["wrapped"] == [1]
        assert http_json("GET", c.url + "/v1/keys")[1]["wrapped"] == [1]
        th = threading.Thread(target=reader)
        th.start()
        try:
            # a new wrapped version arrives decrypt-only, is promoted, everything is rewrapped, the old one retired
            write_keyring(keyring, 2, {1: ("primary", K1), 2: ("decrypt-only", K2)}, kek=KEK, wrapped={1, 2})
            wait_for(lambda: reports(urls, 2))
            write_keyring(keyring, 3, {1: ("decrypt-only", K1), 2: ("primary", K2)}, kek=KEK, wrapped={1, 2})
            wait_for(lambda: reports(urls, 3))
            assert http_json("POST", n.url + "/v1/rewrap", {"batchSize": 4})[0] == 202
            wait_for(lambda: http_json("GET", n.url + "/v1/rewrap")[1]["state"] == "done")
            assert http_json("GET", n.url + "/v1/keys")[1]["blocks"] == {"2": len(expected)}
            write_keyring(keyring, 4, {2: ("primary", K2)}, kek=KEK, wrapped={2})
            wait_for(lambda: reports(urls, 4))
            # a keyring whose blob does not unwrap under the KEK is refused; generation 4 stays in force
            write_keyring(keyring, 5, {2: ("primary", K2)}, kek=OTHER_KEK, wrapped={2})
            wait_for(lambda: all(http_json("GET", u + "/v1/keys")[1]["loadError"] for u in urls))
            for u in urls:
                body = http_json("GET", u + "/v1/keys")[1]
                assert body["generation"] == 4 and "version 2 is wrapped but cannot be unwrapped" in body["loadError"]
        finally:
            stop.set()
            th.join(30)
        assert failures == []
        misses = http_json("GET", c.url + "/v1/cache")[1]["keyCache"]["misses"]
        assert misses >= len(TABLES)  # the node-written blocks were decrypted by the cache
        for (t, k), v in expected.items():  # every block is on version 2 now
            assert http("GET", f"{n.url}/v1/tables/{t}/blocks/{k}") == (200, v)
        # New values straight to the node: the change-log tail invalidates the cached copies, and the cache
        # decrypts the new frames under version 2 (its version-1 table keys were dropped with version 1).
        for key in list(expected):
            expected[key] = os.urandom(64)
            status, body = http("PUT", f"{n.url}/v1/tables/{key[0]}/blocks/{key[1]}", expected[key])
            assert status == 200 and json.loads(body)["keyVersion"] == 2
        for (t, k), v in expected.items():
            wait_for(lambda t=t, k=k, v=v: http("GET", f"{c.url}/v1/tables/{t}/blocks/{k}") == (200, v))
        kc = http_json("GET", c.url + "/v1/cache")[1]["keyCache"]
        assert kc["wrapped"] is True and kc["misses"] >= misses + len(TABLES) and kc["held"] == len(TABLES)
        texts = [http("GET", u + p)[1].decode() for u in urls for p in ("/metrics", "/v1/keys")]
        texts.append(http("GET", c.url + "/v1/cache")[1].decode())
    finally:
        c.stop()
        n.stop()
    for text in [n.log_path.read_text(errors="replace"), c.log_path.read_text(errors="replace"), *texts]:
        assert_no_key_bytes(text, KEK, OTHER_KEK, K1, K2)
    assert "keyring loaded" in n.log_path.read_text()  # the logs were captured (DEBUG level)


def test_slow_unwrap_does_not_block_other_requests_and_hints_prevent_misses(tmp_path):
    keyring = tmp_path / "keyring"
    write_kek(tmp_path / "kek", KEK)
    write_keyring(keyring, 1, {1: ("primary", K1)}, kek=KEK, wrapped={1})
    # 1.5 s per unwrap, standing in for a KMS round trip
    n, c = start_pair(tmp_path, keyring, "--unwrap-latency-ms", "1500")
    try:
        for t in ("hot", "cold", "hinted"):
            assert http("PUT", f"{n.url}/v1/tables/{t}/blocks/k", t.encode())[0] == 200
        assert http("GET", f"{c.url}/v1/tables/hot/blocks/k") == (200, b"hot")  # one slow miss; block cached
        assert http_json("GET", c.url + "/v1/cache")[1]["keyCache"]["misses"] == 1

        order: list[str] = []

        def read(table: str) -> None:
            status, body = http("GET", f"{c.url}/v1/tables/{table}/blocks/k", timeout=30)
            assert (status, body) == (200, table.encode())
            order.append(table)

        cold = threading.Thread(target=read, args=("cold",))
        cold.start()
        # The cold read is inside its unwrap once its miss is counted (counted before the unwrap starts);
        # this poll itself is only answered because the unwrap is not on the event loop.
        wait_for(lambda: http_json("GET", c.url + "/v1/cache")[1]["keyCache"]["misses"] == 2, timeout=20,
                 interval=0.01)
        read("hot")
        cold.join(30)
        assert order == ["hot", "cold"]

        # A key hint: the next read of that table does not wait for an unwrap.
        status, body = http_json("POST", c.url + "/v1/prefetch/keys", {"keys": [{"table": "hinted", "score": 0.9}]})
        assert (status, body) == (202, {"queued": 1, "dropped": 0})
        wait_for(lambda: http_json("GET", c.url + "/v1/cache")[1]["keyCache"]["prefetched"] == 1, timeout=20)
        before = http_json("GET", c.url + "/v1/cache")[1]["keyCache"]
        assert http("GET", f"{c.url}/v1/tables/hinted/blocks/k") == (200, b"hinted")
        after = http_json("GET", c.url + "/v1/cache")[1]["keyCache"]
        assert after["misses"] == before["misses"] and after["hits"] == before["hits"] + 1
        assert after["prefetchUsed"] == 1
        m = http("GET", c.url + "/metrics")[1].decode()
        assert metric(m, "chronoshard_cache_key_prefetch_used_total") == 1
        assert metric(m, "chronoshard_cache_key_misses_total") == 2
        assert metric(m, "chronoshard_cache_key_unwrap_seconds_count", '{path="prefetch"}') == 1
        # every demand unwrap took at least the configured latency
        assert metric(m, "chronoshard_cache_key_unwrap_seconds_bucket", '{le="1.0",path="demand"}') == 0
        assert metric(m, "chronoshard_cache_key_unwrap_seconds_bucket", '{le="+Inf",path="demand"}') == 2
    finally:
        c.stop()
        n.stop()
    for p in (n.log_path, c.log_path):
        assert_no_key_bytes(p.read_text(errors="replace"), KEK, K1)


def test_processes_refuse_a_wrapped_keyring_without_kek_dir(tmp_path):
    keyring = tmp_path / "keyring"
    write_keyring(keyring, 1, {1: ("primary", K1)}, kek=KEK, wrapped={1})
    n = node(tmp_path, keyring)
    try:
        try:
            n.start(timeout=5)
            raise AssertionError("a node without --kek-dir became ready on a wrapped keyring")
        except TimeoutError:
            pass
        body = http_json("GET", n.url + "/v1/keys")
        assert body[0] == 200 and body[1]["loadError"] == (
            "version 1 is wrapped but no KEK directory is configured (--kek-dir)")
    finally:
        n.stop()
    assert_no_key_bytes(n.log_path.read_text(errors="replace"), KEK, K1)
