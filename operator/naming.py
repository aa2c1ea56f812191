"""Names, labels and owner references of the objects the operator creates (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import version as installed_version
from typing import Any

GROUP = "chronoshard.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
MANAGER = "chronoshard-operator"
PART_OF = "chronoshard"
# The release (the VERSION file, read by the build into the wheel's metadata): labels and the default image tag.
APP_VERSION = installed_version("chronoshard")


def keyring_secret_name(shardset: str) -> str:
    """The Secret holding a ShardSet's table key versions."""
    return f"{shardset}-keyring"


def kek_secret_name(shardset: str) -> str:
    """The Secret holding a ShardSet's key-encryption key (``kek.key``) when the operator made it."""
    return f"{shardset}-kek"


def ca_secret_name(shardset: str) -> str:
    """The Secret holding a ShardSet's own CA (``ca.crt``, ``ca.key``)."""
    return f"{shardset}-ca"


def tls_secret_name(shardset: str) -> str:
    """The Secret the pods mount at /etc/chronoshard/tls (``tls.crt``, ``tls.key``, ``ca.crt``)."""
    return f"{shardset}-tls"


def ca_config_map_name(shardset: str) -> str:
    """The ConfigMap with the CA certificate only: what clients verify the shard pods against."""
    return f"{shardset}-ca"


def certificate_name(shardset: str) -> str:
    """The cert-manager Certificate that fills ``<name>-tls`` when the ShardSet names an issuer."""
    return f"{shardset}-tls"


def service_account_name(shardset: str) -> str:
    """The ServiceAccount the shard pods run as (bound to system:auth-delegator)."""
    return f"{shardset}-shard"


def cluster_role_binding_name(namespace: str, shardset: str) -> str:
    """The cluster-scoped binding of the pods' ServiceAccount to system:auth-delegator."""
    return f"chronoshard:shard:{namespace}:{shardset}"


def network_policy_name(shardset: str) -> str:
    """The NetworkPolicy that says who may reach the shard pods' ports."""
    return shardset


def config_map_name(shardset: str) -> str:
    """The ConfigMap with the node/cache/predictor settings."""
    return f"{shardset}-config"


def replication_config_map_name(shardset: str) -> str:
    """The ConfigMap with the other MirrorSet members' CA certificates (``peers-ca.crt``)."""
    return f"{shardset}-replication"


def lease_role_name(shardset: str) -> str:
    """The Role (and RoleBinding) letting a MirrorSet member's pods hold their primary Leases."""
    return f"{shardset}-lease"


def partitions_config_map_name(shardset: str) -> str:
    """The ConfigMap with the partition map the pods mount."""
    return f"{shardset}-partitions"


def headless_service_name(shardset: str) -> str:
    """The headless Service that gives each shard pod a stable DNS name."""
    return f"{shardset}-headless"


def client_service_name(shardset: str) -> str:
    """The Service clients use; it reaches any shard's cache, which forwards to the owner."""
    return shardset


def statefulset_name(shardset: str) -> str:
    """The StatefulSet with one pod per shard (pod ``<name>-<i>`` is shard ``i``)."""
    return shardset


def pdb_name(shardset: str) -> str:
    """The PodDisruptionBudget of the shard pods."""
    return shardset


def selector_labels(shardset: str) -> dict[str, str]:
    """Labels that select a ShardSet's shard pods; they never change after creation."""
    return {
        "app.kubernetes.io/name": "chronoshard",
        "app.kubernetes.io/instance": shardset,
        "app.kubernetes.io/component": "shard",
    }


def common_labels(shardset: str, component: str, version: str = APP_VERSION) -> dict[str, str]:
    """The standard ``app.kubernetes.io/*`` labels every child carries."""
    return {
        "app.kubernetes.io/name": "chronoshard",
        "app.kubernetes.io/instance": shardset,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGER,
        "app.kubernetes.io/version": version,
    }


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """A controller ownerReference to ``owner`` (a custom object body) so deletion garbage-collects the child."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner.get("apiVersion", API_VERSION),
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


# A MirrorSet's token service (docs/tokens.md): named here because its controller, the MirrorSet controller's risk
# probe and the ShardSet controller's tokens.json all need the names, and no controller imports another.
TOKEN_SERVICE_PORT = 7405


def token_service_name(mirrorset: str) -> str:
    """``<ms>-tokens``: the token service's StatefulSet, Service, ServiceAccount and ConfigMap."""
    return f"{mirrorset}-tokens"


def token_ca_name(mirrorset: str) -> str:
    """``<ms>-tokens-ca``: the token service's CA Secret (certificate and key) and public CA ConfigMap."""
    return f"{mirrorset}-tokens-ca"


def token_service_host(namespace: str, mirrorset: str) -> str:
    """The token service's Service DNS name (a SAN of its certificate)."""
    return f"{token_service_name(mirrorset)}.{namespace}.svc"


def token_service_identity(namespace: str, mirrorset: str) -> str:
    """The token service's Kubernetes user name (its ServiceAccount)."""
    return f"system:serviceaccount:{namespace}:{token_service_name(mirrorset)}"


def token_service_cert_identity(namespace: str, mirrorset: str) -> str:
    """The CN of the token service's certificate (its client identity towards the members' pods)."""
    return f"chronoshard:tokens:{namespace}:{mirrorset}"
