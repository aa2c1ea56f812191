"""One pooled HTTP(S) session for a client: TLS verification, the bearer token, and the ``auto`` scheme.

An endpoint is ``https://host:port`` (TLS, never anything else), ``http://host:port`` (plain), or ``host:port``
(scheme ``auto``). ``auto`` exists for the rolling update that moves a ShardSet to TLS, when some pods already
serve HTTPS and others still plain HTTP: the client tries HTTPS, and only when the server answers the TLS
handshake in plaintext does it use HTTP for that endpoint, trying HTTPS again after ``reprobe_after`` seconds (or
at once when the plain connection is dropped, which is what a TLS server does with a plaintext request). A
certificate that does not verify is never a reason to fall back: that stays a ``CertificateRejected``.

When connecting by IP, ``Endpoint.server_name`` (the pod's DNS name ``NAME-i.NAME-headless.NS.svc``) is what
the certificate is checked against (aiohttp's ``server_hostname``): DNS names are always in the SANs, IPs may lag.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiohttp
from chronoshard.shardnode.client.credentials import Credentials
from chronoshard.shardnode.client.errors import CertificateRejected, Unavailable, Unreachable

Scheme = Literal["http", "https", "auto"]
REPROBE_AFTER = 30.0
CA_RECHECK = 5.0  # after a certificate failure, look at the CA source again at most this often
# What OpenSSL reports when the "ServerHello" it reads is the start of a plaintext HTTP answer ("HTTP/1.1 400").
PLAINTEXT_REPLY_REASONS = frozenset({"WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE",
                                     "UNKNOWN_PROTOCOL", "HTTP_REQUEST"})


@dataclass(frozen=True)
class Endpoint:
    """Where a shard is: ``hostport``, the scheme (None: the transport's default) and the name TLS checks."""

    hostport: str
    scheme: Scheme | None = None
    server_name: str | None = None

    @classmethod
    def parse(cls, text: str, server_name: str | None = None) -> Endpoint:
        """``https://h:p``, ``http://h:p`` or ``h:p`` (a trailing ``/`` is ignored)."""
        text = text.strip().rstrip("/")
        schemes: tuple[Scheme, ...] = ("http", "https")
        for scheme in schemes:
            if text.startswith(f"{scheme}://"):
                return cls(text[len(scheme) + 3:], scheme, server_name)
        if "://" in text:
            raise ValueError(f"endpoint {text!r}: only http://, https:// or host:port (auto) are understood")
        return cls(text, None, server_name)

    def url(self, scheme: str) -> str:
        """The base URL under ``scheme``."""
        return f"{scheme}://{self.hostport}"

    def __str__(self) -> str:
        return self.url(self.scheme) if self.scheme else self.hostport


def client_ssl_context(ca: str | Path | None = None, ca_data: str | None = None) -> ssl.SSLContext:
    """Verify servers against ``ca`` (a PEM file) or ``ca_data`` (PEM text), else the system's trust store."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca is not None else None, cadata=ca_data)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def ca_file_source(path: str | Path) -> Callable[[], str | None]:
    """A CA source reading a PEM file (None while it does not exist, e.g. an optional ConfigMap volume)."""
    def read() -> str | None:
        try:
            return Path(path).read_text() or None
        except OSError:
            return None

    return read


def is_plaintext_reply(exc: BaseException) -> bool:
    """True if a TLS handshake failed because the server answered in plain HTTP (not a certificate problem)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError) or not isinstance(exc, aiohttp.ClientSSLError):
        return False
    cause = getattr(exc, "os_error", None)
    return isinstance(cause, ssl.SSLError) and not isinstance(cause, ssl.SSLCertVerificationError) and (
        cause.reason in PLAINTEXT_REPLY_REASONS)


class _PlaintextReply(Exception):
    pass


class Transport:
    """HTTP(S) requests to shard endpoints over one pooled session, with the client's credentials."""

    def __init__(self, credentials: Credentials | None = None, *, ssl_context: ssl.SSLContext | None = None,
                 default_scheme: Scheme = "auto", reprobe_after: float = REPROBE_AFTER, concurrency: int = 64,
                 session: aiohttp.ClientSession | None = None, ca_hint: str = "",
                 ca_source: Callable[[], str | None] | None = None, ca_recheck: float = CA_RECHECK) -> None:
        """``ca_hint``: added to certificate errors (e.g. where the CA was looked for). ``ca_source``: PEM text of
        the CA, asked again after a certificate failure (a CA that appeared or changed since): the client then
        verifies with it and retries once."""
        self.credentials = credentials if credentials is not None else Credentials.default()
        self.ssl_context = ssl_context if ssl_context is not None else client_ssl_context()
        self.ca_source, self.ca_recheck = ca_source, ca_recheck
        self._ca_pem = ca_source() if ca_source is not None else None
        if self._ca_pem is not None and ssl_context is None:
            self.ssl_context = client_ssl_context(ca_data=self._ca_pem)
        self._ca_checked = time.monotonic()
        self.default_scheme = default_scheme
        self.reprobe_after = reprobe_after
        self.ca_hint = ca_hint
        self._concurrency = concurrency
        self._session = session
        self._own_session = session is None
        self._plain_since: dict[str, float] = {}  # auto endpoints that answered in plaintext, and when
        self.fallbacks = 0  # how many times an auto endpoint was found speaking plain HTTP (tests, metrics)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # One pooled connector: connections (and their TLS sessions) are reused across requests;
            # limit bounds sockets per client so a big batch cannot exhaust them.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self._concurrency))
        return self._session

    async def close(self) -> None:
        """Close the session if this transport opened it."""
        if self._session is not None and self._own_session:
            await self._session.close()
            self._session = None

    def speaks_plain(self, ep: Endpoint) -> bool:
        """True while an ``auto`` endpoint is being reached over HTTP after a plaintext answer."""
        since = self._plain_since.get(ep.hostport)
        if since is None:
            return False
        if time.monotonic() - since >= self.reprobe_after:
            del self._plain_since[ep.hostport]  # time to try HTTPS again
            return False
        return True

    async def request(self, method: str, ep: Endpoint, path: str, *, headers: Mapping[str, str] | None = None,
                      body: bytes | None = None, params: Mapping[str, str] | None = None,
                      timeout: float = 10.0) -> tuple[int, bytes]:
        """Send one request; returns (status, body). Unavailable / CertificateRejected on transport failure."""
        hdrs = dict(headers or {})
        token = await self.credentials.bearer()
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        scheme = ep.scheme or self.default_scheme
        where = ep.url("https" if scheme == "auto" else scheme) + path
        try:
            try:
                return await self._by_scheme(scheme, method, ep, path, hdrs, body, params, timeout)
            except aiohttp.ClientConnectorCertificateError:
                if not self._reload_ca():
                    raise
                # Nothing was sent (the handshake failed): the same request with the new CA is no retry.
                return await self._by_scheme(scheme, method, ep, path, hdrs, body, params, timeout)
        except TimeoutError:
            raise Unavailable(where, f"no answer within {timeout:g} s") from None
        except _PlaintextReply:
            raise Unavailable(where, "the server answered in plain HTTP (give http:// or host:port for auto)") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            reason = str(getattr(exc, "certificate_error", exc))
            raise CertificateRejected(where, reason + (f" ({self.ca_hint})" if self.ca_hint else "")) from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc, aiohttp.ClientSSLError):
                raise Unavailable(where, f"{type(exc).__name__}: {exc}") from None
            # The TCP connection was refused or had no route: not a byte of the request left.
            raise Unreachable(where, f"{type(exc).__name__}: {exc}") from None
        except aiohttp.ClientError as exc:
            raise Unavailable(where, f"{type(exc).__name__}: {exc}") from None

    def _reload_ca(self) -> bool:
        """True if the CA source now gives a different CA (then the context is rebuilt with it)."""
        if self.ca_source is None or time.monotonic() - self._ca_checked < self.ca_recheck:
            return False
        self._ca_checked = time.monotonic()
        pem = self.ca_source()
        if pem is None or pem == self._ca_pem:
            return False
        try:
            ctx = client_ssl_context(ca_data=pem)
        except (ssl.SSLError, ValueError):
            return False  # a half-written or broken CA: keep the one in use
        self._ca_pem, self.ssl_context = pem, ctx
        return True

    async def _by_scheme(self, scheme: Scheme, method: str, ep: Endpoint, path: str, hdrs: dict[str, str],
                         body: bytes | None, params: Mapping[str, str] | None,
                         timeout: float) -> tuple[int, bytes]:
        args = (method, ep, path, hdrs, body, params, timeout)
        if scheme != "auto":
            return await self._once(scheme, *args)
        if self.speaks_plain(ep):
            try:
                return await self._once("http", *args)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                # A TLS server drops a plaintext request: the pod has moved to TLS since.
                self._plain_since.pop(ep.hostport, None)
        try:
            return await self._once("https", *args)
        except _PlaintextReply:
            self._plain_since[ep.hostport] = time.monotonic()
            self.fallbacks += 1
            # The handshake failed before any request byte was sent, so sending it over HTTP is no retry.
            return await self._once("http", *args)

    async def _once(self, scheme: str, method: str, ep: Endpoint, path: str, hdrs: dict[str, str],
                    body: bytes | None, params: Mapping[str, str] | None, timeout: float) -> tuple[int, bytes]:
        tls = scheme == "https"
        try:
            async with self._http().request(
                method, ep.url(scheme) + path, data=body, headers=hdrs, params=params,
                timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False,
                ssl=self.ssl_context if tls else False, server_hostname=ep.server_name if tls else None,
            ) as resp:
                return resp.status, await resp.read()
        except aiohttp.ClientSSLError as exc:
            if is_plaintext_reply(exc):
                raise _PlaintextReply() from None
            raise
