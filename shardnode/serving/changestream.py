"""Async client of a node's change stream: consumer slots, change pages with frames, the seeding snapshot and
conditional writes (docs/interfaces.md, "Change stream and consumers"). Used by the shadow and by mirroring.

The caller owns the aiohttp session (TLS and credentials as the cache's NodeClient has them); ``server_hostname``
is the name checked against the node's certificate when the node is dialled by IP.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from chronoshard.shardnode.auth.writer import ON_BEHALF_HEADER
from yarl import URL

IF_LSN_HEADER = "X-Chronoshard-If-Lsn"


class ChangeStreamError(Exception):
    """The node answered an error (or could not be reached: status 503, error ``node_unavailable``)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {body.get('error')}: {body.get('message', '')}")
        self.status, self.body = status, body


@dataclass(frozen=True)
class StreamChange:
    """One change-log entry; ``frame``/``checksum`` for puts and rewraps recorded while a slot existed;
    ``identity`` the user the node recorded as making it (None: a rewrap, no authentication, or an older node);
    ``origin`` why it was logged: ``write``, ``move_in`` (a reshard moved the block in) or ``purge`` (a moved-away
    block deleted) — docs/resharding.md; an older node sends none: ``write``."""

    lsn: int
    time: float
    table: str
    key: str
    op: str  # put | delete | rewrap
    key_version: int | None
    size: int
    frame: bytes | None
    checksum: bytes | None
    identity: str | None = None
    origin: str = "write"


@dataclass(frozen=True)
class ChangePage:
    """One answer of `GET /v1/changes`; pass ``next`` as ``after`` to continue; ``gap``: re-seed."""

    changes: list[StreamChange]
    next: int
    last_lsn: int
    first_lsn: int
    gap: bool


@dataclass(frozen=True)
class SnapshotBlock:
    """One block of a snapshot, as stored (ciphertext frame)."""

    table: str
    key: str
    key_version: int
    size: int
    checksum: bytes
    frame: bytes
    lsn: int


def _bytes(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value, validate=True)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None  # an older node sends none; anything else is not a name


def parse_change(doc: dict[str, Any]) -> StreamChange:
    """A change entry from its JSON form."""
    return StreamChange(doc["lsn"], doc["time"], doc["table"], doc["key"], doc["op"], doc["keyVersion"], doc["size"],
                        _bytes(doc.get("frame")), _bytes(doc.get("checksum")), _text(doc.get("identity")),
                        _text(doc.get("origin")) or "write")


def parse_snapshot_block(doc: dict[str, Any]) -> SnapshotBlock:
    """A snapshot line (not the first or the end line) as a block."""
    return SnapshotBlock(doc["table"], doc["key"], doc["keyVersion"], doc["size"], base64.b64decode(doc["checksum"]),
                         base64.b64decode(doc["frame"]), doc["lsn"])


async def _error(resp: aiohttp.ClientResponse) -> ChangeStreamError:
    try:
        body = await resp.json(content_type=None)
        if not isinstance(body, dict) or "error" not in body:
            raise ValueError
    except ValueError:
        body = {"error": "upstream_error", "message": f"node answered {resp.status}"}
    return ChangeStreamError(resp.status, body)


def _unreachable(exc: BaseException) -> ChangeStreamError:
    return ChangeStreamError(503, {"error": "node_unavailable", "message": f"node unreachable: {type(exc).__name__}"})


class ChangeStreamClient:
    """One node's change stream over a session the caller owns."""

    def __init__(self, node_url: str, session: aiohttp.ClientSession, *, server_hostname: str | None = None,
                 timeout: float = 30.0) -> None:
        self.base = URL(node_url)
        self.session = session
        self.server_hostname = server_hostname
        self.timeout = timeout

    def _url(self, *segments: str) -> URL:
        u = self.base
        for s in segments:
            u = u / s  # each segment percent-encoded
        return u

    def _kw(self, timeout: float | None = None, **kw: Any) -> dict[str, Any]:
        kw["timeout"] = aiohttp.ClientTimeout(total=self.timeout if timeout is None else timeout)
        if self.server_hostname is not None:
            kw["server_hostname"] = self.server_hostname
        return kw

    async def _json(self, method: str, url: URL, ok: Sequence[int] = (200, 201), **kw: Any) -> tuple[int, Any]:
        """One request answered with JSON; statuses outside ``ok`` raise ChangeStreamError."""
        try:
            async with self.session.request(method, url, **self._kw(**kw)) as resp:
                if resp.status not in ok:
                    raise await _error(resp)
                return resp.status, await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unreachable(exc) from None

    # ---- slots ---------------------------------------------------------------------------------------
    async def register(self, name: str, start_lsn: int | None = None, reset: bool = False) -> dict[str, Any]:
        """Create the slot (or return the existing one unchanged; ``reset`` re-creates it at ``start_lsn``)."""
        body: dict[str, Any] = {}
        if start_lsn is not None:
            body["startLsn"] = start_lsn
        if reset:
            body["reset"] = True
        _, doc = await self._json("PUT", self._url("v1", "consumers", name), json=body)
        return dict(doc)

    async def ack(self, name: str, lsn: int) -> None:
        """Everything up to ``lsn`` is consumed: the node may trim it."""
        await self._json("POST", self._url("v1", "consumers", name, "ack"), json={"lsn": lsn})

    async def consumers(self) -> dict[str, Any]:
        """``{"consumers": [...], "lastLsn": L}``."""
        _, doc = await self._json("GET", self._url("v1", "consumers"))
        return dict(doc)

    async def consumer(self, name: str) -> dict[str, Any]:
        """One slot (ChangeStreamError 404 if unknown)."""
        _, doc = await self._json("GET", self._url("v1", "consumers", name))
        return dict(doc)

    async def unregister(self, name: str) -> None:
        """Drop the slot (the node stops holding the log for it)."""
        await self._json("DELETE", self._url("v1", "consumers", name))

    # ---- changes -------------------------------------------------------------------------------------
    async def changes(self, after: int, limit: int = 1000, wait: float = 0, tables: Sequence[str] | None = None,
                      consumer: str | None = None,
                      keyspace: Sequence[tuple[int, int]] | None = None) -> ChangePage:
        """One page of changes after ``after`` with frames, long-polling up to ``wait`` s; ``consumer``: ``gap``
        is also true while that slot is behind; ``keyspace``: only changes of keys in these inclusive keyspace id
        ranges (a node from before #19 ignores it and sends every change: filter again)."""
        query: dict[str, str] = {"after": str(after), "limit": str(limit), "wait": str(wait), "frames": "true"}
        if tables:
            query["tables"] = ",".join(tables)
        if keyspace:
            query["keyspace"] = ",".join(f"{lo:016x}-{hi:016x}" for lo, hi in keyspace)
        if consumer is not None:
            query["consumer"] = consumer
        _, doc = await self._json("GET", self._url("v1", "changes").with_query(query), timeout=wait + self.timeout)
        return ChangePage([parse_change(c) for c in doc["changes"]], doc["next"], doc["lastLsn"], doc["firstLsn"],
                          doc["gap"])

    # ---- snapshot ------------------------------------------------------------------------------------
    async def snapshot(self, tables: Sequence[str] | None = None,
                       keyspace: Sequence[tuple[int, int]] | None = None) -> AsyncIterator[int | SnapshotBlock]:
        """The node's consistent copy: yields its LSN S first, then every block (``keyspace``: only those in these
        inclusive keyspace id ranges); ChangeStreamError if the stream ends without its end line (cut short) or
        the block count does not match."""
        url = self._url("v1", "snapshot")
        query: dict[str, str] = {}
        if tables:
            query["tables"] = ",".join(tables)
        if keyspace:
            query["keyspace"] = ",".join(f"{lo:016x}-{hi:016x}" for lo, hi in keyspace)
        if query:
            url = url.with_query(query)
        kw = self._kw()
        kw["timeout"] = aiohttp.ClientTimeout(total=None, sock_read=self.timeout)  # long streams are fine
        try:
            async with self.session.get(url, **kw) as resp:
                if resp.status != 200:
                    raise await _error(resp)
                async for item in _snapshot_items(resp):
                    yield item
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unreachable(exc) from None

    # ---- frames ----------------------------------------------------------------------------------------------
    async def batch_frames(self, table: str, keys: Sequence[str]) -> list[dict[str, Any]]:
        """The stored frames of ``keys`` (``POST /v1/tables/{t}/frames:batchGet``, at most 1000), as the node
        answers them: ``{"key", "found", "keyVersion", "lsn", "checksum" (hex), "frame" (base64)}``."""
        url = self._url("v1", "tables", table, "frames:batchGet")
        _, doc = await self._json("POST", url, json={"keys": list(keys)})
        return list(doc["frames"])

    # ---- conditional writes --------------------------------------------------------------------------
    async def put_if(self, table: str, key: str, value: bytes, if_lsn: int,
                     on_behalf_of: str | None = None) -> int | None:
        """Write only if the block is at ``if_lsn`` (0: absent); its new LSN, or None if it was not (412).
        ``on_behalf_of``: the writer the node records (it honours it from the pod identity only)."""
        status, doc = await self._json("PUT", self._url("v1", "tables", table, "blocks", key), ok=(200, 412),
                                       data=value, headers={"Content-Type": "application/octet-stream",
                                                            IF_LSN_HEADER: str(if_lsn),
                                                            **_on_behalf(on_behalf_of)})
        return None if status == 412 else int(doc["lsn"])

    async def delete_if(self, table: str, key: str, if_lsn: int, on_behalf_of: str | None = None) -> int | None:
        """Delete only if the block is at ``if_lsn``; the delete's LSN, or None if it was not (412)."""
        status, doc = await self._json("DELETE", self._url("v1", "tables", table, "blocks", key), ok=(200, 412),
                                       headers={IF_LSN_HEADER: str(if_lsn), **_on_behalf(on_behalf_of)})
        return None if status == 412 else int(doc["lsn"])


def _on_behalf(writer: str | None) -> dict[str, str]:
    return {} if writer is None else {ON_BEHALF_HEADER: writer}


async def _lines(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """NDJSON lines of any length (a line carries a whole frame, beyond aiohttp's readline limit)."""
    buf = bytearray()
    async for chunk in resp.content.iter_any():
        searched = len(buf)  # only the new bytes can hold the next newline
        buf += chunk
        pos, idx = 0, buf.find(b"\n", searched)
        while idx != -1:
            yield bytes(buf[pos:idx])
            pos = idx + 1
            idx = buf.find(b"\n", pos)
        del buf[:pos]
    if buf:
        yield bytes(buf)  # an unterminated last line: the stream was cut


def _cut(message: str) -> ChangeStreamError:
    return ChangeStreamError(502, {"error": "snapshot_incomplete", "message": message})


async def _snapshot_items(resp: aiohttp.ClientResponse) -> AsyncIterator[int | SnapshotBlock]:
    seen, head, end = 0, False, None
    async for line in _lines(resp):
        if end is not None:
            raise _cut("data after the end line")
        try:
            doc = json.loads(line)
        except ValueError:
            raise _cut("a snapshot line is not JSON (stream cut mid-line)") from None
        if not head:
            if "lsn" not in doc:
                raise _cut("the first line does not carry the snapshot LSN")
            head = True
            yield int(doc["lsn"])
        elif doc.get("end") is True:
            end = int(doc["blocks"])
        else:
            seen += 1
            yield parse_snapshot_block(doc)
    if end is None:
        raise _cut("the stream ended without its end line")
    if end != seen:
        raise _cut(f"the end line counts {end} blocks, {seen} arrived")
