"""Thin I/O layer over the Kubernetes API: server-side apply, reads, status patches.

Uses the official ``kubernetes`` client (sync, so callers run it in a thread) because it has typed
exceptions, kubeconfig/in-cluster loading and a raw ``call_api`` that lets us send server-side apply
patches, which its generated methods cannot.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from .metrics import count_api_request
from .naming import GROUP, MANAGER, VERSION

# (apiVersion, kind) → (path prefix, plural) for the kinds the operator reads or writes.
_KINDS: dict[tuple[str, str], tuple[str, str]] = {
    ("v1", "Secret"): ("/api/v1", "secrets"),
    ("v1", "ConfigMap"): ("/api/v1", "configmaps"),
    ("v1", "Service"): ("/api/v1", "services"),
    ("v1", "Pod"): ("/api/v1", "pods"),
    ("apps/v1", "StatefulSet"): ("/apis/apps/v1", "statefulsets"),
    ("policy/v1", "PodDisruptionBudget"): ("/apis/policy/v1", "poddisruptionbudgets"),
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts"),
    ("networking.k8s.io/v1", "NetworkPolicy"): ("/apis/networking.k8s.io/v1", "networkpolicies"),
    ("cert-manager.io/v1", "Certificate"): ("/apis/cert-manager.io/v1", "certificates"),
    ("coordination.k8s.io/v1", "Lease"): ("/apis/coordination.k8s.io/v1", "leases"),
    ("rbac.authorization.k8s.io/v1", "Role"): ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    (f"{GROUP}/{VERSION}", "ShardSet"): (f"/apis/{GROUP}/{VERSION}", "shardsets"),
    (f"{GROUP}/{VERSION}", "KeyRotation"): (f"/apis/{GROUP}/{VERSION}", "keyrotations"),
    (f"{GROUP}/{VERSION}", "PrefetchPolicy"): (f"/apis/{GROUP}/{VERSION}", "prefetchpolicies"),
    (f"{GROUP}/{VERSION}", "ShadowPolicy"): (f"/apis/{GROUP}/{VERSION}", "shadowpolicies"),
    (f"{GROUP}/{VERSION}", "MirrorSet"): (f"/apis/{GROUP}/{VERSION}", "mirrorsets"),
    (f"{GROUP}/{VERSION}", "WeavePlan"): (f"/apis/{GROUP}/{VERSION}", "weaveplans"),
    (f"{GROUP}/{VERSION}", "Reversion"): (f"/apis/{GROUP}/{VERSION}", "reversions"),
    (f"{GROUP}/{VERSION}", "Reshard"): (f"/apis/{GROUP}/{VERSION}", "reshards"),
}

# Cluster-scoped kinds (no namespace in their path).
_CLUSTER_KINDS: dict[tuple[str, str], tuple[str, str]] = {
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): ("/apis/rbac.authorization.k8s.io/v1",
                                                             "clusterrolebindings"),
}

_lock = threading.Lock()
_api: client.ApiClient | None = None
# Threads that call the API at once: the ShardSet passes (12), Kopf's executor (8), asyncio's default pool (the
# other controllers' passes, cores + 4).
CONNECTIONS = 32


def api_client() -> client.ApiClient:
    """A process-wide ApiClient: in-cluster credentials when running in a pod, else the kubeconfig."""
    global _api
    with _lock:
        if _api is None:
            cfg = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=cfg)
            except config.ConfigException:
                config.load_kube_config(client_configuration=cfg)
            # One connection per thread that may call at once; the default (5 per core) made the extra threads
            # open a new TLS connection per request and throw it away.
            cfg.connection_pool_maxsize = CONNECTIONS
            _api = client.ApiClient(cfg)
        return _api


def set_api_client(api: client.ApiClient | None) -> None:
    """Use ``api`` for every later call (tests point the operator at their control plane)."""
    global _api
    with _lock:
        _api = api


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    """The REST path of an object (or its collection when ``name`` is None); cluster-scoped kinds ignore
    ``namespace``."""
    if (api_version, kind) in _CLUSTER_KINDS:
        prefix, plural = _CLUSTER_KINDS[(api_version, kind)]
        return f"{prefix}/{plural}/{name}" if name else f"{prefix}/{plural}"
    try:
        prefix, plural = _KINDS[(api_version, kind)]
    except KeyError:
        raise ValueError(f"unsupported kind {api_version}/{kind}") from None
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


def _request_labels(method: str, path: str) -> tuple[str, str]:
    """(verb, resource) of a request for the request counter: a GET of a collection is a LIST; the resource is the
    plural (with ``/status`` for the subresource), or ``discovery`` for a group's own path."""
    parts = [p for p in path.split("/") if p]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    if not rest:
        return method, "discovery"
    resource = rest[0] + ("/" + rest[2] if len(rest) > 2 else "")
    return ("LIST" if method == "GET" and len(rest) == 1 else method), resource


def _call(method: str, path: str, body: Any = None, content_type: str | None = None,
          query: list[tuple[str, str]] | None = None) -> Any:
    count_api_request(*_request_labels(method, path))
    api = api_client()
    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    method_, url, headers_, body_, _ = api.param_serialize(
        method, path, query_params=query or [], header_params=headers, body=body, auth_settings=["BearerToken"]
    )
    resp = api.call_api(method_, url, header_params=headers_, body=body_)
    raw = resp.read()
    if resp.status >= 400:
        raise ApiException(http_resp=resp, body=raw.decode("utf-8", "replace"), data=None)
    return json.loads(raw) if raw else None


def apply(obj: Mapping[str, Any], force: bool = True) -> dict[str, Any]:
    """Server-side apply ``obj`` as the operator's field manager; idempotent, returns the live object."""
    meta = obj["metadata"]
    path = object_path(obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])
    query = [("fieldManager", MANAGER), ("force", "true" if force else "false")]
    return _call("PATCH", path, dict(obj), "application/apply-patch+yaml", query)


def get(api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The object, or None when it does not exist."""
    try:
        return _call("GET", object_path(api_version, kind, namespace, name))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def create(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """Create ``obj``; None if it already exists (the existing object is left untouched)."""
    meta = obj["metadata"]
    try:
        return _call("POST", object_path(obj["apiVersion"], obj["kind"], meta["namespace"]), dict(obj))
    except ApiException as exc:
        if exc.status == 409:
            return None
        raise


def merge_patch(api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any],
                subresource: str | None = None) -> dict[str, Any]:
    """JSON merge patch of an object or of a subresource such as ``status``."""
    path = object_path(api_version, kind, namespace, name)
    if subresource:
        path = f"{path}/{subresource}"
    return _call("PATCH", path, dict(patch), "application/merge-patch+json")


def patch_status(api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
    """Merge-patch an object's ``status`` subresource; False if the object was deleted meanwhile (404)."""
    try:
        merge_patch(api_version, kind, namespace, name, {"status": dict(status)}, subresource="status")
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def list_objects(api_version: str, kind: str, namespace: str, label_selector: str | None = None
                 ) -> list[dict[str, Any]]:
    """Objects of a kind in a namespace, optionally filtered by a label selector."""
    query = [("labelSelector", label_selector)] if label_selector else None
    return list((_call("GET", object_path(api_version, kind, namespace), query=query) or {}).get("items", []))


def list_all_namespaces(api_version: str, kind: str) -> list[dict[str, Any]]:
    """Objects of a namespaced kind in every namespace (needs list on it cluster-wide)."""
    path = object_path(api_version, kind, "_").replace("/namespaces/_/", "/")
    return list((_call("GET", path) or {}).get("items", []))


def delete(api_version: str, kind: str, namespace: str, name: str) -> bool:
    """Delete an object; False when it was already gone."""
    try:
        _call("DELETE", object_path(api_version, kind, namespace, name))
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def group_version_served(group: str, version: str) -> bool:
    """True when the API server serves ``group/version`` (its CRDs are installed), e.g. cert-manager.io/v1."""
    try:
        _call("GET", f"/apis/{group}/{version}")
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def storage_class_exists(name: str) -> bool:
    """True when the cluster has a StorageClass called ``name``."""
    try:
        _call("GET", f"/apis/storage.k8s.io/v1/storageclasses/{name}")
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def api_error_message(exc: ApiException) -> str:
    """The API server's own message for a failed call (its Status ``message``), else the reason."""
    if exc.body is None:
        return str(exc.reason)
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError):
        return str(exc.reason)
