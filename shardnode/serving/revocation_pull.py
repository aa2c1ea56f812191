"""The tiered tokens' revocations pulled from the token service every 10 s (docs/tokens.md): the back-up of its
pushes - a push lost, or a node or cache restarted (its revocation set is in memory), is made up for within one
interval. The service is the one tokens.json names (``service.url``, ``serverName``); the request goes out with the
process's pod certificate (serving/tls.py), which the service must accept for ``GET /v1/revocations``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from aiohttp import web
from chronoshard.shardnode.auth.tiered import RevocationSet, TokensFile, parse_revocations

from . import tls

log = logging.getLogger(__name__)

PULL_SECONDS = 10.0


class RevocationPuller:
    """``GET <service>/v1/revocations?since=<cursor>`` every ``interval`` seconds (at once at start-up) into
    ``revocations``; the cursor starts again at 0 when tokens.json names another service."""

    def __init__(self, tokens: TokensFile, revocations: RevocationSet, interval: float = PULL_SECONDS) -> None:
        self.tokens, self.revocations, self.interval = tokens, revocations, interval
        self.cursor = 0
        self.pulls = 0  # successful pulls (tests, status)
        self._url: str | None = None
        self._failing: int | None = None  # the status of the failure logged last (one line per change)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, app: web.Application) -> None:
        """on_startup (after TLS is installed): the session with the pod's client certificate, the loop."""
        self._session = aiohttp.ClientSession(connector=tls.connector(app, limit=2))
        self._task = asyncio.create_task(self.run(), name="revocation-pull")

    async def stop(self, app: web.Application) -> None:
        """on_cleanup."""
        if self._task is not None:
            self._task.cancel()
        if self._session is not None:
            await self._session.close()

    async def run(self) -> None:
        """Pull until cancelled."""
        while True:
            try:
                await self.pull_once()
            except Exception as exc:  # a broken answer or connection: logged once, tried again next interval
                self._report(0, type(exc).__name__)
            await asyncio.sleep(self.interval)

    async def pull_once(self) -> int:
        """One pull; the number of revocations received (0 without a service in tokens.json)."""
        cfg = await asyncio.to_thread(self.tokens.current)
        if cfg is None or cfg.service_url is None or self._session is None:
            return 0
        if cfg.service_url != self._url:
            self._url, self.cursor = cfg.service_url, 0
        kw: dict[str, Any] = {"timeout": aiohttp.ClientTimeout(total=5), "params": {"since": str(self.cursor)}}
        if cfg.service_server_name and cfg.service_url.startswith("https://"):
            kw["server_hostname"] = cfg.service_server_name
        async with self._session.get(cfg.service_url.rstrip("/") + "/v1/revocations", **kw) as resp:
            if resp.status != 200:
                self._report(resp.status, "refused")
                return 0
            doc = await resp.json(content_type=None)
        items = parse_revocations(doc)
        for jti, exp in items:
            self.revocations.add(jti, exp)
        cursor = doc.get("cursor")
        if isinstance(cursor, int) and not isinstance(cursor, bool):
            self.cursor = cursor
        self.pulls += 1
        if self._failing is not None:
            log.info("revocations pulled from the token service again")
            self._failing = None
        return len(items)

    def _report(self, status: int, what: str) -> None:
        if self._failing != status:
            self._failing = status
            log.warning("cannot pull tiered-token revocations from the token service (%s %s); pushes still apply",
                        status or "", what)
