"""A MirrorSet's token service as the other controllers see it (API and HTTP I/O only; docs/tokens.md).

- ``member_tokens``: what a member ShardSet's ``<shardset>-config`` gets from its MirrorSet's token service: the
  ``tokens.json`` the token controller published in ConfigMap ``<ms>-tokens`` (with ``store`` set to that member)
  and the service's identity for ``security.json``'s ``operatorIdentities``. Used by the ShardSet controller.
- ``read_risk``: the service's ``GET /v1/risk``, over HTTPS verified against the service's CA under its Service
  name, presenting the operator's client certificate signed with that CA. Used by the MirrorSet controller
  (predictive switchover) and the token controller (``status.tokenService.model``).

Failures are None, never raised, never carrying a body.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from . import certs, kube, naming, podtls
from .mirrorlookup import mirror_membership
from .mirrorselect import MirrorMembership
from .podcontract import CA_CERT_FILE, CA_KEY_FILE

TOKENS_FILE = "tokens.json"
RISK_TIMEOUT = aiohttp.ClientTimeout(total=3.0)

_lock = threading.Lock()
_contexts: dict[tuple[str, str], tuple[str, certs.KeyPair, ssl.SSLContext]] = {}


@dataclass(frozen=True)
class MemberTokens:
    """What a member's config gets: ``tokens.json`` text and the service identity to trust as an operator."""

    tokens_json: str
    identities: tuple[str, ...]  # its ServiceAccount's user name and its certificate's CN
    ca_pem: str = ""  # the service's CA: its client certificate is its operator identity towards the pods


def member_document(published: str, namespace: str, shardset: str) -> str | None:
    """The published ``tokens.json`` with ``store`` set to ``namespace/shardset`` (None: not a JSON object)."""
    try:
        doc = json.loads(published)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    doc["store"] = f"{namespace}/{shardset}"
    return json.dumps(doc, sort_keys=True, indent=2) + "\n"


def member_tokens(namespace: str, shardset: str, membership: MirrorMembership | None = None) -> MemberTokens | None:
    """The token service data for member ``namespace/shardset`` (None: in no MirrorSet, or no service yet);
    ``membership`` when the caller already looked it up. Blocking."""
    membership = membership if membership is not None else mirror_membership(namespace, shardset)
    if not membership.is_member or membership.namespace is None or membership.name is None:
        return None
    cm = kube.get("v1", "ConfigMap", membership.namespace, naming.token_service_name(membership.name))
    published = ((cm or {}).get("data") or {}).get(TOKENS_FILE)
    if not published:
        return None
    doc = member_document(published, namespace, shardset)
    if doc is None:
        return None
    ca = kube.get("v1", "ConfigMap", membership.namespace, naming.token_ca_name(membership.name))
    ca_pem = str(((ca or {}).get("data") or {}).get(CA_CERT_FILE) or "")
    ns, ms = membership.namespace, membership.name
    return MemberTokens(doc, (naming.token_service_identity(ns, ms), naming.token_service_cert_identity(ns, ms)),
                        ca_pem)


def _decode(secret: Mapping[str, Any] | None, key: str) -> bytes | None:
    raw = ((secret or {}).get("data") or {}).get(key)
    return base64.b64decode(raw) if raw else None


def context_for(namespace: str, mirrorset: str, now: datetime | None = None) -> ssl.SSLContext | None:
    """A client context trusting only the service's CA, presenting the operator's certificate from that CA (kept
    until a third of its life is left). None without the CA yet. Blocking."""
    now = now or datetime.now(UTC)
    secret = kube.get("v1", "Secret", namespace, naming.token_ca_name(mirrorset))
    ca_cert, ca_key = _decode(secret, CA_CERT_FILE), _decode(secret, CA_KEY_FILE)
    if ca_cert is None or ca_key is None:
        return None
    digest = hashlib.sha256(ca_cert + ca_key).hexdigest()
    with _lock:
        cached = _contexts.get((namespace, mirrorset))
        if cached is not None and cached[0] == digest and certs.renewal_reason(cached[1].cert, now) is None:
            return cached[2]
        pair = certs.issue_operator_certificate(certs.KeyPair(ca_cert, ca_key), now)
        ctx = podtls.client_context(ca_cert, pair)
        _contexts[(namespace, mirrorset)] = (digest, pair, ctx)
        return ctx


def _pod_ip(namespace: str, mirrorset: str) -> str | None:
    # Listed, not read: the operator's RBAC lists pods only.
    selector = f"app.kubernetes.io/instance={naming.token_service_name(mirrorset)},app.kubernetes.io/component=tokens"
    for pod in kube.list_objects("v1", "Pod", namespace, selector):
        ip = (pod.get("status") or {}).get("podIP")
        if ip and not pod["metadata"].get("deletionTimestamp"):
            return str(ip)
    return None


async def read_risk(namespace: str, mirrorset: str) -> dict[str, Any] | None:
    """The token service's ``GET /v1/risk`` (None: no pod, no CA, no answer or not a JSON object)."""
    return await read_service(namespace, mirrorset, "/v1/risk")


async def read_status(namespace: str, mirrorset: str) -> dict[str, Any] | None:
    """The token service's ``GET /v1/status`` (admin: the operator is one; None as ``read_risk``)."""
    return await read_service(namespace, mirrorset, "/v1/status")


async def read_service(namespace: str, mirrorset: str, path: str) -> dict[str, Any] | None:
    """One GET of the token service (None: no pod, no CA, no answer or not a JSON object)."""
    try:
        ip, ctx = await asyncio.to_thread(lambda: (_pod_ip(namespace, mirrorset), context_for(namespace, mirrorset)))
    except (ApiException, HTTPError, OSError, ValueError):  # an API error only means: no risk this pass
        return None
    if ip is None or ctx is None:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    url = f"https://{host}:{naming.TOKEN_SERVICE_PORT}{path}"
    try:
        async with aiohttp.ClientSession(timeout=RISK_TIMEOUT, connector=aiohttp.TCPConnector(ssl=ctx)) as s, \
                s.get(url, server_hostname=naming.token_service_host(namespace, mirrorset)) as resp:
            if resp.status != 200:
                return None
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def forget(namespace: str, mirrorset: str) -> None:
    """Drop the cached client context of a deleted MirrorSet."""
    with _lock:
        _contexts.pop((namespace, mirrorset), None)
