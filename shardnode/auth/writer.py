"""Who a write is made for: the authenticated caller, or, when the caller is the ShardSet's own pod identity (a
cache passing a client's write on, the shadow running a Reversion), the user it names in
``X-Chronoshard-On-Behalf-Of``. Nobody else can name another user: the header from any other caller is ignored.

The auth middleware (guard.py) stores the caller on the request under ``IDENTITY_KEY``. A server without
authentication stores nothing, so it records no identity (None): an unauthenticated header proves nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from .identity import Identity

IDENTITY_KEY = web.RequestKey("chronoshard_identity", Identity)
ON_BEHALF_HEADER = "X-Chronoshard-On-Behalf-Of"
MAX_ON_BEHALF_CHARS = 256
# A peer member's node applying a write it queued for a temporary tiered token (docs/tokens.md): the value is the
# queue entry's id. With it (and an Idempotency-Key) a ``replica`` may write a block, recorded for the user it names.
QUEUED_APPLY_HEADER = "X-Chronoshard-Queued-Apply"


def is_queued_apply(identity: Identity | None, headers: Mapping[str, str]) -> bool:
    """True for a replica's apply of a queued write: a peer member's pod, the queue entry's id and the write's
    Idempotency-Key (so a repeat is answered from the record, never applied twice)."""
    return (identity is not None and identity.kind == "replica" and bool(headers.get(QUEUED_APPLY_HEADER))
            and bool(headers.get("Idempotency-Key")))


def request_identity(request: web.Request) -> Identity | None:
    """The authenticated caller (None: no authentication configured, or a public route)."""
    return request.get(IDENTITY_KEY)


def on_behalf_value(value: str | None) -> str | None:
    """The header's user if acceptable: 1 to ``MAX_ON_BEHALF_CHARS`` printable characters (else None)."""
    if value is None or not 0 < len(value) <= MAX_ON_BEHALF_CHARS or not value.isprintable():
        return None
    return value


def effective_writer(identity: Identity | None, on_behalf: str | None, queued_apply: bool = False) -> str | None:
    """The user a write is recorded for: the pod identity's ``on_behalf`` user when it names a valid one (also a
    replica's, applying a queued write), else the caller's own user (None without a caller)."""
    if identity is None:
        return None
    if identity.kind == "pod" or queued_apply:
        named = on_behalf_value(on_behalf)
        if named is not None:
            return named
    return identity.user


def writer_identity(request: web.Request) -> str | None:
    """The effective writer identity of ``request`` (see ``effective_writer``)."""
    identity = request_identity(request)
    return effective_writer(identity, request.headers.get(ON_BEHALF_HEADER),
                            is_queued_apply(identity, request.headers))


def on_behalf_headers(request: web.Request) -> dict[str, str]:
    """The header a server adds when it passes ``request``'s write on under its own pod identity (empty when the
    request has no writer identity)."""
    writer = writer_identity(request)
    return {} if writer is None else {ON_BEHALF_HEADER: writer}
