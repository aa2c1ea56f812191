"""Partition map hot reload, the 421 ownership middleware and one-hop forwarding, on real loopback servers."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap, initial_map, keyspace_id, rescale
from chronoshard.shardnode.serving.routing import (
    FORWARDED_HEADER,
    ROUTED_HEADER,
    NoPartitionMap,
    PartitionMapSource,
    PeerURLs,
    forward_session_ctx,
    ownership_middleware,
    partitions_handler,
    shard_index_from_pod_name,
)

_seq = 0
CALLS = web.AppKey("calls", list)


def publish(volume: Path, text: str) -> None:
    """Write map.json the way kubelet updates a ConfigMap volume: new snapshot dir, atomic ..data swap."""
    global _seq
    _seq += 1
    volume.mkdir(parents=True, exist_ok=True)
    snap = volume / f"..2026_11_22_00_00_00.{_seq:09d}"
    snap.mkdir()
    (snap / "map.json").write_text(text)
    tmp = volume / "..data_tmp"
    tmp.symlink_to(snap.name)
    os.replace(tmp, volume / "..data")
    link = volume / "map.json"
    if not link.is_symlink():
        link.symlink_to("..data/map.json")


def key_for_shard(pmap: PartitionMap, shard: int, table: str = "t", start: int = 0) -> str:
    i = start
    while pmap.owner_of(keyspace_id(table, f"k{i}")).shard != shard:
        i += 1
    return f"k{i}"


# --- PartitionMapSource ------------------------------------------------------------------------------


def test_source_hot_reloads_kubelet_swap_and_keeps_last_good(tmp_path):
    vol = tmp_path / "partitions"
    m1 = initial_map(3)
    publish(vol, m1.to_json())
    src = PartitionMapSource(vol / "map.json", min_interval=0)
    assert src.map == m1 and src.load_error is None

    m2 = rescale(m1, 4)
    publish(vol, m2.to_json())
    assert src.map == m2

    publish(vol, "{ this is not json")
    assert src.map == m2  # last good map kept
    assert "not valid JSON" in src.load_error
    assert src.status() == {"epoch": 2, "shards": 4, "loadError": src.load_error}

    bad = m2.to_dict()
    bad["partitions"].pop()
    publish(vol, json.dumps(bad))
    assert src.map == m2 and "gap" in src.load_error

    m3 = PartitionMap(3, 4, m2.partitions)
    publish(vol, m3.to_json())
    assert src.map == m3 and src.load_error is None


def test_source_ignores_epoch_going_back(tmp_path):
    vol = tmp_path / "p"
    publish(vol, PartitionMap(5, 3, initial_map(3).partitions).to_json())
    src = PartitionMapSource(vol / "map.json", min_interval=0)
    publish(vol, initial_map(2).to_json())
    assert src.map.epoch == 5 and src.map.shards == 3
    assert "went back" in src.load_error


def test_source_plain_file_and_missing_file(tmp_path):
    path = tmp_path / "map.json"
    src = PartitionMapSource(path, min_interval=0)
    assert src.map is None and "cannot read" in src.load_error
    with pytest.raises(NoPartitionMap):
        src.require()
    path.write_text(initial_map(2).to_json())
    assert src.map.shards == 2
    path.unlink()
    assert src.map.shards == 2 and "cannot read" in src.load_error


def test_source_rate_limits_checks(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(initial_map(2).to_json())
    src = PartitionMapSource(path, min_interval=3600)
    path.write_text(rescale(initial_map(2), 3).to_json())
    assert src.map.shards == 2  # not re-checked within min_interval
    assert src.reload() is True
    assert src.map.shards == 3


def test_source_owner_and_check():
    m = initial_map(3)
    src = PartitionMapSource.from_map(m)
    k = key_for_shard(m, 1)
    assert src.owner("t", k) == 1
    assert src.check(1, "t", k) is None
    mis = src.check(0, "t", k)
    assert mis.owner == 1 and mis.epoch == 1
    assert mis.body()["error"] == "misdirected"


# --- helpers ---------------------------------------------------------------------------------------


def test_shard_index_from_pod_name():
    assert shard_index_from_pod_name("orders-store-12") == 12
    with pytest.raises(ValueError):
        shard_index_from_pod_name("orders")


def test_peer_urls():
    p = PeerURLs("http://{shardset}-{shard}.{service}.{namespace}.svc:{port}",
                 shardset="s", service="s-h", namespace="ns", port=7401)
    assert p(2) == "http://s-2.s-h.ns.svc:7401"
    assert PeerURLs(urls=["http://127.0.0.2:1/", "http://127.0.0.3:2"])(0) == "http://127.0.0.2:1"
    with pytest.raises(LookupError):
        PeerURLs(urls=["http://a"])(1)
    with pytest.raises(ValueError, match="bad peer URL template"):
        PeerURLs("http://{nope}-{shard}")
    with pytest.raises(ValueError):
        PeerURLs()
    env = {"POD_NAME": "store-1", "POD_NAMESPACE": "team", "CHRONOSHARD_HEADLESS_SERVICE": "store-nodes"}
    assert PeerURLs.from_env(env)(0) == "http://store-0.store-nodes.team.svc:7401"
    default = {"POD_NAME": "orders-2", "POD_NAMESPACE": "team"}
    assert PeerURLs.from_env(default)(1) == "http://orders-1.orders-headless.team.svc:7401"
    assert PeerURLs.from_env({"CHRONOSHARD_PEER_URLS": "http://127.0.0.5:7401, http://127.0.0.6:7401"})(1) \
        == "http://127.0.0.6:7401"
    assert PeerURLs.from_env({"POD_NAME": "x-0", "CHRONOSHARD_PEER_URL_TEMPLATE": "http://127.0.0.{shard}:9"})(
        4) == "http://127.0.0.4:9"


# --- middleware on real loopback servers -----------------------------------------------------------


def make_app(source: PartitionMapSource, shard: int, peers=None, calls=None) -> web.Application:
    store: dict[tuple[str, str], bytes] = {}
    calls = calls if calls is not None else []

    async def get_block(request: web.Request) -> web.Response:
        calls.append((shard, request.method, request.match_info["key"]))
        t, k = request.match_info["table"], request.match_info["key"]
        if (t, k) not in store:
            return web.json_response({"error": "not_found"}, status=404)
        return web.Response(body=store[t, k], headers={"X-Shard": str(shard)})

    async def put_block(request: web.Request) -> web.Response:
        calls.append((shard, request.method, request.match_info["key"]))
        store[request.match_info["table"], request.match_info["key"]] = await request.read()
        return web.json_response({"shard": shard}, status=201)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[ownership_middleware(source, shard, peers=peers)])
    if peers is not None:
        app.cleanup_ctx.append(forward_session_ctx)
    app.router.add_get("/healthz", health)
    app.router.add_get("/v1/partitions", partitions_handler(source))
    app.router.add_get("/v1/tables/{table}/blocks/{key:.+}", get_block)
    app.router.add_put("/v1/tables/{table}/blocks/{key:.+}", put_block)
    app[CALLS] = calls
    return app


async def _req(method, url, **kw):
    async with aiohttp.ClientSession() as s, s.request(method, url, **kw) as r:
        return r.status, await r.read(), r.headers


async def test_node_refuses_keys_it_does_not_own():
    m = initial_map(3)
    app = make_app(PartitionMapSource.from_map(m), 0)
    async with TestServer(app, host="127.0.0.1") as srv:
        mine, theirs = key_for_shard(m, 0), key_for_shard(m, 2)
        base = f"http://127.0.0.1:{srv.port}"
        status, _, _ = await _req("PUT", f"{base}/v1/tables/t/blocks/{mine}", data=b"v")
        assert status == 201
        status, body, _ = await _req("GET", f"{base}/v1/tables/t/blocks/{mine}")
        assert (status, body) == (200, b"v")
        status, body, headers = await _req("PUT", f"{base}/v1/tables/t/blocks/{theirs}", data=b"v")
        assert status == 421
        doc = json.loads(body)
        assert doc["error"] == "misdirected" and doc["owner"] == 2 and doc["epoch"] == 1
        assert theirs in doc["message"]
        assert headers["X-Chronoshard-Epoch"] == "1"
        # The refused write changed nothing: no handler ran for it.
        assert ("PUT", theirs) not in [(m_, k) for _, m_, k in app[CALLS]]
        status, _, _ = await _req("GET", f"{base}/healthz")
        assert status == 200
        status, body, _ = await _req("GET", f"{base}/v1/partitions")
        assert status == 200 and PartitionMap.from_json(body) == m


async def test_no_map_answers_503(tmp_path):
    app = make_app(PartitionMapSource(tmp_path / "missing.json"), 0)
    async with TestServer(app, host="127.0.0.1") as srv:
        status, body, _ = await _req("GET", f"http://127.0.0.1:{srv.port}/v1/tables/t/blocks/a")
        assert status == 503 and b"no partition map" in body
        status, _, _ = await _req("GET", f"http://127.0.0.1:{srv.port}/v1/partitions")
        assert status == 503


async def test_hot_reloaded_map_changes_ownership(tmp_path):
    vol = tmp_path / "p"
    m1 = initial_map(2)
    publish(vol, m1.to_json())
    src = PartitionMapSource(vol / "map.json", min_interval=0)
    app = make_app(src, 1)
    k = key_for_shard(m1, 0)
    async with TestServer(app, host="127.0.0.1") as srv:
        url = f"http://127.0.0.1:{srv.port}/v1/tables/t/blocks/{k}"
        assert (await _req("PUT", url, data=b"x"))[0] == 421
        # Epoch 2: the whole keyspace moved to shard 1 (what a completed move would publish).
        publish(vol, PartitionMap(2, 2, (Partition(0, 0, 2**64 - 1, 1),)).to_json())
        assert (await _req("PUT", url, data=b"x"))[0] == 201


async def _three_caches(maps, calls, peers_fn=None):
    servers = [TestServer(make_app(PartitionMapSource.from_map(maps[i]), i, peers=None, calls=calls),
                          host="127.0.0.1") for i in range(3)]
    # Start once to learn ports, then rebuild apps with peers pointing at them.
    for s in servers:
        await s.start_server()
    urls = [f"http://127.0.0.1:{s.port}" for s in servers]
    for s in servers:
        await s.close()
    peers = PeerURLs(urls=urls)
    servers = []
    for i in range(3):
        app = make_app(PartitionMapSource.from_map(maps[i]), i, peers=peers, calls=calls)
        srv = TestServer(app, host="127.0.0.1", port=int(urls[i].rsplit(":", 1)[1]))
        await srv.start_server()
        servers.append(srv)
    return servers, urls


async def test_cache_forwards_once_to_owner():
    m = initial_map(3)
    calls: list = []
    servers, urls = await _three_caches([m, m, m], calls)
    try:
        for owner in range(3):
            # Keys with "/", spaces and non-ASCII survive the hop percent-encoded.
            k = key_for_shard(m, owner, start=1000 * owner) + "/a b/ü"
            k = next(f"{k}{j}" for j in range(10**6) if m.shard_of("t", f"{k}{j}") == owner)
            url = f"{urls[0]}/v1/tables/t/blocks/{aiohttp.helpers.quote(k, safe='')}"
            status, body, _ = await _req("PUT", url, data=f"value-{owner}".encode())
            assert status == 201
            assert json.loads(body) == {"shard": owner}
            status, body, headers = await _req("GET", url)
            assert (status, body, headers["X-Shard"]) == (200, f"value-{owner}".encode(), str(owner))
            assert calls[-1] == (owner, "GET", k)
        # A request already marked forwarded is never forwarded again (one hop at most).
        k2 = key_for_shard(m, 2)
        hdr = {FORWARDED_HEADER: "1"}
        status, body, _ = await _req("GET", f"{urls[0]}/v1/tables/t/blocks/{k2}", headers=hdr)
        assert status == 421
        # An epoch mismatch is refused even by the owner.
        hdr = {FORWARDED_HEADER: "7"}
        status, body, _ = await _req("GET", f"{urls[2]}/v1/tables/t/blocks/{k2}", headers=hdr)
        assert status == 421 and b'"owner": 2' in body
        # A client that routed by the current epoch is served by the owner, refused elsewhere.
        hdr = {ROUTED_HEADER: "1"}
        assert (await _req("GET", f"{urls[2]}/v1/tables/t/blocks/{k2}", headers=hdr))[0] == 404
        status, body, _ = await _req("GET", f"{urls[1]}/v1/tables/t/blocks/{k2}", headers=hdr)
        assert status == 421 and json.loads(body)["owner"] == 2
        # ... and a client with a stale epoch is told even by the owner, so it refreshes its map.
        hdr = {ROUTED_HEADER: "0"}
        assert (await _req("GET", f"{urls[2]}/v1/tables/t/blocks/{k2}", headers=hdr))[0] == 421
    finally:
        for s in servers:
            await s.close()


async def test_disagreeing_maps_never_loop():
    m = initial_map(3)
    k = key_for_shard(m, 1)
    # Same epoch but shard 1 believes shard 2 owns everything: a forwarded request must stop at shard 1.
    weird = PartitionMap(1, 3, (Partition(0, 0, 2**64 - 1, 2),))
    calls: list = []
    servers, urls = await _three_caches([m, weird, m], calls)
    try:
        status, body, _ = await _req("GET", f"{urls[0]}/v1/tables/t/blocks/{k}")
        assert status == 421 and b'"owner": 2' in body
        assert calls == []  # no handler ran anywhere: refused at the second hop
    finally:
        for s in servers:
            await s.close()


async def test_unreachable_owner_answers_503():
    m = initial_map(2)
    # Port 1 on loopback: nothing listens, connection refused at once.
    app = make_app(PartitionMapSource.from_map(m), 0, peers=PeerURLs(urls=["http://127.0.0.1:1"] * 2))
    async with TestServer(app, host="127.0.0.1") as srv:
        url = f"http://127.0.0.1:{srv.port}/v1/tables/t/blocks/{key_for_shard(m, 1)}"
        status, body, _ = await _req("GET", url)
        assert status == 503 and b"unavailable" in body


async def _forwarding_pair(peer_get):
    """Shard 0's forwarding app in front of a bare peer serving shard 1's keys with ``peer_get``."""
    m = initial_map(2)
    peer_app = web.Application()
    peer_app.router.add_get("/v1/tables/{table}/blocks/{key:.+}", peer_get)
    peer = TestServer(peer_app, host="127.0.0.1")
    await peer.start_server()
    front = TestServer(make_app(PartitionMapSource.from_map(m), 0,
                                peers=PeerURLs(urls=["http://127.0.0.1:1", f"http://localhost:{peer.port}"])),
                       host="127.0.0.1")
    await front.start_server()
    return m, peer, front


async def test_forwarded_requests_reuse_one_connection():
    # Each forwarded request arrives at the peer from a client port: one port for all means one connection,
    # kept open between requests (no connection, and with TLS no handshake, per request).
    ports: list[int] = []

    async def peer_get(request: web.Request) -> web.Response:
        ports.append(request.transport.get_extra_info("peername")[1])
        return web.Response(body=b"v")

    m, peer, front = await _forwarding_pair(peer_get)
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(20):
                url = f"http://127.0.0.1:{front.port}/v1/tables/t/blocks/{key_for_shard(m, 1, start=i * 100)}"
                async with s.get(url) as r:
                    assert (r.status, await r.read()) == (200, b"v")
        assert len(ports) == 20 and len(set(ports)) == 1
    finally:
        await front.close()
        await peer.close()


async def test_forwarding_connections_per_peer_are_bounded(monkeypatch):
    from chronoshard.shardnode.serving import routing

    monkeypatch.setattr(routing, "FORWARD_CONNECTIONS_PER_PEER", 3)
    in_flight, most, ports = 0, 0, set()

    async def peer_get(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        ports.add(request.transport.get_extra_info("peername")[1])
        await asyncio.sleep(0.01)  # hold the connection so the next forwards must wait for it
        in_flight -= 1
        return web.Response(body=b"v")

    m, peer, front = await _forwarding_pair(peer_get)
    try:
        async with aiohttp.ClientSession() as s:
            async def get(i: int) -> int:
                url = f"http://127.0.0.1:{front.port}/v1/tables/t/blocks/{key_for_shard(m, 1, start=i * 100)}"
                async with s.get(url) as r:
                    return r.status

            assert await asyncio.gather(*(get(i) for i in range(12))) == [200] * 12
        # Twelve at once reached the peer over at most three connections, at most three at a time.
        assert most <= 3 and len(ports) <= 3
    finally:
        await front.close()
        await peer.close()


async def test_forwarding_keeps_no_cookies():
    # A cookie in one caller's answer must never ride along with another caller's forwarded request.
    cookies: list[str | None] = []

    async def peer_get(request: web.Request) -> web.Response:
        cookies.append(request.headers.get("Cookie"))
        resp = web.Response(body=b"v")
        resp.set_cookie("session", "caller-a")
        return resp

    m, peer, front = await _forwarding_pair(peer_get)
    try:
        for i in range(2):
            url = f"http://127.0.0.1:{front.port}/v1/tables/t/blocks/{key_for_shard(m, 1, start=i * 100)}"
            status, _, _ = await _req("GET", url)
            assert status == 200
        assert cookies == [None, None]
    finally:
        await front.close()
        await peer.close()


def test_partition_setup_from_flags_or_pod_name(tmp_path, monkeypatch):
    from chronoshard.shardnode.keyspace.partitioning import initial_map
    from chronoshard.shardnode.serving.routing import PartitionMapSource, partition_setup

    assert partition_setup(None, None) == (None, None)
    map_file = tmp_path / "map.json"
    map_file.write_text(initial_map(3).to_json())
    source, shard = partition_setup(str(map_file), 1)
    assert isinstance(source, PartitionMapSource) and shard == 1
    monkeypatch.setenv("POD_NAME", "orders-2")
    assert partition_setup(str(map_file), None)[1] == 2
    monkeypatch.delenv("POD_NAME")
    with pytest.raises(SystemExit, match="--shard-index or POD_NAME"):
        partition_setup(str(map_file), None)


async def test_a_compressed_answer_is_forwarded_as_the_owner_sent_it():
    # The forward passes the owner's body on untouched, so its Content-Encoding must go with it.
    async def peer_get(request: web.Request) -> web.Response:
        resp = web.Response(body=b"block " * 1000, headers={"X-Twice": "a"})
        resp.headers.add("X-Twice", "b")
        resp.enable_compression()
        return resp

    m, peer, front = await _forwarding_pair(peer_get)
    try:
        url = f"http://127.0.0.1:{front.port}/v1/tables/t/blocks/{key_for_shard(m, 1)}"
        async with aiohttp.ClientSession() as s, s.get(url, headers={"Accept-Encoding": "gzip"}) as r:
            assert r.status == 200 and r.headers["Content-Encoding"] == "gzip"
            assert await r.read() == b"block " * 1000  # decompressed by the caller, as sent by the owner
            assert r.headers.getall("X-Twice") == ["a", "b"]
    finally:
        await front.close()
        await peer.close()
