"""The caller of a request, and the two ways a request is refused (401 and 403)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

IdentityKind = Literal["serviceaccount", "user", "pod", "operator", "replica", "tiered"]


@dataclass(frozen=True)
class Identity:
    """An authenticated caller: its user name and groups, what kind of caller it is, and which credential
    proved it (``via``: "token", "kubeconfig-token", "client-certificate", ...)."""

    user: str
    groups: tuple[str, ...]
    kind: IdentityKind
    via: str


class Unauthenticated(Exception):
    """A credential was missing or is not acceptable (401). ``reason`` is a metric label
    (missing, malformed, expired, invalid, wrong_audience); ``message`` never contains the credential."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


class AuthUnavailable(Exception):
    """The API server could not be asked (network, 5xx): the request is refused with 503, never let through."""
