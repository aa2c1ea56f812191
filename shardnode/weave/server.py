"""The weaver process's app (aiohttp, on the shared scaffold): the woven store, the node client, the keyring (to
open woven rows for ``values=true``), the settings watcher and the runner's loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from chronoshard.shardnode.keys.keyring import KeyringWatcher
from chronoshard.shardnode.keys.provider import EmbeddedKeyProvider, KeyCache
from chronoshard.shardnode.serving import tls
from chronoshard.shardnode.serving.http_common import ApiError
from chronoshard.shardnode.serving.scaffold import Probes, create_server_app
from chronoshard.shardnode.serving.settings_watch import SettingsWatcher
from chronoshard.shardnode.shadow.codec import Compressor
from chronoshard.shardnode.shadow.sealing import open_version

from . import api
from .config import WeaverConfig
from .metrics import WeaverMetrics
from .pages import Row
from .runner import Runner
from .store import DB_NAME, WeaveStore

log = logging.getLogger(__name__)
T = TypeVar("T")
NODE_TIMEOUT_SECONDS = 30.0


class Weaver:
    """State shared by the handlers of one weaver process."""

    def __init__(self, cfg: WeaverConfig) -> None:
        self.cfg = cfg
        self.metrics = WeaverMetrics()
        self.key_cache = (KeyCache(EmbeddedKeyProvider(cfg.kek_dir, cfg.keyring_dir), cfg.key_cache_size)
                          if cfg.kek_dir is not None else None)
        self.keys = KeyringWatcher(cfg.keyring_dir, on_reload=self.metrics.keyring.observe,
                                   table_keys=self.key_cache, kek_dir=cfg.kek_dir)
        self.settings = SettingsWatcher(cfg.settings_path, cfg.apply,
                                        lambda error: self.metrics.settings.observe(error or cfg.settings_error))
        self.pool = ThreadPoolExecutor(cfg.reader_threads, thread_name_prefix="weave-read")
        self.compressor = Compressor()  # history frames name no dictionary (the shadow does not enable them)
        self._store: WeaveStore | None = None
        self._runner: Runner | None = None
        self.session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def store(self) -> WeaveStore:
        """The open woven store (503 before start-up finished)."""
        if self._store is None:
            raise ApiError(503, "starting", "the woven store is not open yet")
        return self._store

    @property
    def runner(self) -> Runner:
        """The loop's state (503 before start-up finished)."""
        if self._runner is None:
            raise ApiError(503, "starting", "the weaver is starting")
        return self._runner

    async def start(self, app: web.Application) -> None:
        """Load the keyring, open the woven store, start the watchers and the loop."""
        await asyncio.to_thread(self.keys.poll)
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self._store = await asyncio.to_thread(WeaveStore, self.cfg.data_dir / DB_NAME)
        self.session = aiohttp.ClientSession(connector=tls.connector(app, limit=8),
                                             timeout=aiohttp.ClientTimeout(total=NODE_TIMEOUT_SECONDS))
        self._runner = Runner(self.cfg, self._store, self.metrics, self.fetch)
        self._tasks += [asyncio.create_task(self.keys.run(self.cfg.keyring_poll_seconds), name="keyring-watch"),
                        asyncio.create_task(self.settings.run(self.cfg.keyring_poll_seconds), name="settings"),
                        asyncio.create_task(self._runner.run(), name="weave-loop")]

    async def fetch(self, path: str) -> dict[str, Any]:
        """GET a node path as JSON; a non-200 answer raises with its status and error code (never a body)."""
        assert self.session is not None
        kw: dict[str, Any] = {}
        hostname = tls.internal_hostname(self.cfg.node_url)
        if hostname is not None:
            kw["server_hostname"] = hostname
        async with self.session.get(self.cfg.node_url.rstrip("/") + path, **kw) as r:
            if r.status != 200:
                raise RuntimeError(f"node answered {r.status} to GET {path.split('?')[0]}")
            body = await r.json()
            return dict(body)

    async def shutting_down(self, app: web.Application) -> None:
        """Nothing long-polls the weaver for long; the loop ends in ``stop``."""

    async def stop(self, app: web.Application) -> None:
        """Stop the loop and watchers, wait for the worker, close the store."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
        pools = [self.pool] + ([self._runner.pool] if self._runner is not None else [])
        for pool in pools:  # what runs there ends before the store closes
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
        if self._store is not None:
            await asyncio.to_thread(self._store.close)

    def readiness(self) -> dict[str, Any]:
        """The ``/readyz`` body: ready once the woven store is open."""
        return {"ready": self._store is not None, "store": self._store is not None,
                "keyring": self.keys.keyring is not None}

    async def refresh_gauges(self) -> None:
        """Before a scrape: woven bytes, points, weaves, rows per key version."""
        if self._runner is not None:
            await self.read(self._runner.refresh_gauges)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store call in the reader pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: fn(*args))

    def open_value(self, row: Row) -> bytes:
        """The plaintext of a woven row: the history frame opened as the shadow would (blocking)."""
        ring = self.keys.keyring
        if ring is None:
            raise ApiError(503, "no_keyring", "no keyring is loaded")
        if row.frame is None:
            raise ApiError(500, "integrity_error", "a live woven row has no frame")
        return open_version(ring, row.tbl, row.key, row.lsn, row.frame, self.compressor)


def create_app(cfg: WeaverConfig) -> web.Application:
    """Build the weaver application (the store opens on startup, closes on cleanup)."""
    wv = Weaver(cfg)
    probes = Probes(wv.metrics.registry, wv.readiness, wv.refresh_gauges)
    return create_server_app(wv, probes, api.routes(), key=api.WEAVER, requests=wv.metrics.requests,
                             openapi="weave", partitioning=cfg.partitioning, pushed_maps=False)


__all__ = ["Weaver", "WeaverConfig", "create_app"]
