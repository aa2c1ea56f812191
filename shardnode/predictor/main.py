"""`chronoshard-predictor`: tails the cache's access log, sends prefetch hints, serves health and metrics."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from chronoshard.shardnode.auth import policy
from chronoshard.shardnode.predictor.access import Access, AccessLogError, parse_log_entry
from chronoshard.shardnode.predictor.config import ConfigFile, PredictorConfig
from chronoshard.shardnode.predictor.engine import Hint, Predictor
from chronoshard.shardnode.predictor.keys import KeyHint, KeyPredictor
from chronoshard.shardnode.serving import tls
from chronoshard.shardnode.serving.http_common import Handler
from chronoshard.shardnode.serving.scaffold import (
    Probes,
    Route,
    create_server_app,
    parse_process_args,
    process_parser,
    run,
)

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
        # The pod's DNS name, checked against the cache's certificate when the cache is dialled by IP.
        self._server_hostname = tls.internal_hostname(self.cache_url)
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

    @property
    def session(self) -> aiohttp.ClientSession:
        """The session to the cache (opened on start-up)."""
        if self._session is None:
            raise RuntimeError("the predictor has not started")
        return self._session

    async def _fetch_page(self, wait: float = 0.0) -> list[dict[str, Any]]:
        url = f"{self.cache_url}/v1/access-log"
        params = {"after": str(self.cursor), "limit": str(PAGE)}
        if wait > 0:
            params["wait"] = f"{wait:g}"
        async with self.session.get(url, params=params, server_hostname=self._server_hostname) as r:
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

    async def _post_hints(self, path: str, field: str, hints: Sequence[Hint | KeyHint], error_label: str) -> None:
        # In bodies the cache accepts; the first refusal stops the rest (counted and logged once).
        for i in range(0, len(hints), MAX_HINTS_PER_POST):
            body = {field: [h.to_json() for h in hints[i:i + MAX_HINTS_PER_POST]]}
            async with self.session.post(f"{self.cache_url}{path}", json=body,
                                         server_hostname=self._server_hostname) as r:
                if r.status >= 300:
                    self.predictor.metrics.cache_errors.labels(error_label).inc()
                    log.warning("POST %s answered %s: %s", path, r.status, (await r.text())[:200])
                    return

    async def _send(self, hints: list[Hint]) -> None:
        await self._post_hints("/v1/prefetch", "hints", hints, "prefetch")

    async def _send_keys(self, hints: list[KeyHint]) -> None:
        await self._post_hints("/v1/prefetch/keys", "keys", hints, "prefetch_keys")

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
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10), connector=tls.connector(app))
        self._task = asyncio.create_task(self._loop())
        self.started = True

    async def shutting_down(self, app: web.Application) -> None:
        """aiohttp on_shutdown: nothing long-polls the predictor, so nothing to release."""

    async def stop(self, app: web.Application) -> None:
        """aiohttp on_cleanup."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()
        await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)

    def readiness(self) -> dict[str, Any]:
        """The `/readyz` body: ready once started (a cache outage shows in /v1/status and metrics, not as a
        flapping pod)."""
        return {"ready": self.started}

    def status(self) -> dict[str, Any]:
        """`GET /v1/status` body."""
        return {**self.predictor.status(), "keyHints": self.keys.status(), "cursor": self.cursor,
                "cacheError": self.cache_error, "configError": self.config.error}


def status_handler(service: PredictorService) -> Handler:
    """GET /v1/status: the model, hint counters, cursor and errors."""

    async def status(request: web.Request) -> web.StreamResponse:
        return web.json_response(service.status())

    return status


def create_app(service: PredictorService) -> web.Application:
    """The predictor's HTTP app (aiohttp's own error pages and HEAD routes, as before the scaffold)."""
    probes = Probes(service.predictor.metrics.registry, service.readiness)
    routes = [Route("GET", "/v1/status", status_handler(service), policy.Access.ADMIN)]
    return create_server_app(service, probes, routes, json_errors=False, allow_head=True)


def parser() -> argparse.ArgumentParser:
    """Command-line flags (docs/interfaces.md)."""
    p = process_parser("chronoshard-predictor", "chronoshard prefetch predictor", port=7402)
    p.add_argument("--cache-url", required=True, help="base URL of this shard's cache")
    p.add_argument("--data-dir", required=True, type=Path, help="where the model is kept (the shard's volume)")
    p.add_argument("--config", type=Path, default=None, help="predictor.json (written by the PrefetchPolicy)")
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = parse_process_args(parser(), argv)
    service = PredictorService(args.cache_url, args.data_dir, args.config)
    run(create_app(service), args.host, args.port, security=args.security, long_request_lines=False)


if __name__ == "__main__":
    main()
