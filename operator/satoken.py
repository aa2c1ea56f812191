"""The operator's own ServiceAccount token for a ShardSet's pods: its identity where it signs no client certificate.

Under cert-manager (``spec.tls.issuerRef``) the operator holds no CA key, so it cannot sign itself a client
certificate. It then asks the TokenRequest API for a token of its OWN ServiceAccount with the ShardSet's
audience (``chronoshard.io/NAMESPACE/NAME``), keeps it in memory until a third of its life is left, and sends it
as ``Authorization: Bearer`` to the pods; its user name ``system:serviceaccount:NS:SA`` is in the pods'
security.json ``operatorIdentities``, so they treat it as the operator.

Which ServiceAccount: ``$CHRONOSHARD_OPERATOR_SERVICE_ACCOUNT`` (``NAMESPACE/NAME``; the chart sets it, and an
operator run outside the cluster sets it to the identity it should use), else, in a pod, the ``sub`` claim of the
mounted ServiceAccount token (only read to learn the operator's own name; nothing is decided on it).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from chronoshard.shardnode.auth import jwtclaims
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from . import kube
from .podcontract import OPERATOR_IDENTITY, audience

log = logging.getLogger("chronoshard.operator.satoken")

ENV = "CHRONOSHARD_OPERATOR_SERVICE_ACCOUNT"
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SA_PREFIX = "system:serviceaccount:"
TOKEN_SECONDS = 3600  # TokenRequest's minimum is 600; renewed when a third is left


@dataclass(frozen=True)
class ServiceAccountRef:
    """A ServiceAccount by namespace and name."""

    namespace: str
    name: str

    @property
    def username(self) -> str:
        """Its Kubernetes user name (what TokenReview answers and RBAC binds)."""
        return f"{SA_PREFIX}{self.namespace}:{self.name}"


def parse_ref(text: str) -> ServiceAccountRef | None:
    """``NAMESPACE/NAME`` or ``system:serviceaccount:NAMESPACE:NAME`` (None for anything else)."""
    text = text.strip()
    if text.startswith(SA_PREFIX):
        namespace, _, name = text.removeprefix(SA_PREFIX).partition(":")
    else:
        namespace, _, name = text.partition("/")
    if not namespace or not name or any(c in namespace + name for c in "/: "):
        return None
    return ServiceAccountRef(namespace, name)


def own_service_account(env: Mapping[str, str] | None = None, sa_dir: Path = SA_DIR) -> ServiceAccountRef | None:
    """The operator's ServiceAccount: the setting, else the mounted token's subject, else None (unknown)."""
    env = os.environ if env is None else env
    configured = env.get(ENV)
    if configured:
        ref = parse_ref(configured)
        if ref is None:
            log.warning("%s=%r is not NAMESPACE/NAME: the operator has no ServiceAccount identity", ENV, configured)
        return ref
    try:
        token = (sa_dir / "token").read_text()
    except OSError:
        return None
    claims = jwtclaims.unverified_claims(token.strip())
    sub = claims.get("sub") if claims else None
    return parse_ref(sub) if isinstance(sub, str) else None


def operator_identities(ref: ServiceAccountRef | None) -> tuple[str, ...]:
    """security.json's ``operatorIdentities``: the client certificate's CN, and the ServiceAccount when known."""
    return (OPERATOR_IDENTITY,) if ref is None else (OPERATOR_IDENTITY, ref.username)


@dataclass(frozen=True)
class Token:
    """One TokenRequest answer (the token text is never logged or shown: ``repr`` hides it)."""

    value: str
    issued: datetime
    expires: datetime

    def __repr__(self) -> str:
        return f"Token(expires={self.expires.isoformat()})"

    def fresh(self, now: datetime) -> bool:
        """More than a third of its lifetime left."""
        return self.expires - now > (self.expires - self.issued) / 3


Requester = Callable[[ServiceAccountRef, str, int], tuple[str, datetime]]


def token_request(ref: ServiceAccountRef, aud: str, seconds: int) -> tuple[str, datetime]:
    """POST serviceaccounts/NAME/token (blocking): the token and its expiry."""
    body = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
        audiences=[aud], expiration_seconds=seconds))
    answer = client.CoreV1Api(kube.api_client()).create_namespaced_service_account_token(
        ref.name, ref.namespace, body)
    status = answer.status
    if status is None or not status.token or status.expiration_timestamp is None:
        raise ApiException(status=500, reason="TokenRequest answered without a token")
    return str(status.token), status.expiration_timestamp


class OperatorTokens:
    """The operator's tokens, one per audience, renewed when a third of their life is left (thread-safe)."""

    def __init__(self, ref: ServiceAccountRef | None, requester: Requester = token_request,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.ref, self.requester, self.clock = ref, requester, clock
        self.requests = 0
        self._tokens: dict[str, Token] = {}
        self._lock = threading.Lock()
        self._refused: set[str] = set()  # audiences whose failure was already logged

    def token(self, aud: str) -> str | None:
        """A token of the operator's ServiceAccount for ``aud`` (blocking), None without an identity or when
        the API server refuses (logged once per audience, with the status only)."""
        if self.ref is None:
            return None
        with self._lock:
            now = self.clock()
            cached = self._tokens.get(aud)
            if cached is not None and cached.fresh(now):
                return cached.value
            try:
                value, expires = self.requester(self.ref, aud, TOKEN_SECONDS)
            except ApiException as exc:
                if aud not in self._refused:
                    self._refused.add(aud)
                    log.warning("TokenRequest for the operator's ServiceAccount %s (audience %s) failed: %s %s",
                                self.ref.username, aud, exc.status, exc.reason)
                # A token still valid serves until it expires.
                return cached.value if cached is not None and cached.expires > now else None
            self.requests += 1
            self._refused.discard(aud)
            self._tokens[aud] = Token(value, now, expires if expires.tzinfo else expires.replace(tzinfo=UTC))
            return value

    def forget(self, aud: str) -> None:
        """Drop the token of a deleted ShardSet."""
        with self._lock:
            self._tokens.pop(aud, None)


_TOKENS: OperatorTokens | None = None
_tokens_lock = threading.Lock()


def tokens() -> OperatorTokens:
    """The process's OperatorTokens (its ServiceAccount resolved on first use)."""
    global _TOKENS
    with _tokens_lock:
        if _TOKENS is None:
            _TOKENS = OperatorTokens(own_service_account())
        return _TOKENS


def reset(value: OperatorTokens | None = None) -> None:
    """Use ``value`` (None: resolve again on next use); tests change the identity with it."""
    global _TOKENS
    with _tokens_lock:
        _TOKENS = value


def bearer_for(namespace: str, shardset: str) -> str | None:
    """The operator's token for a ShardSet's pods (blocking), None when it has no ServiceAccount identity."""
    return tokens().token(audience(namespace, shardset))


def identities() -> tuple[str, ...]:
    """What the ShardSets' security.json names as the operator."""
    return operator_identities(tokens().ref)
