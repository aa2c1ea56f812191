"""The CLI's Kubernetes-backed credentials: a TokenRequest for a ServiceAccount, or the kubeconfig's own token."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from chronoshard.shardnode.client.errors import ChronoshardError

TOKEN_SECONDS = 600  # what the CLI asks for: long enough for one command, short if it leaks
RENEW_BEFORE = 60.0  # ask again when less than this is left (a long `ls` may outlive one token)


class TokenRequestFailed(ChronoshardError):
    """The TokenRequest API would not give a token for the ServiceAccount."""


class ServiceAccountToken:
    """``kubectl create token SA --audience AUD --duration 10m`` through the kubeconfig, cached in memory."""

    def __init__(self, api_client: Any, namespace: str, service_account: str, audience: str,
                 seconds: int = TOKEN_SECONDS) -> None:
        self.api_client, self.namespace, self.service_account = api_client, namespace, service_account
        self.audience, self.seconds = audience, seconds
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()
        self.requests = 0  # TokenRequests made (the cache is observable in tests)

    def request(self) -> tuple[str, float]:
        """One TokenRequest (blocking); returns the token and the monotonic time to renew it at."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        body = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[self.audience], expiration_seconds=self.seconds))
        where = f"ServiceAccount {self.namespace}/{self.service_account}"
        try:
            answer = client.CoreV1Api(self.api_client).create_namespaced_service_account_token(
                self.service_account, self.namespace, body)
        except ApiException as exc:
            why = {404: "not found", 403: "your kubeconfig's user may not create serviceaccounts/token there"}
            raise TokenRequestFailed(f"TokenRequest for {where}: HTTP {exc.status} {exc.reason}"
                                     f"{': ' + why[exc.status] if exc.status in why else ''}") from None
        status = answer.status
        if status is None or not status.token:
            raise TokenRequestFailed(f"TokenRequest for {where}: the API server answered without a token")
        token = str(status.token)
        # The API server may shorten the lifetime; renew by our own clock well before the shorter of both.
        lifetime = float(self.seconds)
        if status.expiration_timestamp is not None:
            left = status.expiration_timestamp.timestamp() - time.time()
            lifetime = max(1.0, min(lifetime, left))
        return token, time.monotonic() + max(lifetime - RENEW_BEFORE, lifetime / 2)

    async def __call__(self) -> str:
        """The cached token, asked for again shortly before it expires (off the event loop)."""
        async with self._lock:
            if self._token is not None and time.monotonic() < self._renew_at:
                return self._token
            token, self._renew_at = await asyncio.to_thread(self.request)
            self._token = token
            self.requests += 1
            return token

    def __repr__(self) -> str:
        return f"ServiceAccountToken({self.namespace}/{self.service_account}, audience={self.audience!r})"


def kubeconfig_token(api_client: Any) -> str | None:
    """The bearer token the kubeconfig's user authenticates with (None for client certificates)."""
    keys = getattr(api_client.configuration, "api_key", None) or {}
    # kubernetes.config keeps it under "BearerToken" (newer clients) or "authorization" (older ones).
    value = keys.get("BearerToken") or keys.get("authorization") or ""
    scheme, _, token = str(value).partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
