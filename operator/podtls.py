"""How the operator's pod clients (key reports, rewrap, verify, prefetch probes) reach a ShardSet's pods: over
HTTPS, verifying the pod against the ShardSet's CA under its DNS name ``NAME-i.NAME-headless.NAMESPACE.svc``
(the pod is dialled by IP, the name is passed as ``server_hostname``), presenting a client certificate with CN
``chronoshard:operator`` that the operator signs itself with the ShardSet's CA, kept in memory and renewed.

A pod whose containers were not started with ``--tls-dir`` (a pod from before TLS, during the rolling update)
is reached over plain HTTP: the choice comes from the pod's spec as the API server has it, never from a failed
handshake, so no one on the network can downgrade it. Under cert-manager (no ``<name>-ca`` Secret with a key)
the operator verifies the pods with the ``ca.crt`` cert-manager publishes and, having no client certificate,
authenticates with a token of its own ServiceAccount for the ShardSet's audience (operator/satoken.py), sent
on HTTPS requests only.
"""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from . import certs, kube, naming, satoken
from .podcontract import CA_CERT_FILE, CA_KEY_FILE, PORTS, TLS_DIR_FLAG, audience, pod_dns_name

_lock = threading.Lock()
# (namespace, shardset) → (CA digest, the operator's certificate, the context built from them)
_contexts: dict[tuple[str, str], tuple[str, certs.KeyPair | None, ssl.SSLContext]] = {}


@dataclass(frozen=True)
class Endpoint:
    """Where one process of a pod answers, and the name its certificate is checked against (None: plain)."""

    url: str
    server_hostname: str | None


def uses_tls(pod: Mapping[str, Any]) -> bool:
    """True when the pod's containers were started with ``--tls-dir`` (they serve HTTPS only)."""
    containers = (pod.get("spec") or {}).get("containers") or []
    return any(TLS_DIR_FLAG in (c.get("command") or []) + (c.get("args") or []) for c in containers)


def endpoint(pod: Mapping[str, Any], shard: int, role: str, path: str) -> Endpoint | None:
    """The URL of ``path`` on ``role``'s port of shard ``shard``'s pod (None while the pod has no IP)."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    meta = pod.get("metadata") or {}
    shardset = (meta.get("labels") or {}).get("app.kubernetes.io/instance", "")
    if not uses_tls(pod):
        return Endpoint(f"http://{host}:{PORTS[role]}{path}", None)
    return Endpoint(f"https://{host}:{PORTS[role]}{path}", pod_dns_name(meta.get("namespace", ""), shardset, shard))


def _load_chain(ctx: ssl.SSLContext, pair: certs.KeyPair) -> None:
    """Load an in-memory certificate and key: ssl reads them only from a file, so hand it an anonymous
    memory file (Linux), else a private temporary file removed at once."""
    blob = pair.cert + pair.key
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("chronoshard-operator-client", os.MFD_CLOEXEC)
        try:
            os.write(fd, blob)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory() as tmp:  # pragma: no cover - non-Linux
        path = os.path.join(tmp, "client.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        ctx.load_cert_chain(path)


def client_context(ca_cert: bytes, client: certs.KeyPair | None) -> ssl.SSLContext:
    """A TLS 1.2+ client context trusting only ``ca_cert``, checking hostnames, presenting ``client``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=ca_cert.decode())
    if client is not None:
        _load_chain(ctx, client)
    return ctx


def _decode(secret: Mapping[str, Any] | None, key: str) -> bytes | None:
    raw = ((secret or {}).get("data") or {}).get(key)
    return base64.b64decode(raw) if raw else None


def context_for(namespace: str, shardset: str, now: datetime | None = None) -> ssl.SSLContext | None:
    """The client context for a ShardSet's pods (blocking: reads its CA Secret), or None without a CA yet.

    The operator's client certificate is signed once per CA and kept until a third of its life is left.
    """
    now = now or datetime.now(UTC)
    ca_secret = kube.get("v1", "Secret", namespace, naming.ca_secret_name(shardset))
    ca_cert, ca_key = _decode(ca_secret, CA_CERT_FILE), _decode(ca_secret, CA_KEY_FILE)
    if ca_cert is None or ca_key is None:
        # cert-manager: trust what it publishes beside the pods' certificate.
        ca_cert, ca_key = _decode(kube.get("v1", "Secret", namespace, naming.tls_secret_name(shardset)),
                                  CA_CERT_FILE), None
    if ca_cert is None:
        return None
    digest = hashlib.sha256(ca_cert + (ca_key or b"")).hexdigest()
    with _lock:
        cached = _contexts.get((namespace, shardset))
        if cached is not None and cached[0] == digest and (
                cached[1] is None or certs.renewal_reason(cached[1].cert, now) is None):
            return cached[2]
        pair = certs.issue_operator_certificate(certs.KeyPair(ca_cert, ca_key), now) if ca_key else None
        ctx = client_context(ca_cert, pair)
        _contexts[(namespace, shardset)] = (digest, pair, ctx)
        return ctx


def has_client_certificate(namespace: str, shardset: str) -> bool:
    """Whether the context context_for built last for this ShardSet presents the operator's certificate."""
    with _lock:
        cached = _contexts.get((namespace, shardset))
    return cached is not None and cached[1] is not None


def credentials_for(namespace: str, shardset: str) -> tuple[ssl.SSLContext | None, str | None]:
    """The client context and, where it has no client certificate (cert-manager), the operator's bearer token
    for the ShardSet's audience (blocking: reads Secrets, may ask the TokenRequest API)."""
    ctx = context_for(namespace, shardset)
    if ctx is None or has_client_certificate(namespace, shardset):
        return ctx, None
    return ctx, satoken.bearer_for(namespace, shardset)


def forget(namespace: str, shardset: str) -> None:
    """Drop the cached context and token of a ShardSet (deleted)."""
    with _lock:
        _contexts.pop((namespace, shardset), None)
    satoken.tokens().forget(audience(namespace, shardset))


def bearer_middleware(token: str) -> aiohttp.ClientMiddlewareType:
    """A client middleware that sends ``token`` on HTTPS requests only: a pod still on plain HTTP (mid-roll)
    has no authentication, and a token must not cross the network in clear text."""

    async def add_bearer(req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
        if req.url.scheme == "https":
            req.headers["Authorization"] = f"Bearer {token}"
        return await handler(req)

    return add_bearer


async def session(pods: Mapping[int, Mapping[str, Any]], timeout: aiohttp.ClientTimeout) -> aiohttp.ClientSession:
    """A session for the pods of one ShardSet: with the ShardSet's client context when any of them serves TLS."""
    import asyncio

    ctx: ssl.SSLContext | None = None
    token: str | None = None
    tls_pod = next((p for p in pods.values() if uses_tls(p)), None)
    if tls_pod is not None:
        meta = tls_pod.get("metadata") or {}
        shardset = (meta.get("labels") or {}).get("app.kubernetes.io/instance", "")
        ctx, token = await asyncio.to_thread(credentials_for, meta.get("namespace", ""), shardset)
    # Without a context (no CA yet) an https pod cannot be verified: aiohttp's default refuses it.
    return aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(ssl=ctx if ctx else True),
                                 middlewares=(bearer_middleware(token),) if token else ())
