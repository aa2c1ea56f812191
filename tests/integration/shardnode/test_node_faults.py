"""Real `chronoshard-node` processes: kill -9 mid-burst and mid-rewrap, tampering on disk, missing key versions."""

from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
import time

import aiohttp
import pytest

from tests.integration.shardnode.procs import http, http_json, node, run_verify
from tests.support.kubelet_dir import write_keyring
from tests.support.waiting import wait_for

K1, K2 = os.urandom(32), os.urandom(32)


@pytest.fixture
def keyring(tmp_path):
    d = tmp_path / "keyring"
    write_keyring(d, 1, {1: ("primary", K1)})
    return d


async def _burst(url: str, acked: dict[str, bytes], stop_after: float, writers: int = 16) -> None:
    """Concurrent writers until the node dies; only 200 answers count as acknowledged."""
    async with aiohttp.ClientSession() as s:
        async def writer(w: int) -> None:
            i = 0
            while True:
                key, val = f"w{w}-{i}", os.urandom(64 + (i % 7) * 100)
                try:
                    async with s.put(f"{url}/v1/tables/burst/blocks/{key}", data=val) as r:
                        if r.status == 200:
                            acked[key] = val
                except (TimeoutError, aiohttp.ClientError):
                    return  # the node is gone
                i += 1

        tasks = [asyncio.create_task(writer(w)) for w in range(writers)]
        await asyncio.wait(tasks, timeout=stop_after + 15)


def _all_present(url: str, table: str, expected: dict[str, bytes]) -> list[str]:
    """Keys whose stored value differs from what was acknowledged."""
    bad = []
    keys = sorted(expected)
    for i in range(0, len(keys), 500):
        chunk = keys[i:i + 500]
        status, body = http_json("POST", f"{url}/v1/tables/{table}/blocks:batchGet", {"keys": chunk})
        assert status == 200
        for item in body["blocks"]:
            if not item["found"] or base64.b64decode(item.get("value", "")) != expected[item["key"]]:
                bad.append(item["key"])
    return bad


def test_kill9_during_write_burst_loses_no_acknowledged_write(tmp_path, keyring):
    n = node(tmp_path, keyring).start()
    acked: dict[str, bytes] = {}

    async def scenario() -> None:
        burst = asyncio.create_task(_burst(n.url, acked, stop_after=1.5))
        while len(acked) < 300:  # well into the burst, with commits in flight
            await asyncio.sleep(0.05)
        await asyncio.to_thread(n.kill)
        await burst

    asyncio.run(scenario())
    n2 = node(tmp_path, keyring, port=n.port).start()
    try:
        assert len(acked) >= 300
        assert _all_present(n2.url, "burst", acked) == []
        rep = run_verify(n2.url)
        assert rep["passed"] and rep["scanned"] >= len(acked)
        # the change log is complete and ordered: one put per stored block, LSNs without gaps
        status, page = http_json("GET", f"{n2.url}/v1/changes?after=0&limit=1000")
        lsns = [c["lsn"] for c in page["changes"]]
        assert lsns == list(range(1, len(lsns) + 1))
    finally:
        n2.stop()


def test_kill9_during_rewrap_resumes_and_nothing_is_unreadable(tmp_path, keyring):
    n = node(tmp_path, keyring, config={"rewrapPauseSeconds": 0.02}).start()
    try:
        values = {f"k{i:05}": os.urandom(200) for i in range(3000)}

        async def fill() -> None:
            async with aiohttp.ClientSession() as s:
                sem = asyncio.Semaphore(32)

                async def put(k: str, v: bytes) -> None:
                    async with sem, s.put(f"{n.url}/v1/tables/rw/blocks/{k}", data=v) as r:
                        assert r.status == 200

                await asyncio.gather(*(put(k, v) for k, v in values.items()))

        asyncio.run(fill())
        write_keyring(keyring, 2, {1: ("decrypt-only", K1), 2: ("primary", K2)})
        wait_for(lambda: http_json("GET", n.url + "/v1/keys")[1]["primary"] == 2)
        assert http_json("POST", n.url + "/v1/rewrap", {"batchSize": 50})[0] == 202
        acked: dict[str, bytes] = {}  # new blocks written while the rewrap runs

        async def burst_then_kill() -> None:
            burst = asyncio.create_task(_burst(n.url, acked, stop_after=5, writers=8))
            while len(acked) < 100 or (await asyncio.to_thread(
                    lambda: http_json("GET", n.url + "/v1/rewrap")[1]["rewrapped"])) < 500:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(n.kill)
            await burst

        asyncio.run(burst_then_kill())
    finally:
        n.stop()
    n2 = node(tmp_path, keyring, port=n.port).start()
    try:
        st = http_json("GET", n2.url + "/v1/rewrap")[1]
        assert st["rewrapped"] >= 500 and st["state"] in ("running", "done")
        assert "resuming interrupted rewrap" in n2.log()  # the crash left it mid-run; it resumed on its own
        done = wait_for(lambda: (lambda b: b if b["state"] == "done" else None)(
            http_json("GET", n2.url + "/v1/rewrap")[1]), timeout=60)
        counts = done["blocks"]
        assert set(counts) == {"2"} and counts["2"] >= 3000 + len(acked)  # old blocks moved, new ones on v2
        assert done["failed"] == 0 and done["remaining"] == 0
        assert _all_present(n2.url, "rw", values) == []
        assert _all_present(n2.url, "burst", acked) == []
        rep = run_verify(n2.url)
        assert rep["passed"] and rep["scanned"] == counts["2"]
    finally:
        n2.stop()


def test_bit_flipped_in_sqlite_file_is_detected_and_never_served(tmp_path, keyring):
    n = node(tmp_path, keyring).start()
    plaintext = b"TOP-SECRET-" * 20
    for i in range(20):
        assert http("PUT", f"{n.url}/v1/tables/t/blocks/k{i}", plaintext)[0] == 200
    n.stop()  # clean stop checkpoints the WAL into the main file
    db = tmp_path / "data" / "blocks.sqlite3"
    conn = sqlite3.connect(db)
    (frame,) = conn.execute("SELECT frame FROM blocks WHERE key = 'k7'").fetchone()
    conn.close()
    raw = bytearray(db.read_bytes())
    assert raw.count(frame) == 1
    pos = raw.index(frame) + 40  # a ciphertext byte of the stored frame, in the file itself
    raw[pos] ^= 0x10
    db.write_bytes(bytes(raw))
    n = node(tmp_path, keyring, port=n.port).start()
    try:
        status, body = http("GET", f"{n.url}/v1/tables/t/blocks/k7")
        assert status == 500 and b"TOP-SECRET" not in body and b"integrity_error" in body
        assert http("GET", f"{n.url}/v1/tables/t/blocks/k6") == (200, plaintext)
        rep = run_verify(n.url)
        assert not rep["passed"] and rep["corrupt"] == 1 and rep["ok"] == 19
        assert rep["problems"][0]["key"] == "k7" and rep["problems"][0]["reason"] == "tag"
        metrics = http("GET", n.url + "/metrics")[1].decode()
        assert 'chronoshard_node_verify_last_failures 1.0' in metrics
        assert 'chronoshard_node_integrity_failures_total{reason="tag",source="verify"} 1.0' in metrics
        assert 'chronoshard_node_integrity_failures_total{reason="tag",source="read"} 1.0' in metrics
    finally:
        n.stop()


def test_block_under_retired_version_answers_error_naming_the_version(tmp_path, keyring):
    n = node(tmp_path, keyring).start()
    try:
        assert http("PUT", f"{n.url}/v1/tables/t/blocks/k", b"v1-data")[0] == 200
        write_keyring(keyring, 2, {2: ("primary", K2)})  # version 1 removed while a block still uses it
        wait_for(lambda: http_json("GET", n.url + "/v1/keys")[1]["generation"] == 2)
        status, body = http_json("GET", f"{n.url}/v1/tables/t/blocks/k")
        assert status == 503 and body["error"] == "key_version_missing" and body["keyVersion"] == 1
        assert "key version 1" in body["message"] and K1.hex() not in body["message"]
        assert http_json("GET", n.url + "/v1/keys")[1]["blocks"] == {"1": 1}  # the operator can see it
    finally:
        n.stop()


def test_keyring_hot_reload_under_load_and_bad_keyring_keeps_old(tmp_path, keyring):
    n = node(tmp_path, keyring, config={"keyringPollSeconds": 0.05}).start()
    errors: list[str] = []
    done = time.monotonic() + 3.0

    async def load() -> int:
        count = 0
        async with aiohttp.ClientSession() as s:
            async def client(c: int) -> None:
                nonlocal count
                i = 0
                while time.monotonic() < done:
                    k = f"c{c}-{i % 50}"
                    async with s.put(f"{n.url}/v1/tables/hot/blocks/{k}", data=k.encode()) as r:
                        if r.status != 200:
                            errors.append(f"PUT {r.status} {await r.text()}")
                    async with s.get(f"{n.url}/v1/tables/hot/blocks/{k}") as r:
                        if r.status != 200 or await r.read() != k.encode():
                            errors.append(f"GET {r.status}")
                    i += 1
                    count += 1

            await asyncio.gather(*(client(c) for c in range(8)))
        return count

    async def rotate() -> None:
        await asyncio.sleep(0.5)
        write_keyring(keyring, 2, {1: ("decrypt-only", K1), 2: ("primary", K2)})
        await asyncio.sleep(0.7)
        write_keyring(keyring, 3, {}, manifest_text='{"format": 1, "generation": 3, "versions": [')
        await asyncio.sleep(0.7)

    async def scenario() -> int:
        count, _ = await asyncio.gather(load(), rotate())
        return count

    try:
        count = asyncio.run(scenario())
        assert errors == [] and count > 100
        keys = http_json("GET", n.url + "/v1/keys")[1]
        assert keys["generation"] == 2 and keys["primary"] == 2  # the broken generation 3 was not taken
        assert "not valid JSON" in keys["loadError"]
        assert set(keys["blocks"]) <= {"1", "2"} and keys["blocks"].get("2", 0) > 0
        metrics = http("GET", n.url + "/metrics")[1].decode()
        assert "chronoshard_node_keyring_load_error 1.0" in metrics
        assert 'chronoshard_node_keyring_reloads_total{result="error"} 1.0' in metrics
        assert "keyring reload failed, keeping generation 2" in n.log()
        for k in (K1, K2):
            assert k.hex() not in n.log() and k.hex() not in metrics
        write_keyring(keyring, 4, {2: ("primary", K2)} | {1: ("decrypt-only", K1)})
        wait_for(lambda: http_json("GET", n.url + "/v1/keys")[1]["loadError"] is None)
    finally:
        n.stop()


def test_second_node_on_the_same_data_dir_refuses_to_start(tmp_path, keyring):
    n = node(tmp_path, keyring).start()
    try:
        second = node(tmp_path, keyring)
        with pytest.raises(RuntimeError, match="exited 2"):
            second.start()
        assert "refusing to start a second node" in second.log()
        assert http("PUT", f"{n.url}/v1/tables/t/blocks/k", b"v")[0] == 200  # the first one is unaffected
    finally:
        n.stop()
