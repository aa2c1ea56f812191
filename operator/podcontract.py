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

# Keys of the ``<shardset>-config`` ConfigMap (one settings file per process) and of ``<shardset>-partitions``.
NODE_CONFIG_FILE = "node.json"
CACHE_CONFIG_FILE = "cache.json"
PREDICTOR_CONFIG_FILE = "predictor.json"
PARTITION_MAP_FILE = "map.json"


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
