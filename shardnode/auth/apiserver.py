"""The shard process's calls to the Kubernetes API server: TokenReview and SubjectAccessReview (aiohttp).

The connection is what ``kubernetes.config`` finds: the in-cluster service account, else the kubeconfig in
$KUBECONFIG (the node agent writes one). The process's own bearer token is never logged.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from .identity import AuthUnavailable

TIMEOUT_S = 5.0


@dataclass
class ApiServerConnection:
    """Where the API server is and how to reach it (from ``kubernetes.config``)."""

    host: str
    ssl_context: ssl.SSLContext | bool
    configuration: Any  # kubernetes.client.Configuration: refreshes the in-cluster token on use

    def authorization(self) -> str | None:
        """The Authorization header for the process's own calls ("Bearer ..."), None with client certs only."""
        # kubernetes.config keeps the token under "BearerToken" (newer clients) or "authorization" (older ones).
        value = (self.configuration.get_api_key_with_prefix("BearerToken")
                 or self.configuration.get_api_key_with_prefix("authorization"))
        if not value:
            return None
        scheme, _, token = str(value).partition(" ")
        return f"Bearer {token}" if scheme.lower() == "bearer" else str(value)


def _ssl_context(cfg: Any) -> ssl.SSLContext | bool:
    if not cfg.verify_ssl:
        return False
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert else ssl.create_default_context()
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    return ctx


def load_connection(kubeconfig: str | None = None) -> ApiServerConnection:
    """In-cluster config if the pod has one, else ``kubeconfig`` or $KUBECONFIG (blocking: call at start-up)."""
    cfg = k8s_client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        k8s_config.load_incluster_config(client_configuration=cfg)
    else:
        k8s_config.load_kube_config(config_file=kubeconfig or os.environ.get("KUBECONFIG"),
                                    client_configuration=cfg, persist_config=False)
    return ApiServerConnection(host=cfg.host.rstrip("/"), ssl_context=_ssl_context(cfg), configuration=cfg)


class ApiServer:
    """Reviews with one pooled aiohttp session (opened on first use, on the server's loop)."""

    def __init__(self, connection: ApiServerConnection) -> None:
        self.connection = connection
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.connection.ssl_context),
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        return self._session

    async def _create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        # Reading a refreshed in-cluster token touches a small file at most once a minute.
        auth = await asyncio.to_thread(self.connection.authorization)
        if auth is not None:
            headers["Authorization"] = auth
        try:
            async with self._client().post(self.connection.host + path, json=body, headers=headers) as resp:
                if resp.status != 201 and resp.status != 200:
                    # The answer may quote the request; keep only the status (it may hold a caller's token).
                    raise AuthUnavailable(f"API server answered {resp.status} to POST {path}")
                doc = await resp.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AuthUnavailable(f"API server not reachable: {type(exc).__name__}") from None
        status = doc.get("status") if isinstance(doc, dict) else None
        return status if isinstance(status, dict) else {}

    async def token_review(self, token: str, audiences: list[str] | None) -> dict[str, Any]:
        """POST a TokenReview; its ``status`` (authenticated, user, audiences, error)."""
        spec: dict[str, Any] = {"token": token}
        if audiences is not None:
            spec["audiences"] = audiences
        return await self._create("/apis/authentication.k8s.io/v1/tokenreviews",
                                  {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec})

    async def subject_access_review(self, spec: dict[str, Any]) -> dict[str, Any]:
        """POST a SubjectAccessReview; its ``status`` (allowed, denied, reason, evaluationError)."""
        return await self._create("/apis/authorization.k8s.io/v1/subjectaccessreviews",
                                  {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                                   "spec": spec})

    async def close(self) -> None:
        """Close the session (app cleanup)."""
        if self._session is not None:
            await self._session.close()
