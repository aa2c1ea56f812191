"""The client side of tiered tokens (docs/tokens.md, "Python client and CLI"): ``TieredTokenSource`` asks a MirrorSet's
token service for a token, refreshes it before it expires, checks its status every 10 s (and at once after a 401,
403 or 503), swaps to the ``replacement`` the service pre-issued (a temporary token before an outage, a provisional
one during a failover, a valid one after), and says where the token works (``store``). It is a token getter
(``token_provider=``) for the block client; ``AsyncClient(..., tiered=source)`` also sends an ``Idempotency-Key``
with every write and answers a queued write (202) with ``Queued``.

The application notices no more than ``status`` (tier, store, expiresAt): tokens are never logged, nor shown in
``repr``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from .credentials import Credentials

log = logging.getLogger(__name__)

POLL_SECONDS = 10.0
REFUSED = frozenset({401, 403, 503})  # a block request refused like this: ask the service at once


class TokenServiceError(Exception):
    """The token service refused or failed (status, its error body); never carries a token."""

    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        super().__init__(f"token service answered {status}: {body.get('error', '')} {body.get('message', '')}")
        self.status, self.body = status, dict(body)


@dataclass(frozen=True)
class TokenStatus:
    """What the application sees of its token: the tier, the store it works against and when it expires."""

    token_id: str
    tier: str
    store: str
    expires_at: float
    state: str = "active"


class Queued(dict[str, Any]):
    """A write answered 202: queued on a healthy copy, applied later exactly once (``client.queued(id)`` asks).
    Still the JSON answer (``{"queued": id, "position": n}``), so code that reads a put's answer keeps working."""

    @property
    def id(self) -> str:
        """The write id."""
        return str(self["queued"])

    @property
    def position(self) -> int:
        """Among the writes still queued when it was accepted (1 = next)."""
        return int(self.get("position", 0))


def refresh_at(issued: float, expires: float, margin: float) -> float:
    """When to refresh a token valid from ``issued`` to ``expires``: ``margin`` of its lifetime before the end
    (at least 5 s before, never before it was issued)."""
    life = max(0.0, expires - issued)
    return max(issued, expires - max(5.0, margin * life))


class TieredTokenSource:
    """A tiered token from ``service_url`` for ``scope`` (the PredictiveTokenRequest body: ``table``,
    ``dataBlockId``, ``verbs``), the service reached with ``credentials`` (the caller's Kubernetes token)."""

    def __init__(self, service_url: str, credentials: Credentials | None = None,
                 scope: Mapping[str, Any] | None = None, *, ca: str | Path | None = None,
                 server_name: str | None = None, poll_seconds: float = POLL_SECONDS, refresh_margin: float = 0.2,
                 clock: Callable[[], float] = time.time, timeout: float = 10.0) -> None:
        self.service_url = service_url.rstrip("/")
        self.credentials = credentials if credentials is not None else Credentials.default()
        self.scope = dict(scope or {})
        self.ca, self.server_name = ca, server_name
        self.poll_seconds, self.refresh_margin, self.clock, self.timeout = poll_seconds, refresh_margin, clock, timeout
        self.label = f"the tiered token service {self.service_url}"
        self._token: str | None = None
        self._status: TokenStatus | None = None
        self._issued = 0.0
        self._polled = 0.0
        self._poll_now = False
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        # called with the new status whenever the tier or the store changes (the client follows ``store``)
        self.on_change: list[Callable[[TokenStatus], None]] = []

    def __repr__(self) -> str:
        return f"TieredTokenSource({self.service_url!r}, status={self._status!r})"  # never the token

    @property
    def status(self) -> TokenStatus | None:
        """The token held now (None before the first request)."""
        return self._status

    def refused(self, status: int) -> None:
        """A block request was refused (401/403/503): check the token's status before the next request."""
        if status in REFUSED:
            self._poll_now = True

    async def __call__(self) -> str | None:
        """The token to send: requested, refreshed, swapped for its replacement as needed."""
        async with self._lock:
            now = self.clock()
            if self._token is None or self._status is None:
                await self._request()
            elif now >= refresh_at(self._issued, self._status.expires_at, self.refresh_margin):
                await self._refresh()
            elif self._poll_now or now - self._polled >= self.poll_seconds:
                await self._poll()
            return self._token

    async def close(self) -> None:
        """Close the session to the token service."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- the token service's API -----------------------------------------------------------------------
    async def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        if self._session is None:
            ctx = ssl.create_default_context(cafile=str(self.ca)) if self.ca is not None else None
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx if ctx else True))
        bearer = await self.credentials.bearer()
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        kw: dict[str, Any] = {"headers": headers, "timeout": aiohttp.ClientTimeout(total=self.timeout)}
        if body is not None:
            kw["json"] = dict(body)
        if self.server_name is not None:
            kw["server_hostname"] = self.server_name
        async with self._session.request(method, self.service_url + path, **kw) as resp:
            try:
                doc = await resp.json(content_type=None)
            except ValueError:
                doc = {}
            return resp.status, doc if isinstance(doc, dict) else {}

    async def _request(self) -> None:
        status, doc = await self._call("POST", "/v1/tokens", self.scope)
        if status not in (200, 201):
            raise TokenServiceError(status, doc)
        self._adopt(doc)

    async def _refresh(self) -> None:
        assert self._status is not None
        status, doc = await self._call("POST", f"/v1/tokens/{self._status.token_id}/refresh")
        if status == 200:
            self._adopt(doc)
            return
        log.info("token %s: refresh refused (%s), requesting a new one", self._status.token_id,
                 doc.get("reason", status))
        await self._request()

    async def _poll(self) -> None:
        assert self._status is not None
        self._poll_now = False
        self._polled = self.clock()
        try:
            status, doc = await self._call("GET", f"/v1/tokens/{self._status.token_id}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The service unreachable: keep the token held (it still verifies offline) and ask again later.
            log.warning("token status check failed (%s); keeping the current token", type(exc).__name__)
            return
        replacement = doc.get("replacement") if status == 200 else None
        if isinstance(replacement, dict) and replacement.get("token"):
            self._adopt(replacement)
        elif status == 200 and doc.get("state") != "active":
            await self._request()  # revoked, expired or superseded without a replacement: ask again
        elif status in (401, 403, 404):
            await self._request()

    def _adopt(self, doc: Mapping[str, Any]) -> None:
        token, token_id = doc.get("token"), doc.get("tokenId")
        if not isinstance(token, str) or not isinstance(token_id, str):
            raise TokenServiceError(502, {"error": "bad_answer", "message": "no token in the service's answer"})
        new = TokenStatus(token_id, str(doc.get("tier", "")), str(doc.get("store", "")),
                          float(doc.get("expiresAt") or 0), "active")
        old = self._status
        self._token, self._status = token, new
        self._issued = self._polled = self.clock()
        if old is None or (old.tier, old.store) != (new.tier, new.store):
            log.info("tiered token %s: tier %s, store %s", token_id, new.tier, new.store)
            for listener in self.on_change:
                listener(new)
