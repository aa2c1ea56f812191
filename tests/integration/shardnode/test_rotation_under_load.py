"""A full key rotation, step by step as the operator drives it, under read/write load through a real cache."""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp

from tests.integration.shardnode.procs import cache, http_json, node, run_verify
from tests.support.kubelet_dir import write_keyring
from tests.support.waiting import wait_for, wait_for_async

K1, K2 = os.urandom(32), os.urandom(32)


def _all_report(urls: list[str], generation: int) -> bool:
    return all(http_json("GET", u + "/v1/keys")[1]["generation"] == generation for u in urls)


def test_rotation_with_zero_failed_requests(tmp_path):
    keyring = tmp_path / "keyring"
    write_keyring(keyring, 1, {1: ("primary", K1)})
    n = node(tmp_path, keyring, config={"keyringPollSeconds": 0.1}).start()
    c = cache(tmp_path, keyring, n.url).start()
    procs = [c, n]
    failures: list[str] = []
    latest: dict[str, bytes] = {}
    puts = [0]  # acknowledged PUTs so far
    stop = asyncio.Event()

    async def client(i: int, s: aiohttp.ClientSession) -> None:
        j = 0
        while not stop.is_set():
            key = f"c{i}-{j % 40}"
            val = os.urandom(256)
            async with s.put(f"{c.url}/v1/tables/rot/blocks/{key}", data=val) as r:
                if r.status != 200:
                    failures.append(f"PUT {key}: {r.status} {await r.text()}")
                else:
                    latest[key] = val
                    puts[0] += 1
            async with s.get(f"{c.url}/v1/tables/rot/blocks/{key}") as r:
                body = await r.read()
                if r.status != 200 or body != latest.get(key):
                    failures.append(f"GET {key}: {r.status}")
            j += 1

    async def rotate() -> dict:
        urls = [n.url, c.url]
        await asyncio.sleep(0.5)
        # 1. the new version arrives decrypt-only; wait until every process reports it
        write_keyring(keyring, 2, {1: ("primary", K1), 2: ("decrypt-only", K2)})
        await asyncio.to_thread(wait_for, lambda: _all_report(urls, 2))
        # 2. promote it; wait again
        write_keyring(keyring, 3, {1: ("decrypt-only", K1), 2: ("primary", K2)})
        await asyncio.to_thread(wait_for, lambda: _all_report(urls, 3))
        # 3. rewrap everything onto version 2
        assert (await asyncio.to_thread(http_json, "POST", n.url + "/v1/rewrap", {"batchSize": 20}))[0] == 202
        done = await asyncio.to_thread(wait_for, lambda: (lambda b: b if b["state"] == "done" else None)(
            http_json("GET", n.url + "/v1/rewrap")[1]))
        # 4. no block on version 1 any more (writes since the promotion used version 2): retire it
        counts = (await asyncio.to_thread(http_json, "GET", n.url + "/v1/keys"))[1]["blocks"]
        assert set(counts) == {"2"}, counts
        write_keyring(keyring, 4, {2: ("primary", K2)})
        await asyncio.to_thread(wait_for, lambda: _all_report(urls, 4))
        # Keep the load running on the final keyring until it has written every key (on a loaded machine the
        # whole rotation could pass before the clients got round all 160).
        final = puts[0]
        await wait_for_async(lambda: puts[0] >= final + 20 and len(latest) == 160, timeout=50,
                             what="writes on the final keyring and every key written")
        return done

    async def scenario() -> dict:
        async with aiohttp.ClientSession() as s:
            clients = [asyncio.create_task(client(i, s)) for i in range(4)]
            t0 = time.monotonic()
            try:
                done = await asyncio.wait_for(rotate(), timeout=60)
            finally:
                stop.set()
                await asyncio.gather(*clients)
            assert time.monotonic() - t0 < 60
            return done

    try:
        done = asyncio.run(scenario())
        assert failures == []
        assert done["failed"] == 0 and len(latest) == 160
        keys = http_json("GET", n.url + "/v1/keys")[1]
        assert keys["versions"] == [{"id": 2, "state": "primary"}] and keys["blocks"] == {"2": 160}
        assert run_verify(n.url)["passed"]
    finally:
        for p in procs:
            p.stop()
