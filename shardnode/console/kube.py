"""The Kubernetes API as the signed-in user: their bearer token on every request, so Kubernetes RBAC decides what
they may read of the custom resources and whether their approval patch goes through.

The connection (host, CA) is the console's own, but its TLS context never carries the console's client
certificate: with one, the API server would authenticate the console instead of the user.

A user signed in by the auth proxy has no token: their requests go with the console's own credentials plus
``Impersonate-User`` / ``Impersonate-Group`` (as ``kubectl --as``/``--as-group``), so the API server checks the
console's ``impersonate`` right and then decides with the user's RBAC.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any
from urllib.parse import quote

import aiohttp
from chronoshard.shardnode.auth.apiserver import ApiServerConnection
from multidict import CIMultiDict

from .sessions import Session

GROUP, VERSION = "chronoshard.io", "v1alpha1"
TIMEOUT_S = 10.0
RETRIES, RETRY_PAUSE_S = 3, 0.25
PLURALS = ("shardsets", "shadowpolicies", "reversions", "keyrotations")


class KubeError(Exception):
    """The API server refused or failed (``status``; 0 when it could not be reached). The message quotes only
    the API server's own ``message`` field, which never contains the caller's token."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def user_ssl_context(connection: ApiServerConnection) -> ssl.SSLContext | bool:
    """Verify the API server as the console does, without presenting the console's client certificate."""
    cfg = connection.configuration
    if not cfg.verify_ssl:
        return False
    return ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert else ssl.create_default_context()


def custom_path(plural: str, namespace: str | None, name: str | None = None) -> str:
    """The REST path of chronoshard.io objects (all namespaces when ``namespace`` is None)."""
    base = f"/apis/{GROUP}/{VERSION}"
    if namespace is not None:
        base += f"/namespaces/{quote(namespace, safe='')}"
    base += f"/{plural}"
    return base + (f"/{quote(name, safe='')}" if name is not None else "")


class UserKube:
    """GET/LIST/PATCH of chronoshard.io objects as a user: with their token, or (a proxied user) impersonated
    with the console's own connection ``own`` (pooled sessions, opened on first use)."""

    def __init__(self, host: str, ssl_context: ssl.SSLContext | bool,
                 own: ApiServerConnection | None = None) -> None:
        self.host, self.ssl_context, self.own = host.rstrip("/"), ssl_context, own
        self._session: aiohttp.ClientSession | None = None
        self._own_session: aiohttp.ClientSession | None = None

    def _client(self, proxied: bool) -> aiohttp.ClientSession:
        if proxied:
            if self.own is None:
                raise KubeError(502, "the console was started without impersonation (no --auth-proxy-ca)")
            if self._own_session is None or self._own_session.closed:
                # The console's own TLS context: a client certificate in it is the console's credential here.
                self._own_session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=self.own.ssl_context),
                    timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
            return self._own_session
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl_context),
                                                  timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        return self._session

    def _headers(self, who: Session) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict(Accept="application/json")
        if not who.proxied:
            headers["Authorization"] = f"Bearer {who.token}"
            return headers
        own = self.own.authorization() if self.own is not None else None
        if own is not None:
            headers["Authorization"] = own
        headers["Impersonate-User"] = who.user
        for group in who.groups:
            headers.add("Impersonate-Group", group)
        return headers

    async def _call(self, who: Session, method: str, path: str, body: Any = None,
                    content_type: str = "application/json") -> dict[str, Any]:
        for attempt in range(RETRIES + 1):
            try:
                return await self._once(who, method, path, body, content_type)
            except KubeError as exc:
                # 429 and 503 ("storage is (re)initializing", throttling) ask to come back; a read is safe to resend.
                if method != "GET" or exc.status not in (429, 503) or attempt == RETRIES:
                    raise
                await asyncio.sleep(RETRY_PAUSE_S * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, who: Session, method: str, path: str, body: Any, content_type: str) -> dict[str, Any]:
        headers = self._headers(who)
        client = self._client(who.proxied)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        try:
            async with client.request(method, self.host + path, data=data, headers=headers) as resp:
                payload = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeError(0, f"the Kubernetes API is not reachable: {type(exc).__name__}") from None
        try:
            doc = json.loads(payload)
        except ValueError:
            doc = None
        if status >= 300:
            message = doc.get("message") if isinstance(doc, dict) else None
            raise KubeError(status, str(message or f"the Kubernetes API answered HTTP {status}"))
        if not isinstance(doc, dict):
            raise KubeError(502, "the Kubernetes API answered something other than a JSON object")
        return doc

    async def get(self, who: Session, plural: str, namespace: str, name: str) -> dict[str, Any]:
        """One object."""
        return await self._call(who, "GET", custom_path(plural, namespace, name))

    async def list(self, who: Session, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        """Every object of a kind in ``namespace`` (None: all namespaces)."""
        doc = await self._call(who, "GET", custom_path(plural, namespace))
        return [i for i in doc.get("items") or [] if isinstance(i, dict)]

    async def approve(self, who: Session, namespace: str, name: str, digest: str) -> dict[str, Any]:
        """Set ``spec.approve`` (a merge patch, as ``kubectl chronoshard approve`` does); the patched object."""
        return await self._call(who, "PATCH", custom_path("reversions", namespace, name),
                                {"spec": {"approve": digest}}, "application/merge-patch+json")

    async def close(self) -> None:
        """Close the pooled session (app cleanup)."""
        for session in (self._session, self._own_session):
            if session is not None:
                await session.close()
