"""The cache's HTTP client for its node: fetch frames, pass writes through, tail the change log."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL


class UpstreamError(Exception):
    """The node answered an error (status and JSON body are passed on to the cache's client)."""

    def __init__(self, status: int, body: dict[str, Any], retry_after: str | None = None) -> None:
        super().__init__(body.get("message", f"node answered {status}"))
        self.status, self.body = status, body
        # A node that is not (or no longer) an active primary says when to try again: kept for the client.
        self.retry_after = retry_after


@dataclass(frozen=True)
class FetchedFrame:
    """A stored frame as the node returned it."""

    frame: bytes
    checksum: bytes
    key_version: int
    lsn: int


async def _error(resp: aiohttp.ClientResponse) -> UpstreamError:
    try:
        body = await resp.json(content_type=None)
        if not isinstance(body, dict) or "error" not in body:
            raise ValueError
    except ValueError:
        body = {"error": "upstream_error", "message": f"node answered {resp.status}"}
    return UpstreamError(resp.status, body, resp.headers.get("Retry-After"))


class NodeClient:
    """Thin wrapper over one pooled aiohttp session; errors become UpstreamError (503 if unreachable)."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession, timeout: float = 10.0,
                 server_hostname: str | None = None) -> None:
        self.base = URL(base_url)
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        # The pod's DNS name, checked against the node's certificate when the node is dialled by IP.
        self.server_hostname = server_hostname

    def url(self, *segments: str) -> URL:
        """Join path segments (each percent-encoded) onto the node URL."""
        u = self.base
        for s in segments:
            u = u / s
        return u

    async def request(self, method: str, url: URL, **kw: Any) -> tuple[int, bytes, Any]:
        """One request; returns (status, body, headers)."""
        kw.setdefault("timeout", self.timeout)
        if self.server_hostname is not None:
            kw.setdefault("server_hostname", self.server_hostname)
        try:
            async with self.session.request(method, url, **kw) as resp:
                if resp.status >= 400:
                    raise await _error(resp)
                return resp.status, await resp.read(), resp.headers
        except aiohttp.ClientConnectorError as exc:
            # No connection, so not a byte of the request reached the node (its pod is being replaced, say):
            # "sent": false tells our client that sending again is no retry of a request the node has seen.
            raise UpstreamError(503, {"error": "node_unavailable", "sent": False,
                                      "message": f"node unreachable: {type(exc).__name__}"}) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(503, {"error": "node_unavailable",
                                      "message": f"node unreachable: {type(exc).__name__}"}) from None

    async def get_frame(self, table: str, key: str, headers: dict[str, str] | None = None) -> FetchedFrame | None:
        """The stored frame, or None if the node has no such block (``headers``: e.g. the read's Min-LSN)."""
        try:
            _, body, h = await self.request("GET", self.url("v1", "tables", table, "frames", key),
                                            headers=headers or {})
        except UpstreamError as exc:
            if exc.status == 404 and exc.body.get("error") == "not_found":
                return None
            raise
        return FetchedFrame(body, bytes.fromhex(h["X-Chronoshard-Checksum"]), int(h["X-Chronoshard-Key-Version"]),
                            int(h["X-Chronoshard-Lsn"]))

    async def get_frames(self, table: str, keys: list[str],
                         headers: dict[str, str] | None = None) -> list[FetchedFrame | dict[str, Any] | None]:
        """Frames for many keys: FetchedFrame, None (absent) or an inline error dict per key."""
        _, body, _ = await self.request("POST", self.url("v1", "tables", table, "frames:batchGet"),
                                        json={"keys": keys}, headers=headers or {})
        out: list[FetchedFrame | dict[str, Any] | None] = []
        for item in json.loads(body)["frames"]:
            if "error" in item:
                out.append(item["error"])
            elif not item["found"]:
                out.append(None)
            else:
                out.append(FetchedFrame(base64.b64decode(item["frame"]), bytes.fromhex(item["checksum"]),
                                        item["keyVersion"], item["lsn"]))
        return out

    async def put(self, table: str, key: str, body: bytes, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """Write through; returns the node's JSON answer (lsn, keyVersion, ...)."""
        _, resp, _ = await self.request("PUT", self.url("v1", "tables", table, "blocks", key), data=body,
                                        headers={"Content-Type": "application/octet-stream", **(headers or {})})
        return dict(json.loads(resp))

    async def delete(self, table: str, key: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """Delete through."""
        _, resp, _ = await self.request("DELETE", self.url("v1", "tables", table, "blocks", key),
                                        headers=headers or {})
        return dict(json.loads(resp))

    async def changes(self, after: int, limit: int = 1000, wait: float = 10.0) -> dict[str, Any]:
        """One page of the node's change log (long-polls up to ``wait`` seconds)."""
        url = self.url("v1", "changes").with_query(after=after, limit=limit, wait=wait)
        _, body, _ = await self.request("GET", url, timeout=aiohttp.ClientTimeout(total=wait + 10))
        return dict(json.loads(body))

    async def passthrough(self, method: str, path_segments: list[str], query: Any = None) -> tuple[int, bytes, Any]:
        """Forward a read-only request (e.g. scans) to the node unchanged."""
        url = self.url(*path_segments)
        if query:
            url = url.with_query(query)
        return await self.request(method, url)
