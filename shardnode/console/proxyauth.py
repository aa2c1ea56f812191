"""Auth-proxy sign-in, as kube-apiserver's request-header authentication: the user and group headers of a request
are believed only when its TLS client certificate was issued by the ``--auth-proxy-ca`` CA (and, when
``--auth-proxy-allowed-names`` is given, has one of those CNs). Everyone else's copies of those headers are
dropped before any handler sees the request, so they can never become an identity.

The console's HTTPS server asks for an optional client certificate; the handshake verifies it against every CA
the context trusts (the console's own ``ca.crt`` as well), so the leaf is checked here once more to be directly
issued by the proxy CA.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID
from multidict import CIMultiDict, CIMultiDictProxy

USER_HEADER = "X-Remote-User"
GROUP_HEADER = "X-Remote-Group"
log = logging.getLogger("chronoshard.console")


@dataclass(frozen=True)
class ProxyIdentity:
    """A user as the trusted proxy named them."""

    user: str
    groups: tuple[str, ...]


PROXY_IDENTITY = web.RequestKey("chronoshard_console_proxy_identity", ProxyIdentity)


@dataclass(frozen=True)
class ProxySettings:
    """Which client certificates are the auth proxy's, and which headers they carry the identity in."""

    cas: tuple[x509.Certificate, ...]
    allowed_names: frozenset[str]
    user_header: str = USER_HEADER
    group_header: str = GROUP_HEADER


def load_settings(ca_file: str | Path, allowed_names: str, user_header: str = USER_HEADER,
                  group_header: str = GROUP_HEADER) -> ProxySettings:
    """The settings from the flags; the CA file must hold at least one PEM certificate (blocking)."""
    cas = tuple(x509.load_pem_x509_certificates(Path(ca_file).read_bytes()))
    names = frozenset(n.strip() for n in allowed_names.split(",") if n.strip())
    return ProxySettings(cas, names, user_header, group_header)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def is_proxy(settings: ProxySettings, peer_der: bytes | None) -> bool:
    """The (handshake-verified) client certificate ``peer_der`` is the proxy's: issued by its CA, CN allowed."""
    if not peer_der:
        return False
    try:
        cert = x509.load_der_x509_certificate(peer_der)
    except ValueError:
        return False
    if not any(_issued_by(cert, ca) for ca in settings.cas):
        return False
    if not settings.allowed_names:
        return True
    return any(str(a.value) in settings.allowed_names
               for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))


def identity(settings: ProxySettings, trusted: bool, users: list[str], groups: list[str]) -> ProxyIdentity | None:
    """The identity the headers name when they come from the proxy (the first user header; every group header
    is one group, as kube-apiserver reads them); None otherwise or without a user."""
    if not trusted or not users or not users[0].strip():
        return None
    return ProxyIdentity(users[0].strip(), tuple(g for g in groups if g))


def peer_certificate(request: web.Request) -> bytes | None:
    """The DER client certificate of the request's TLS connection (only a verified one is ever there)."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    return ssl_object.getpeercert(binary_form=True)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def proxy_middleware(settings: ProxySettings) -> Middleware:
    """Put the proxy's identity on the request (``PROXY_IDENTITY``) and drop the identity headers from it."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        users = request.headers.getall(settings.user_header, [])
        groups = request.headers.getall(settings.group_header, [])
        trusted = bool(users or groups) and is_proxy(settings, peer_certificate(request))
        who = identity(settings, trusted, users, groups)
        if users or groups:
            headers = CIMultiDict(request.headers)
            headers.popall(settings.user_header, None)
            headers.popall(settings.group_header, None)
            request = request.clone(headers=CIMultiDictProxy(headers))
            if who is None:
                log.debug("ignored identity headers on a request without the auth proxy's certificate")
        if who is not None:
            request[PROXY_IDENTITY] = who
        return await handler(request)

    return middleware
