"""The server scaffold: standard routes, middlewares, lifecycle hooks and the shared process flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from chronoshard.shardnode.keyspace.partitioning import initial_map
from chronoshard.shardnode.serving.routing import PartitionMapSource
from chronoshard.shardnode.serving.scaffold import (
    Partitioning,
    Probes,
    Route,
    apply_shard_args,
    create_server_app,
    load_openapi,
    process_parser,
    shard_process_parser,
)
from prometheus_client import CollectorRegistry, Counter


class FakeService:
    """Records which lifecycle hooks ran."""

    def __init__(self) -> None:
        self.ready = False
        self.calls: list[str] = []

    async def start(self, app: web.Application) -> None:
        self.calls.append("start")
        self.ready = True

    async def shutting_down(self, app: web.Application) -> None:
        self.calls.append("shutting_down")

    async def stop(self, app: web.Application) -> None:
        self.calls.append("stop")


SERVICE = web.AppKey("fake_service", FakeService)


async def echo(request: web.Request) -> web.StreamResponse:
    return web.json_response({"service": request.app[SERVICE].calls})


def build(service: FakeService, **kw: Any) -> tuple[web.Application, CollectorRegistry]:
    registry = CollectorRegistry()
    requests = Counter("fake_requests", "requests", ["route", "status"], registry=registry)
    probes = Probes(registry, lambda: {"ready": service.ready, "extra": 1})
    app = create_server_app(service, probes, [Route("GET", "/v1/echo", echo)], key=SERVICE, requests=requests, **kw)
    return app, registry


async def test_standard_routes_lifecycle_and_json_errors():
    service = FakeService()
    app, registry = build(service, openapi="node")
    async with TestClient(TestServer(app)) as client:
        assert service.calls == ["start"]
        assert await (await client.get("/healthz")).json() == {"ok": True}
        r = await client.get("/readyz")
        assert r.status == 200 and await r.json() == {"ready": True, "extra": 1}
        assert await (await client.get("/v1/echo")).json() == {"service": ["start"]}
        r = await client.get("/openapi.json")
        assert await r.json() == load_openapi("node")
        r = await client.get("/nowhere")
        assert r.status == 404 and (await r.json())["error"] == "not_found"
        assert (await client.head("/healthz")).status == 405  # GET routes answer no HEAD
        r = await client.get("/metrics")
        assert r.headers["Content-Type"].startswith("text/plain") and b"fake_requests_total" in await r.read()
        assert registry.get_sample_value("fake_requests_total", {"route": "/v1/echo", "status": "200"}) == 1
        assert "/v1/partitions" not in {res.canonical for res in app.router.resources()}
    assert service.calls == ["start", "shutting_down", "stop"]


async def test_not_ready_is_503_and_scrape_refreshes_first():
    service = FakeService()
    refreshed: list[bool] = []

    async def refresh() -> None:
        refreshed.append(True)

    registry = CollectorRegistry()
    app = create_server_app(service, Probes(registry, lambda: {"ready": False}, refresh), [])
    async with TestClient(TestServer(app)) as client:
        r = await client.get("/readyz")
        assert r.status == 503 and await r.json() == {"ready": False}
        assert (await client.get("/metrics")).status == 200 and refreshed == [True]


async def test_aiohttp_errors_and_head_routes_when_asked():
    app, _ = build(FakeService(), json_errors=False, allow_head=True)
    async with TestClient(TestServer(app)) as client:
        r = await client.get("/nowhere")
        assert r.status == 404 and r.content_type == "text/plain"
        assert (await client.head("/healthz")).status == 200
        assert (await client.get("/openapi.json")).status == 404  # no document unless one is named


async def test_partitioning_adds_the_map_route_and_refuses_other_shards_keys():
    source = PartitionMapSource.from_map(replace(initial_map(2), epoch=3))
    not_mine = next(f"k{i}" for i in range(1000) if source.owner("t", f"k{i}") != 0)

    async def block(request: web.Request) -> web.StreamResponse:
        return web.json_response({"served": True})

    probes = Probes(CollectorRegistry(), lambda: {"ready": True})
    app = create_server_app(FakeService(), probes, [Route("GET", "/v1/tables/{table}/blocks/{key}", block)],
                            partitioning=Partitioning(source, 0))
    async with TestClient(TestServer(app)) as client:
        assert (await (await client.get("/v1/partitions")).json())["epoch"] == 3
        r = await client.get(f"/v1/tables/t/blocks/{not_mine}")
        assert r.status == 421 and (await r.json())["error"] == "misdirected"


async def test_max_block_bytes_sizes_the_body_limit():
    async def upload(request: web.Request) -> web.StreamResponse:
        return web.json_response({"size": len(await request.read())})

    probes = Probes(CollectorRegistry(), lambda: {"ready": True})
    body = b"x" * (2 << 20)
    for max_block_bytes, status in ((None, 413), (4 << 20, 200)):
        app = create_server_app(FakeService(), probes, [Route("PUT", "/up", upload)], max_block_bytes=max_block_bytes)
        async with TestClient(TestServer(app)) as client:
            assert (await client.put("/up", data=body)).status == status


def test_process_flags_fall_back_to_the_environment(monkeypatch):
    monkeypatch.setenv("POD_IP", "10.0.0.7")
    monkeypatch.setenv("CHRONOSHARD_X_PORT", "9000")
    args = process_parser("x", "test", port=7000, env_prefix="CHRONOSHARD_X").parse_args([])
    assert (args.host, args.port, args.log_level) == ("10.0.0.7", 9000, "INFO")
    args = process_parser("x", "test", port=7000).parse_args([])  # no prefix: only POD_IP and the default port
    assert (args.host, args.port) == ("10.0.0.7", 7000)
    monkeypatch.setenv("CHRONOSHARD_X_HOST", "0.0.0.0")
    assert process_parser("x", "test", port=7000, env_prefix="CHRONOSHARD_X").parse_args([]).host == "0.0.0.0"


@dataclass
class FakeSettings:
    settings_path: str | None = None
    partitioning: Partitioning | None = None
    size: int = 1

    def apply(self, settings: dict[str, Any]) -> None:
        self.size = settings.get("size", self.size)


def test_shard_flags_apply_the_settings_file_and_the_partition_map(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("CHRONOSHARD_KEYRING_DIR", raising=False)
    p = shard_process_parser("x", "test", port=7000, env_prefix="CHRONOSHARD_X", settings_file="x.json")
    with pytest.raises(SystemExit):
        p.parse_args([])  # --keyring-dir is required without $CHRONOSHARD_KEYRING_DIR
    (tmp_path / "x.json").write_text('{"size": 5}')
    (tmp_path / "map.json").write_text(initial_map(2).to_json())
    args = p.parse_args(["--keyring-dir", "k", "--config", str(tmp_path / "x.json"),
                         "--partition-map", str(tmp_path / "map.json"), "--shard-index", "1"])
    cfg = FakeSettings()
    apply_shard_args(cfg, args)
    assert cfg.size == 5 and cfg.settings_path == str(tmp_path / "x.json")
    assert cfg.partitioning is not None and cfg.partitioning.shard_index == 1 and cfg.partitioning.peers is None
    monkeypatch.setenv("CHRONOSHARD_PEER_URLS", "http://a,http://b")
    apply_shard_args(cfg, args, forward=True)
    assert cfg.partitioning.peers is not None and cfg.partitioning.peers(1) == "http://b"
    cfg = FakeSettings()
    apply_shard_args(cfg, argparse.Namespace(config=None, partition_map=None, shard_index=None))
    assert cfg.partitioning is None and cfg.size == 1
