"""The service's calls to member nodes and caches: one pooled session, HTTPS verified against the members' CAs
with the service's own certificate as client certificate (serving/tls.py), each copy named by its ``serverName``."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from aiohttp import web
from chronoshard.shardnode.serving import tls


class Peers:
    """A client session opened at start-up (``open``) and closed at cleanup."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None

    def open(self, app: web.Application) -> None:
        """Open the session with the app's client TLS context (after tls.install)."""
        self.session = aiohttp.ClientSession(connector=tls.connector(app, limit=256, limit_per_host=8))

    async def close(self) -> None:
        """Close the session."""
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def request(self, method: str, url: str, server_name: str | None, timeout: float,
                      doc: Any = None) -> tuple[int, Any]:
        """One request; (status, JSON body or None). Connection errors and timeouts are raised."""
        if self.session is None:
            raise aiohttp.ClientConnectionError("peer session not open")
        kwargs: dict[str, Any] = {"timeout": aiohttp.ClientTimeout(total=timeout)}
        if doc is not None:
            kwargs["data"] = json.dumps(doc).encode()
            kwargs["headers"] = {"Content-Type": "application/json"}
        if server_name and url.startswith("https://"):
            kwargs["server_hostname"] = server_name
        async with self.session.request(method, url, **kwargs) as resp:
            raw = await resp.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            return resp.status, body

    async def get_json(self, url: str, server_name: str | None, timeout: float) -> tuple[int, Any]:
        """GET."""
        return await self.request("GET", url, server_name, timeout)
