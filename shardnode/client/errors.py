"""Exceptions raised by the chronoshard client (one base class, one subclass per way a call can fail)."""

from __future__ import annotations

import json
from typing import Any


class ChronoshardError(Exception):
    """Base class of every client error."""


class NotFound(ChronoshardError):
    """The block does not exist."""

    def __init__(self, table: str, key: str) -> None:
        self.table, self.key = table, key
        super().__init__(f"block {key!r} not found in table {table!r}")


class Misdirected(ChronoshardError):
    """A shard refused the key even after the client refreshed its partition map."""

    def __init__(self, message: str, owner: int | None, epoch: int | None) -> None:
        self.owner, self.epoch = owner, epoch
        super().__init__(message)


class Unavailable(ChronoshardError):
    """A shard could not be reached, timed out or answered 5xx."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        self.url, self.reason, self.status = url, reason, status
        super().__init__(f"{url}: {reason}")


class Unreachable(Unavailable):
    """Nothing was sent: no connection could be made, or no ready pod holds the shard (yet). A shard whose pod
    is being replaced (a rolling update) is unreachable for a few seconds; the client waits for it."""


class RequestRejected(ChronoshardError):
    """The server answered 4xx (bad table name, bad key, body too large, ...)."""

    def __init__(self, status: int, error: str, message: str) -> None:
        self.status, self.error, self.message = status, error, message
        super().__init__(f"HTTP {status} {error}: {message}")


class Unauthenticated(RequestRejected):
    """401: the server did not accept the credential (or none was sent); ``hint`` says what to do."""

    def __init__(self, message: str, hint: str = "", url: str = "") -> None:
        super().__init__(401, "unauthenticated", message)
        self.hint, self.url = hint, url

    def __str__(self) -> str:
        # Only the server's message (which never names the credential) and our hint: never the token.
        where = f"{self.url}: " if self.url else ""
        return f"{where}HTTP 401 unauthenticated: {self.message}" + (f". {self.hint}" if self.hint else "")


class Forbidden(RequestRejected):
    """403: the caller is known but RBAC does not allow this request."""

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(403, "forbidden", message)
        self.url = url

    def __str__(self) -> str:
        return f"{self.url + ': ' if self.url else ''}HTTP 403 forbidden: {self.message}"


class CertificateRejected(ChronoshardError):
    """The shard's TLS certificate did not verify (wrong CA, wrong name, expired): never retried over HTTP."""

    def __init__(self, url: str, reason: str) -> None:
        self.url, self.reason = url, reason
        super().__init__(f"{url}: TLS certificate not accepted: {reason}")


class MapUnavailable(ChronoshardError):
    """No partition map could be obtained from any source."""


class ScanUnsupported(ChronoshardError):
    """A scan was asked of a client that only knows the client Service URL."""


def api_message(exc: Any) -> str:
    """The API server's message of an ApiException (its reason when the body has none)."""
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)
