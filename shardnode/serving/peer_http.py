"""The HTTP/1.1 client a cache forwards with: persistent connections to each peer, bounded, nothing set up per request.

A forwarded read costs one extra hop, and on a loaded pod the hop's price is CPU. aiohttp's ClientSession spent
about 140 µs of CPU per GET in the forwarding cache (request and response objects, tracing hooks, timers, cookie
and redirect handling), a third of the forwarder's Python time; writing the request line and headers on a kept-open
connection and reading the answer back costs about 50 µs (docs/data-plane.md, "Benchmarks").

What it does: one pool of open connections per peer (scheme, host, port), reused most-recently-used first, at most
``limit_per_peer`` in use to one peer and ``limit`` in all (a request beyond them waits for one to come free,
within its timeout); an idle connection older than ``keepalive`` seconds, or one the peer closed, is closed instead
of reused, so a request never picks a connection the peer is closing (aiohttp's server closes them after 75 s).
TLS connections are verified with the given context, so a kept-open connection costs no handshake per request.
Answers with ``Content-Length``, chunked answers and answers ending with the connection are read; the body is
returned as it arrived (no decompression), so the caller passes ``Content-Encoding`` on with it. It never
retries: a connection problem is a PeerError and the caller answers 503, as before.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_lib
from dataclasses import dataclass, field

from multidict import CIMultiDict
from yarl import URL

__all__ = ["PeerError", "PeerPool", "PeerResponse"]

# An answer's status line and headers larger than this are refused (asyncio's StreamReader limit).
MAX_HEAD = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class PeerError(Exception):
    """The peer could not be reached or answered with something that is not HTTP/1.x."""


@dataclass
class PeerResponse:
    """A peer's answer: status, headers as received (repeated ones kept), and the whole body."""

    status: int
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class _Peer:
    """Where one base URL leads, worked out once: the connection parameters and the Host header."""

    host: str
    port: int
    ssl: ssl_lib.SSLContext | None
    host_header: str
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = field(default_factory=list)
    slots: asyncio.Semaphore | None = None


def head_bytes(method: str, path_qs: str, host_header: str, headers: dict[str, str], body_len: int | None) -> bytes:
    """The request line and headers of one request (``body_len`` None: no Content-Length header); ValueError if a
    header would break the message (a CR or LF in a name or value)."""
    parts = [f"{method} {path_qs} HTTP/1.1\r\nHost: {host_header}\r\n"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"header {name!r} cannot be sent")
        parts.append(f"{name}: {value}\r\n")
    if body_len is not None:
        parts.append(f"Content-Length: {body_len}\r\n")
    parts.append("\r\n")
    # Headers arrive decoded by aiohttp's parser (UTF-8, surrogateescape): encoded back the same way, byte for byte.
    return "".join(parts).encode("utf-8", "surrogateescape")


def parse_head(head: bytes) -> tuple[str, int, CIMultiDict[str]]:
    """(HTTP version, status, headers) of an answer's head (up to and including the blank line); PeerError if it
    is not an HTTP/1.x status line."""
    lines = head.decode("utf-8", "surrogateescape").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise PeerError("the peer's answer is not HTTP/1.x")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise PeerError("malformed header line in the peer's answer")
            headers.add(name.strip(), value.strip())
    return version, int(code), headers


def body_framing(method: str, status: int, headers: CIMultiDict[str]) -> tuple[str, int]:
    """How the answer's body is delimited: ("none", 0), ("length", n), ("chunked", 0) or ("close", 0)."""
    if method == "HEAD" or status in _NO_BODY_STATUS or 100 <= status < 200:
        return "none", 0
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        return "chunked", 0
    length = headers.get("Content-Length")
    if length is not None:
        if not length.isdigit():
            raise PeerError("the peer's Content-Length is not a number")
        return "length", int(length)
    return "close", 0


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        line = await reader.readuntil(b"\r\n")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise PeerError("malformed chunk size in the peer's answer") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers: read and dropped
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise PeerError("malformed chunk in the peer's answer")


class PeerPool:
    """Kept-open HTTP/1.1 connections to the peers, bounded per peer and in all (see the module docstring)."""

    def __init__(self, *, ssl: ssl_lib.SSLContext | None = None, limit: int = 256, limit_per_peer: int = 64,
                 keepalive: float = 60.0) -> None:
        self._ssl, self.limit_per_peer, self.keepalive = ssl, limit_per_peer, keepalive
        self._slots = asyncio.Semaphore(limit)
        self._peers: dict[str, _Peer] = {}
        self.opened = 0  # connections opened so far: a test's (and an operator's) check that they are reused
        self._closed = False

    def _peer(self, base_url: str) -> _Peer:
        peer = self._peers.get(base_url)
        if peer is None:
            u = URL(base_url)
            if u.scheme not in ("http", "https") or not u.host or u.port is None:
                raise PeerError(f"cannot forward to {base_url!r}")
            ctx = None
            if u.scheme == "https":
                ctx = self._ssl if self._ssl is not None else ssl_lib.create_default_context()
            host_header = u.host if u.is_default_port() else f"{u.host}:{u.port}"
            if ":" in u.host:  # an IPv6 literal
                host_header = f"[{u.host}]" if u.is_default_port() else f"[{u.host}]:{u.port}"
            peer = self._peers[base_url] = _Peer(u.host, u.port, ctx, host_header)
            peer.slots = asyncio.Semaphore(self.limit_per_peer)
        return peer

    def _take(self, peer: _Peer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        now = asyncio.get_running_loop().time()
        while peer.idle:
            reader, writer, since = peer.idle.pop()  # the most recently used: the least likely to be closing
            if now - since <= self.keepalive and not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
        return None

    async def _open(self, peer: _Peer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            conn = await asyncio.open_connection(peer.host, peer.port, ssl=peer.ssl,
                                                 server_hostname=peer.host if peer.ssl is not None else None,
                                                 limit=MAX_HEAD)
        except (OSError, ssl_lib.SSLError) as exc:
            raise PeerError(f"cannot connect: {type(exc).__name__}") from None
        self.opened += 1
        return conn

    async def request(self, method: str, base_url: str, path_qs: str, headers: dict[str, str], body: bytes,
                      timeout: float | None) -> PeerResponse:
        """Send one request to ``base_url`` + ``path_qs`` (already percent-encoded) and read the whole answer.

        PeerError or TimeoutError if it cannot be done within ``timeout`` seconds; never retried.
        """
        if self._closed:
            raise PeerError("the forwarding pool is closed")
        peer = self._peer(base_url)
        slots = peer.slots
        assert slots is not None  # set with the peer
        body_len = len(body) if body or method in _BODY_METHODS else None
        head = head_bytes(method, path_qs, peer.host_header, headers, body_len)
        async with asyncio.timeout(timeout), slots, self._slots:  # the peer's slot first: waiters hold no global one
            reader, writer = self._take(peer) or await self._open(peer)
            try:
                writer.write(head + body if body else head)
                resp, reusable = await self._answer(reader, method)
            except BaseException:  # timeout, cancellation, a broken answer: the connection's state is unknown
                writer.close()
                raise
            if reusable and not self._closed:
                peer.idle.append((reader, writer, asyncio.get_running_loop().time()))
            else:
                writer.close()
            return resp

    async def _answer(self, reader: asyncio.StreamReader, method: str) -> tuple[PeerResponse, bool]:
        try:
            version, status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
            framing, length = body_framing(method, status, headers)
            if framing == "length":
                body = await reader.readexactly(length)
            elif framing == "chunked":
                body = await _read_chunked(reader)
            elif framing == "close":
                body = await reader.read()
            else:
                body = b""
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
            raise PeerError(f"the peer's answer broke off: {type(exc).__name__}") from None
        keep = framing != "close" and version == "HTTP/1.1" and \
            "close" not in headers.get("Connection", "").lower()
        return PeerResponse(status, headers, body), keep

    async def close(self) -> None:
        """Close every idle connection; connections in use close when their request ends."""
        self._closed = True
        for peer in self._peers.values():
            while peer.idle:
                _, writer, _ = peer.idle.pop()
                writer.close()
