"""Service account credentials for a pod's processes (pure): when to mount them, the files, the kubeconfig.

A process cannot see ``/var/run/secrets/kubernetes.io/serviceaccount`` (no mount namespace), and the
Kubernetes clients' in-cluster loaders read exactly that path. So, besides the standard ``token``,
``ca.crt`` and ``namespace`` files, the agent writes a kubeconfig holding the same token and points
``KUBECONFIG`` at it: every client falls back to it when in-cluster loading fails (no
``KUBERNETES_SERVICE_HOST`` in a process pod's environment).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import yaml

# What the ServiceAccount admission plugin puts in kube-api-access volumes: the API server then issues a
# token valid for a year but asks for renewal after an hour, so a client that caches a token keeps working.
TOKEN_EXPIRATION_SECONDS = 3607
REFRESH_FRACTION = 0.8  # kubelet renews a projected token after 80% of its lifetime
KUBECONFIG_FILE = "kubeconfig"
CONTEXT = "in-cluster"


def should_automount(pod_spec: Mapping[str, Any], service_account: Mapping[str, Any] | None) -> bool:
    """Kubernetes' rule: the pod's ``automountServiceAccountToken`` wins, then the ServiceAccount's, else True."""
    if pod_spec.get("automountServiceAccountToken") is not None:
        return bool(pod_spec["automountServiceAccountToken"])
    if service_account is not None and service_account.get("automountServiceAccountToken") is not None:
        return bool(service_account["automountServiceAccountToken"])
    return True


def service_account_name(pod_spec: Mapping[str, Any]) -> str:
    """The pod's ServiceAccount (``default`` when unset, as admission sets it)."""
    return str(pod_spec.get("serviceAccountName") or pod_spec.get("serviceAccount") or "default")


def refresh_deadline(issued_at: float, lifetime_seconds: float) -> float:
    """When a token issued at ``issued_at`` (any clock) with this lifetime must be replaced."""
    if lifetime_seconds <= 0:
        raise ValueError(f"token lifetime must be positive, got {lifetime_seconds}")
    return issued_at + REFRESH_FRACTION * lifetime_seconds


def kubeconfig_document(server: str, ca_pem: bytes | None, token: str, namespace: str, user: str) -> dict[str, Any]:
    """A kubeconfig that signs in to ``server`` with ``token``, trusting ``ca_pem``, defaulting to ``namespace``."""
    cluster: dict[str, Any] = {"server": server}
    if ca_pem:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": CONTEXT,
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": "cluster", "user": user, "namespace": namespace}}],
    }


def credential_files(
    server: str, ca_pem: bytes | None, token: str, namespace: str, user: str
) -> dict[str, tuple[bytes, int]]:
    """{file: (content, mode)} of the pod's credential volume: kubelet's three files plus the kubeconfig."""
    kubeconfig = yaml.safe_dump(kubeconfig_document(server, ca_pem, token, namespace, user), sort_keys=False)
    return {
        "token": (token.encode(), 0o600),
        "ca.crt": (ca_pem or b"", 0o644),
        "namespace": (namespace.encode(), 0o644),
        KUBECONFIG_FILE: (kubeconfig.encode(), 0o600),
    }
