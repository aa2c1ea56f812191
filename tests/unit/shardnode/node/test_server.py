"""The node HTTP API against a real on-disk store: happy paths, JSON errors, nothing changed on bad input."""

import asyncio
import base64
import json

import pytest
from chronoshard.shardnode.keys import frames

from tests.support.kubelet_dir import write_keyring
from tests.support.servers import KEY1, KEY2, node_and_cache
from tests.support.waiting import wait_for_async


@pytest.fixture
async def env(tmp_path):
    async with node_and_cache(tmp_path) as e:
        yield e


async def _json(resp):
    assert resp.content_type == "application/json"
    return await resp.json()


async def test_put_get_delete_and_headers(env):
    node, _, s, _, _ = env
    r = await s.put(f"{node}/v1/tables/users/blocks/alice", data=b"\x00\x01payload")
    assert r.status == 200 and (await r.json()) == {"table": "users", "key": "alice", "lsn": 1, "term": 0,
                                                     "keyVersion": 1, "size": 9}
    r = await s.get(f"{node}/v1/tables/users/blocks/alice")
    assert r.status == 200 and await r.read() == b"\x00\x01payload"
    assert r.headers["X-Chronoshard-Key-Version"] == "1" and r.headers["X-Chronoshard-Lsn"] == "1"
    r = await s.delete(f"{node}/v1/tables/users/blocks/alice")
    assert (await r.json()) == {"table": "users", "key": "alice", "lsn": 2, "term": 0}
    r = await s.get(f"{node}/v1/tables/users/blocks/alice")
    assert r.status == 404 and (await _json(r))["error"] == "not_found"


async def test_keys_with_reserved_characters_round_trip(env):
    node, _, s, _, _ = env
    from yarl import URL

    for key in ["a b", "100%", "q?x=1", "ünïcødé", "#frag", ".hidden"]:
        url = URL(node) / "v1" / "tables" / "t" / "blocks" / key
        assert (await s.put(url, data=key.encode())).status == 200
        r = await s.get(url)
        assert await r.read() == key.encode(), key
    r = await s.get(f"{node}/v1/tables/t/blocks", params={"limit": "100"})
    assert sorted(i["key"] for i in (await r.json())["items"]) == sorted(
        ["a b", "100%", "q?x=1", "ünïcødé", "#frag", ".hidden"])


async def test_frames_endpoint_returns_stored_ciphertext(env):
    node, _, s, _, _ = env
    await s.put(f"{node}/v1/tables/t/blocks/k", data=b"secret")
    r = await s.get(f"{node}/v1/tables/t/frames/k")
    body = await r.read()
    assert frames.decode(body).key_version == 1 and b"secret" not in body
    assert len(bytes.fromhex(r.headers["X-Chronoshard-Checksum"])) == 16
    r = await s.post(f"{node}/v1/tables/t/frames:batchGet", json={"keys": ["k", "nope"]})
    items = (await r.json())["frames"]
    assert base64.b64decode(items[0]["frame"]) == body and items[1] == {"key": "nope", "found": False}


async def test_batch_get_and_scan_pagination(env):
    node, _, s, _, _ = env
    for i in range(5):
        await s.put(f"{node}/v1/tables/t/blocks/k{i}", data=f"v{i}".encode())
    r = await s.post(f"{node}/v1/tables/t/blocks:batchGet", json={"keys": ["k1", "zz", "k3"]})
    out = (await r.json())["blocks"]
    assert [base64.b64decode(b["value"]) if b["found"] else None for b in out] == [b"v1", None, b"v3"]
    page = await (await s.get(f"{node}/v1/tables/t/blocks", params={"limit": "2"})).json()
    assert [i["key"] for i in page["items"]] == ["k0", "k1"] and page["next"] == "k1"
    page = await (await s.get(f"{node}/v1/tables/t/blocks",
                              params={"limit": "10", "after": "k1", "values": "true"})).json()
    assert [base64.b64decode(i["value"]) for i in page["items"]] == [b"v2", b"v3", b"v4"] and page["next"] is None


async def test_change_stream_and_long_poll(env):
    node, _, s, _, _ = env
    await s.put(f"{node}/v1/tables/t/blocks/a", data=b"1")
    body = await (await s.get(f"{node}/v1/changes", params={"after": "0"})).json()
    assert [c["op"] for c in body["changes"]] == ["put"] and body["next"] == 1 and body["lastLsn"] == 1
    waiter = asyncio.create_task(s.get(f"{node}/v1/changes", params={"after": "1", "wait": "5"}))
    await asyncio.sleep(0.2)  # what is tested: the poll holds while nothing changes (no "parked" signal to wait on)
    assert not waiter.done()
    await s.delete(f"{node}/v1/tables/t/blocks/a")
    body = await (await asyncio.wait_for(waiter, 5)).json()
    assert [(c["lsn"], c["op"], c["keyVersion"]) for c in body["changes"]] == [(2, "delete", None)]


async def test_keys_report_counts_and_never_key_material(env):
    node, _, s, _, _ = env
    await s.put(f"{node}/v1/tables/t/blocks/a", data=b"1")
    text = await (await s.get(f"{node}/v1/keys")).text()
    body = json.loads(text)
    assert body == {"generation": 1, "primary": 1, "versions": [{"id": 1, "state": "primary"}],
                    "loadError": None, "blocks": {"1": 1}, "compromised": [], "wrapped": [], "queuedWrites": {}}
    metrics = await (await s.get(f"{node}/metrics")).text()
    for secret in (KEY1, KEY2):
        assert secret.hex() not in text + metrics and base64.b64encode(secret).decode() not in text + metrics


async def test_rewrap_and_verify_over_http(env, tmp_path):
    node, _, s, napp, _ = env
    for i in range(30):
        await s.put(f"{node}/v1/tables/t/blocks/k{i}", data=b"x" * i)
    write_keyring(tmp_path / "keyring", 2, {1: ("decrypt-only", KEY1), 2: ("primary", KEY2)})
    for _ in range(100):
        if (await (await s.get(f"{node}/v1/keys")).json())["primary"] == 2:
            break
        await asyncio.sleep(0.05)
    r = await s.post(f"{node}/v1/rewrap", json={"batchSize": 7, "pauseSeconds": 0})
    assert r.status == 202
    for _ in range(200):
        st = await (await s.get(f"{node}/v1/rewrap")).json()
        if st["state"] == "done":
            break
        await asyncio.sleep(0.02)
    assert st["rewrapped"] == 30 and st["blocks"] == {"2": 30} and st["pauseSeconds"] == 0
    assert (await s.post(f"{node}/v1/verify", json={"mode": "full"})).status == 202
    for _ in range(200):
        v = await (await s.get(f"{node}/v1/verify")).json()
        if v["state"] == "done":
            break
        await asyncio.sleep(0.02)
    assert v["last"]["passed"] and v["last"]["scanned"] == 30
    assert (await s.post(f"{node}/v1/verify", json={"mode": "sample", "sample": 5})).status == 202


@pytest.mark.parametrize(
    "method, path, body, status, code",
    [
        ("PUT", "/v1/tables/bad%20table/blocks/k", b"x", 400, "invalid_table"),
        ("PUT", "/v1/tables/t/blocks/%01ctl", b"x", 400, "invalid_key"),
        ("PUT", "/v1/tables/t/blocks/" + "k" * 1025, b"x", 400, "invalid_key"),
        ("POST", "/v1/tables/t/blocks:batchGet", b"not json", 400, "invalid_body"),
        ("POST", "/v1/tables/t/blocks:batchGet", b'{"keys": []}', 400, "invalid_body"),
        ("POST", "/v1/tables/t/blocks:batchGet", b'{"keys": [1]}', 400, "invalid_key"),
        ("POST", "/v1/tables/t/blocks:batchGet", b"[]", 400, "invalid_body"),
        ("GET", "/v1/tables/t/blocks?limit=0", None, 400, "invalid_parameter"),
        ("GET", "/v1/tables/t/blocks?limit=abc", None, 400, "invalid_parameter"),
        ("GET", "/v1/tables/t/blocks?values=yes", None, 400, "invalid_parameter"),
        ("GET", "/v1/changes?after=-1", None, 400, "invalid_parameter"),
        ("GET", "/v1/changes?wait=nan", None, 400, "invalid_parameter"),
        ("POST", "/v1/rewrap", b'{"batchSize": 0}', 400, "invalid_body"),
        ("POST", "/v1/rewrap", b'{"batchSize": true}', 400, "invalid_body"),
        ("POST", "/v1/rewrap", b'{"other": 1}', 400, "invalid_body"),
        ("POST", "/v1/rewrap", b'{"pauseSeconds": -1}', 400, "invalid_body"),
        ("POST", "/v1/rewrap", b'{"pauseSeconds": "0"}', 400, "invalid_body"),
        ("POST", "/v1/verify", b'{"mode": "quick"}', 400, "invalid_body"),
        ("POST", "/v1/verify", b'{"mode": "full", "sample": 3}', 400, "invalid_body"),
        ("PATCH", "/v1/tables/t/blocks/k", b"x", 405, "method_not_allowed"),
        ("GET", "/nowhere", None, 404, "not_found"),
    ],
)
async def test_bad_input_gets_json_4xx_and_changes_nothing(env, method, path, body, status, code):
    node, _, s, _, _ = env
    before = await (await s.get(f"{node}/v1/changes")).json()
    r = await s.request(method, node + path, data=body)
    assert r.status == status
    err = await _json(r)
    assert err["error"] == code and err["message"]
    after = await (await s.get(f"{node}/v1/changes")).json()
    assert after == before


async def test_oversized_block_is_413_and_not_stored(tmp_path):
    from chronoshard.shardnode.node.server import NodeConfig, create_app

    from tests.support.servers import keyring_dir, serve

    app = create_app(NodeConfig(data_dir=tmp_path / "d", keyring_dir=keyring_dir(tmp_path), max_block_bytes=100))
    import aiohttp

    async with serve(app) as url, aiohttp.ClientSession() as s:
        r = await s.put(f"{url}/v1/tables/t/blocks/k", data=b"x" * 101)
        assert r.status == 413 and (await r.json())["error"] == "too_large"
        assert (await s.get(f"{url}/v1/tables/t/blocks/k")).status == 404
        assert (await s.put(f"{url}/v1/tables/t/blocks/k", data=b"x" * 100)).status == 200


async def test_no_keyring_means_not_ready_and_writes_refused(tmp_path):
    import aiohttp
    from chronoshard.shardnode.node.server import NodeConfig, create_app

    from tests.support.servers import serve

    app = create_app(NodeConfig(data_dir=tmp_path / "d", keyring_dir=tmp_path / "none"))
    async with serve(app) as url, aiohttp.ClientSession() as s:
        assert (await s.get(f"{url}/readyz")).status == 503
        assert (await s.get(f"{url}/healthz")).status == 200
        r = await s.put(f"{url}/v1/tables/t/blocks/k", data=b"x")
        assert r.status == 503 and (await r.json())["error"] == "no_keyring"
        keys = await (await s.get(f"{url}/v1/keys")).json()
        assert keys["generation"] is None and "cannot read keyring.json" in keys["loadError"]
        assert (await (await s.get(f"{url}/v1/changes")).json())["lastLsn"] == 0


async def test_batch_and_scan_answers_are_bounded_in_bytes(tmp_path):
    import aiohttp
    from chronoshard.shardnode.node.server import NodeConfig, create_app

    from tests.support.servers import keyring_dir, serve

    app = create_app(NodeConfig(data_dir=tmp_path / "d", keyring_dir=keyring_dir(tmp_path), max_response_bytes=250))
    async with serve(app) as url, aiohttp.ClientSession() as s:
        for i in range(3):
            await s.put(f"{url}/v1/tables/t/blocks/k{i}", data=bytes(100))
        r = await s.post(f"{url}/v1/tables/t/blocks:batchGet", json={"keys": ["k0", "k1", "k2"]})
        assert r.status == 413 and (await r.json())["error"] == "too_large"
        r = await s.post(f"{url}/v1/tables/t/blocks:batchGet", json={"keys": ["k0", "k1"]})
        assert r.status == 200
        r = await s.get(f"{url}/v1/tables/t/blocks", params={"values": "true"})
        assert r.status == 413
        r = await s.get(f"{url}/v1/tables/t/blocks", params={"values": "false"})
        assert r.status == 200 and len((await r.json())["items"]) == 3
        r = await s.post(f"{url}/v1/tables/t/frames:batchGet", json={"keys": ["k0", "k1", "k2"]})
        assert r.status == 413  # frames are 35 bytes larger than the plaintext


def _compromised_manifest(primary: int, compromised: int) -> str:
    versions = [{"id": v, "state": "primary" if v == primary else "decrypt-only"} for v in (1, 2)]
    for v in versions:
        if v["id"] == compromised:
            v["compromised"] = True
    return json.dumps({"format": 1, "generation": 5 if primary == 1 else 6, "algorithm": "AES-256-GCM",
                       "versions": versions})


async def test_writes_hold_while_the_primary_is_compromised_then_use_the_new_primary(env, tmp_path):
    node, _, s, napp, _ = env
    keys = {1: ("primary", KEY1), 2: ("decrypt-only", KEY2)}
    write_keyring(tmp_path / "keyring", 5, keys, manifest_text=_compromised_manifest(1, 1))
    for _ in range(100):
        if (await (await s.get(f"{node}/v1/keys")).json()).get("compromised") == [1]:
            break
        await asyncio.sleep(0.05)
    from chronoshard.shardnode.node.server import NODE

    registry = napp[NODE].metrics.registry
    put = asyncio.ensure_future(s.put(f"{node}/v1/tables/t/blocks/held", data=b"secret"))
    # Each retry of a held write counts a hold: two of them prove it is parked, not answered.
    holds = "chronoshard_node_compromised_write_holds_total"
    await wait_for_async(lambda: (registry.get_sample_value(holds) or 0) >= 2, timeout=10,
                         what="the write to be held twice")
    assert not put.done(), "a write went through with the compromised primary"
    keys = {1: ("decrypt-only", KEY1), 2: ("primary", KEY2)}
    write_keyring(tmp_path / "keyring", 6, keys, manifest_text=_compromised_manifest(2, 1))
    resp = await asyncio.wait_for(put, 10)
    assert resp.status == 200 and (await resp.json())["keyVersion"] == 2
    metrics = await (await s.get(f"{node}/metrics")).text()
    assert "chronoshard_node_compromised_write_holds_total" in metrics


async def test_a_write_held_too_long_is_refused_with_503_and_nothing_is_stored(env, tmp_path):
    from chronoshard.shardnode.node.server import NODE

    node, _, s, napp, _ = env
    napp[NODE].cfg.compromised_write_hold_seconds = 0.3
    write_keyring(tmp_path / "keyring", 5, {1: ("primary", KEY1), 2: ("decrypt-only", KEY2)},
                  manifest_text=_compromised_manifest(1, 1))
    for _ in range(100):
        if (await (await s.get(f"{node}/v1/keys")).json()).get("compromised") == [1]:
            break
        await asyncio.sleep(0.05)
    resp = await s.put(f"{node}/v1/tables/t/blocks/refused", data=b"x")
    assert resp.status == 503
    body = await resp.json()
    assert body["error"] == "key_compromised" and body["keyVersion"] == 1
    assert (await s.get(f"{node}/v1/tables/t/blocks/refused")).status == 404


async def test_block_and_frame_requests_feed_the_rewrap_pacing_gauge_and_others_do_not(env):
    from chronoshard.shardnode.node.server import NODE

    node, _, s, napp, _ = env
    gauge = napp[NODE].foreground
    assert gauge.baseline is None
    await s.put(f"{node}/v1/tables/t/blocks/k", data=b"v")
    await s.get(f"{node}/v1/tables/t/frames/k")
    assert gauge.baseline is not None and gauge.in_flight == 0
    seen = gauge.last_seen
    for path in ("/v1/keys", "/v1/rewrap", "/metrics", "/healthz"):
        await s.get(f"{node}{path}")
    assert gauge.last_seen == seen
    st = await (await s.get(f"{node}/v1/rewrap")).json()
    assert st["pace"] is None  # no adaptive run in progress


async def test_keys_long_poll_answers_when_the_generation_loads_or_its_time_is_up(env, tmp_path):
    node, _, s, _, _ = env
    now = (await (await s.get(f"{node}/v1/keys")).json())["generation"]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    r = await s.get(f"{node}/v1/keys", params={"waitGeneration": str(now + 1), "waitSeconds": "0.3"})
    assert r.status == 200 and (await r.json())["generation"] == now and loop.time() - t0 >= 0.3
    waiting = asyncio.ensure_future(s.get(f"{node}/v1/keys",
                                          params={"waitGeneration": str(now + 1), "waitSeconds": "10"}))
    await asyncio.sleep(0.1)
    assert not waiting.done()  # held until the keyring changes
    write_keyring(tmp_path / "keyring", now + 1, {1: ("decrypt-only", KEY1), 2: ("primary", KEY2)})
    body = await (await asyncio.wait_for(waiting, 10)).json()
    assert body["generation"] == now + 1 and body["primary"] == 2
    for bad in ({"waitSeconds": "11"}, {"waitGeneration": "-1", "waitSeconds": "1"}, {"waitRewrap": "yes"}):
        r = await s.get(f"{node}/v1/keys", params=bad)
        assert r.status == 400 and (await r.json())["error"] == "invalid_parameter"


async def test_keys_long_poll_waits_for_a_running_rewrap_to_finish(env, tmp_path):
    from chronoshard.shardnode.node.server import NODE

    node, _, s, napp, _ = env
    for i in range(20):
        await s.put(f"{node}/v1/tables/t/blocks/k{i}", data=b"x")
    write_keyring(tmp_path / "keyring", 2, {1: ("decrypt-only", KEY1), 2: ("primary", KEY2)})
    await wait_for_async(lambda: _primary_is(s, node, 2), timeout=10)
    runner = napp[NODE].rewrap
    runner.pause = 0.05  # a fixed pause: 20 blocks in batches of 2 take at least half a second
    assert (await s.post(f"{node}/v1/rewrap", json={"batchSize": 2})).status == 202
    body = await (await s.get(f"{node}/v1/keys", params={"waitRewrap": "true", "waitSeconds": "10"})).json()
    assert not runner.running and body["blocks"] == {"2": 20}


async def _primary_is(s, node, version):
    return (await (await s.get(f"{node}/v1/keys")).json())["primary"] == version

