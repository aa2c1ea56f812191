"""`chronoshard-predictor`: tails the cache's access log, sends prefetch hints, serves health and metrics."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from chronoshard.shardnode.predictor.access import Access, AccessLogError, parse_log_entry
from chronoshard.shardnode.predictor.config import ConfigFile, PredictorConfig
from chronoshard.shardnode.predictor.engine import Hint, Predictor
from chronoshard.shardnode.predictor.keys import KeyHint, KeyPredictor
from chronoshard.shardnode.serving.http_common import setup_logging
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("chronoshard.predictor")

PAGE = 1000  # access-log entries per request
MAX_PAGES_PER_TICK = 50  # bounds one poll: a huge backlog is consumed over several ticks
MAX_HINTS_PER_POST = 1000  # the cache's limit per POST /v1/prefetch and per POST /v1/prefetch/keys
# A key hint helps only if it lands before the next table's read, tens of milliseconds later in the
# benchmark's jobs: with key prefetching on, a cache that cannot long-poll is polled at least this often.
KEY_POLL_S = 0.1
# One access-log request waits up to this long for the next access (the cache answers as soon as one is
# logged), so hints follow reads within milliseconds; kept below the session's 10 s request timeout.
LONG_POLL_S = 5.0


def poll_interval(cfg: PredictorConfig) -> float:
    """Seconds between access-log polls: the configured period, at most KEY_POLL_S with key prefetching on."""
    if cfg.enabled and cfg.key_prefetch.enabled:
        return min(cfg.poll_interval_s, KEY_POLL_S)
    return cfg.poll_interval_s


class PredictorService:
    """The poll loop and the state the HTTP handlers report."""

    def __init__(self, cache_url: str, data_dir: Path, config_path: Path | None) -> None:
        self.cache_url = cache_url.rstrip("/")
        self.config = ConfigFile(config_path)
        self.config.reload()
        # One training thread for both pipelines: two trainings at once would take both cores of a small pod.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="predictor-train")
        self.predictor = Predictor(data_dir, self.config.config, executor=self._executor)
        self.keys = KeyPredictor(data_dir, self.config.config, executor=self._executor,
                                 metrics=self.predictor.metrics)
        self.cursor = 0
        self.cache_error: str | None = "not polled yet"
        self.started = False
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def _reload_config(self) -> None:
        had_error = self.config.error
        if self.config.reload():
            self.predictor.apply_config(self.config.config)
            self.keys.apply_config(self.config.config)
        if self.config.error and self.config.error != had_error:
            self.predictor.metrics.config_errors.inc()

    async def _fetch_page(self, wait: float = 0.0) -> list[dict[str, Any]]:
        assert self._session is not None
        url = f"{self.cache_url}/v1/access-log"
        params = {"after": str(self.cursor), "limit": str(PAGE)}
        if wait > 0:
            params["wait"] = f"{wait:g}"
        async with self._session.get(url, params=params) as r:
            if r.status != 200:
                raise RuntimeError(f"GET /v1/access-log answered {r.status}")
            doc = await r.json()
        first = int(doc.get("first") or 0)
        if self.cursor and first > self.cursor + 1:
            # The cache's ring buffer moved past us: some accesses were never seen (learning goes on).
            self.predictor.metrics.log_gaps.inc()
        entries = doc.get("entries") or []
        if entries:
            self.cursor = int(entries[-1]["seq"])
        return entries

    async def _send(self, hints: list[Hint]) -> None:
        assert self._session is not None
        for i in range(0, len(hints), MAX_HINTS_PER_POST):
            body = {"hints": [h.to_json() for h in hints[i:i + MAX_HINTS_PER_POST]]}
            async with self._session.post(f"{self.cache_url}/v1/prefetch", json=body) as r:
                if r.status >= 300:
                    self.predictor.metrics.cache_errors.labels("prefetch").inc()
                    log.warning("POST /v1/prefetch answered %s: %s", r.status, (await r.text())[:200])
                    return

    async def _send_keys(self, hints: list[KeyHint]) -> None:
        assert self._session is not None
        for i in range(0, len(hints), MAX_HINTS_PER_POST):
            body = {"keys": [h.to_json() for h in hints[i:i + MAX_HINTS_PER_POST]]}
            async with self._session.post(f"{self.cache_url}/v1/prefetch/keys", json=body) as r:
                if r.status >= 300:
                    self.predictor.metrics.cache_errors.labels("prefetch_keys").inc()
                    log.warning("POST /v1/prefetch/keys answered %s: %s", r.status, (await r.text())[:200])
                    return

    def _observe(self, accesses: list[Access], now: float) -> tuple[list[Hint], list[KeyHint]]:
        # Both pipelines in one worker-thread call: their CPU work stays off the event loop.
        return self.predictor.observe(accesses, now), self.keys.observe(accesses, now)

    async def poll_once(self, wait: float = 0.0) -> int:
        """One tick: reload settings, read new accesses (the first request may long-poll ``wait`` seconds for
        one), send hints, maybe start training."""
        self._reload_config()
        consumed = 0
        try:
            for page in range(MAX_PAGES_PER_TICK):
                entries = await self._fetch_page(wait if page == 0 else 0.0)
                accesses = []
                for e in entries:
                    try:
                        accesses.append(parse_log_entry(e))
                    except AccessLogError as exc:
                        log.warning("skipping access-log entry: %s", exc)
                if accesses:
                    hints, key_hints = await asyncio.to_thread(self._observe, accesses, time.time())
                    if hints:
                        await self._send(hints)
                    if key_hints:
                        await self._send_keys(key_hints)
                consumed += len(entries)
                if len(entries) < PAGE:
                    break
            self.cache_error = None
        except (TimeoutError, aiohttp.ClientError, RuntimeError, ValueError, KeyError) as exc:
            self.cache_error = f"{type(exc).__name__}: {exc}"
            self.predictor.metrics.cache_errors.labels("access_log").inc()
            log.warning("cache at %s not usable: %s", self.cache_url, self.cache_error)
        self.predictor.maybe_train()
        self.keys.maybe_train()
        return consumed

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            consumed = await self.poll_once(wait=LONG_POLL_S)
            if consumed == 0 and loop.time() - started < LONG_POLL_S / 2:
                # Nothing, at once: an error, or a cache that does not long-poll. Fall back to the poll period.
                await asyncio.sleep(poll_interval(self.config.config))

    async def start(self, app: web.Application) -> None:
        """aiohttp on_startup: load the model, start polling."""
        await asyncio.to_thread(self.predictor.load)
        await asyncio.to_thread(self.keys.load)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._task = asyncio.create_task(self._loop())
        self.started = True

    async def stop(self, app: web.Application) -> None:
        """aiohttp on_cleanup."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()
        await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)

    def status(self) -> dict[str, Any]:
        """`GET /v1/status` body."""
        return {**self.predictor.status(), "keyHints": self.keys.status(), "cursor": self.cursor,
                "cacheError": self.cache_error, "configError": self.config.error}


def create_app(service: PredictorService) -> web.Application:
    """The predictor's HTTP app."""
    app = web.Application()

    async def healthz(request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True})

    async def readyz(request: web.Request) -> web.StreamResponse:
        # Ready once started: a cache outage shows in /v1/status and metrics, not as a flapping pod.
        return web.json_response({"ready": service.started}, status=200 if service.started else 503)

    async def metrics(request: web.Request) -> web.StreamResponse:
        return web.Response(body=generate_latest(service.predictor.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status(request: web.Request) -> web.StreamResponse:
        return web.json_response(service.status())

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/status", status)
    app.on_startup.append(service.start)
    app.on_cleanup.append(service.stop)
    return app


def parser() -> argparse.ArgumentParser:
    """Command-line flags (docs/interfaces.md)."""
    env = os.environ.get
    p = argparse.ArgumentParser(prog="chronoshard-predictor", description="chronoshard prefetch predictor")
    p.add_argument("--host", default=env("POD_IP", "127.0.0.1"), help="address to bind (default: $POD_IP or 127.0.0.1)")
    p.add_argument("--port", type=int, default=7402)
    p.add_argument("--cache-url", required=True, help="base URL of this shard's cache")
    p.add_argument("--data-dir", required=True, type=Path, help="where the model is kept (the shard's volume)")
    p.add_argument("--config", type=Path, default=None, help="predictor.json (written by the PrefetchPolicy)")
    p.add_argument("--log-level", default=env("CHRONOSHARD_LOG_LEVEL", "INFO"))
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = parser().parse_args(argv)
    setup_logging(args.log_level)
    service = PredictorService(args.cache_url, args.data_dir, args.config)
    web.run_app(create_app(service), host=args.host, port=args.port, access_log=None, print=None,
                shutdown_timeout=10)


if __name__ == "__main__":
    main()
