"""What the operator and a shard pod agree on (pure): containers, ports, mount paths, file names, config files.

Every controller that builds a shard pod or talks to one reads the contract from here, so no controller needs
another's modules for it; docs/interfaces.md describes the same contract for the processes' side.
"""

from __future__ import annotations

from typing import Any

from .prefetchconfig import cache_overrides
from .prefetchconfig import predictor_config as policy_predictor_config
from .spec.prefetchpolicy import PrefetchPolicySpec
from .spec.shardset import ShardSetSpec

# The containers of a shard pod; each container's port is named like the container.
NODE = "node"
CACHE = "cache"
PREDICTOR = "predictor"
CONTAINERS = (NODE, CACHE, PREDICTOR)

NODE_PORT = 7400
CACHE_PORT = 7401
PREDICTOR_PORT = 7402
PORTS = {NODE: NODE_PORT, CACHE: CACHE_PORT, PREDICTOR: PREDICTOR_PORT}

RUN_AS_USER = 65532

DATA_MOUNT = "/var/lib/chronoshard"
KEYRING_MOUNT = "/etc/chronoshard/keyring"
KEK_MOUNT = "/etc/chronoshard/kek"
PARTITIONS_MOUNT = "/etc/chronoshard/partitions"
CONFIG_MOUNT = "/etc/chronoshard/config"
# The ``<shardset>-tls`` Secret (docs/security.md): every container serves HTTPS from it and presents it as its
# client certificate to the others.
TLS_MOUNT = "/etc/chronoshard/tls"
TLS_CERT_FILE = "tls.crt"
TLS_KEY_FILE = "tls.key"
CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
TLS_DIR_FLAG = "--tls-dir"
SECURITY_CONFIG_FLAG = "--security-config"

# Keys of the ``<shardset>-config`` ConfigMap (one settings file per process) and of ``<shardset>-partitions``.
NODE_CONFIG_FILE = "node.json"
CACHE_CONFIG_FILE = "cache.json"
PREDICTOR_CONFIG_FILE = "predictor.json"
PARTITION_MAP_FILE = "map.json"
SECURITY_CONFIG_FILE = "security.json"
OPERATOR_IDENTITY = "chronoshard:operator"
# How long a server may trust a TokenReview / SubjectAccessReview answer, and how many it keeps.
AUTH_CACHE_TTL_SECONDS = 10
AUTH_CACHE_SIZE = 10000


def audience(namespace: str, shardset: str) -> str:
    """The token audience a ShardSet's pods accept: ``chronoshard.io/NAMESPACE/NAME``."""
    return f"chronoshard.io/{namespace}/{shardset}"


def pod_identity(namespace: str, shardset: str) -> str:
    """The pods' own identity, their certificate's CN: ``chronoshard:shardset:NAMESPACE:NAME``."""
    return f"chronoshard:shardset:{namespace}:{shardset}"


def pod_dns_name(namespace: str, shardset: str, shard: int) -> str:
    """The name the operator checks a pod's certificate against (always in its SANs)."""
    return f"{shardset}-{shard}.{shardset}-headless.{namespace}.svc"


def security_config(namespace: str, shardset: str, spec: ShardSetSpec,
                    operator_identities: tuple[str, ...] = (OPERATOR_IDENTITY,)) -> dict[str, Any]:
    """``security.json``: who the pods are, whom they treat as the operator, how they check tokens."""
    return {
        "shardSet": {"namespace": namespace, "name": shardset},
        "audience": audience(namespace, shardset),
        "podIdentity": pod_identity(namespace, shardset),
        "operatorIdentities": list(operator_identities),
        "acceptKubeconfigTokens": spec.access.accept_kubeconfig_tokens,
        "cacheTTLSeconds": AUTH_CACHE_TTL_SECONDS,
        "cacheSize": AUTH_CACHE_SIZE,
    }


def node_config(spec: ShardSetSpec) -> dict[str, Any]:
    """Settings of the ``node`` process (node.json)."""
    return {"tables": list(spec.tables), "keyAlgorithm": spec.key_algorithm}


def cache_config(spec: ShardSetSpec, prefetch: PrefetchPolicySpec | None = None) -> dict[str, Any]:
    """Settings of the ``cache`` process (cache.json), plus the prefetch limits of the PrefetchPolicy in force."""
    return {
        "tables": list(spec.tables),
        "budgetBytes": spec.cache_size_bytes,
        "evictionPolicy": spec.eviction_policy,
        **(cache_overrides(prefetch, spec.cache_size_bytes) if prefetch is not None else {}),
    }


def predictor_config(spec: ShardSetSpec, prefetch: PrefetchPolicySpec | None = None) -> dict[str, Any]:
    """Settings of the ``predictor`` process (predictor.json); prefetching is off until a PrefetchPolicy turns it on."""
    if prefetch is None:
        return {"tables": list(spec.tables), "enabled": False}
    return {"tables": list(spec.tables), **policy_predictor_config(prefetch)}
