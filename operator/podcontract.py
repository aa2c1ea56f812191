"""What the operator and a shard pod agree on (pure): containers, ports, mount paths, file names, config files.

Every controller that builds a shard pod or talks to one reads the contract from here, so no controller needs
another's modules for it; docs/interfaces.md describes the same contract for the processes' side.
"""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

from .prefetchconfig import cache_overrides
from .prefetchconfig import predictor_config as policy_predictor_config
from .spec.prefetchpolicy import PrefetchPolicySpec
from .spec.shadowpolicy import ColdStorage, ShadowPolicySpec
from .spec.shardset import FromShadow, ShardSetSpec
from .spec.weaveplan import WeavePlanSpec

# The containers of a shard pod; each container's port is named like the container. ``shadow`` runs only while a
# ShadowPolicy targets the ShardSet; ``bootstrap`` is an init container, only with spec.bootstrap.fromShadow.
NODE = "node"
CACHE = "cache"
PREDICTOR = "predictor"
SHADOW = "shadow"
# ``weaver`` runs only while a WeavePlan targets the ShardSet (docs/weaving.md); its resources are the defaults.
WEAVER = "weaver"
BOOTSTRAP = "bootstrap"
CONTAINERS = (NODE, CACHE, PREDICTOR, SHADOW)  # shadow: only with a ShadowPolicy

NODE_PORT = 7400
CACHE_PORT = 7401
PREDICTOR_PORT = 7402
SHADOW_PORT = 7403
WEAVER_PORT = 7404
PORTS = {NODE: NODE_PORT, CACHE: CACHE_PORT, PREDICTOR: PREDICTOR_PORT, SHADOW: SHADOW_PORT, WEAVER: WEAVER_PORT}

RUN_AS_USER = 65532

DATA_MOUNT = "/var/lib/chronoshard"
KEYRING_MOUNT = "/etc/chronoshard/keyring"
KEK_MOUNT = "/etc/chronoshard/kek"
PARTITIONS_MOUNT = "/etc/chronoshard/partitions"
CONFIG_MOUNT = "/etc/chronoshard/config"
# The object-storage credentials Secret (accessKeyId, secretAccessKey): shadow and bootstrap containers only.
OBJECTSTORE_MOUNT = "/etc/chronoshard/objectstore"
# The ``<shardset>-tls`` Secret (docs/security.md): every container serves HTTPS from it and presents it as its
# client certificate to the others.
TLS_MOUNT = "/etc/chronoshard/tls"
TLS_CERT_FILE = "tls.crt"
TLS_KEY_FILE = "tls.key"
CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
TLS_DIR_FLAG = "--tls-dir"
# A MirrorSet member's node also trusts the other members' pods, for the replication routes only
# (docs/mirroring.md): the ``<shardset>-replication`` ConfigMap, mounted here, holds their CA certificates.
REPLICATION_MOUNT = "/etc/chronoshard/replication"
REPLICATION_DIR_FLAG = "--replication-dir"
PEERS_CA_FILE = "peers-ca.crt"
SECURITY_CONFIG_FLAG = "--security-config"

# Keys of the ``<shardset>-config`` ConfigMap (one settings file per process) and of ``<shardset>-partitions``.
NODE_CONFIG_FILE = "node.json"
CACHE_CONFIG_FILE = "cache.json"
PREDICTOR_CONFIG_FILE = "predictor.json"
SHADOW_CONFIG_FILE = "shadow.json"
WEAVE_CONFIG_FILE = "weave.json"
BOOTSTRAP_CONFIG_FILE = "bootstrap.json"
# The name under which the shadow registers its change-stream slot on the node.
SHADOW_CONSUMER = "shadow"
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
                    operator_identities: tuple[str, ...] = (OPERATOR_IDENTITY,),
                    replica_identities: tuple[str, ...] = ()) -> dict[str, Any]:
    """``security.json``: who the pods are, whom they treat as the operator, how they check tokens, and (for a
    MirrorSet member) the other members' pod identities, allowed the replication routes only."""
    doc: dict[str, Any] = {
        "shardSet": {"namespace": namespace, "name": shardset},
        "audience": audience(namespace, shardset),
        "podIdentity": pod_identity(namespace, shardset),
        "operatorIdentities": list(operator_identities),
        "acceptKubeconfigTokens": spec.access.accept_kubeconfig_tokens,
        "cacheTTLSeconds": AUTH_CACHE_TTL_SECONDS,
        "cacheSize": AUTH_CACHE_SIZE,
    }
    if replica_identities:  # absent for a ShardSet in no MirrorSet: its file stays as it was
        doc["replicaIdentities"] = list(replica_identities)
    return doc


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


def cold_config(cold: ColdStorage, namespace: str, shardset: str) -> dict[str, Any]:
    """The ``cold`` object of shadow.json / bootstrap.json for ``shardset``'s objects.

    One ConfigMap serves every pod, so the prefix stops at the ShardSet: each process appends ``/<shard>`` (its
    ordinal in $POD_NAME).
    """
    base = f"{cold.prefix}/" if cold.prefix else ""
    return {
        "endpoint": cold.endpoint,
        "bucket": cold.bucket,
        "prefix": f"{base}{namespace}/{shardset}",
        "region": cold.region,
        "forcePathStyle": cold.force_path_style,
        "credentialsDir": OBJECTSTORE_MOUNT,
    }


def _seconds(delta: timedelta) -> int | float:
    seconds = delta.total_seconds()
    return int(seconds) if seconds == int(seconds) else seconds


def shadow_config(policy: ShadowPolicySpec, namespace: str = "", shardset: str | None = None) -> dict[str, Any]:
    """Settings of the ``shadow`` process (shadow.json) from the ShadowPolicy in force; ``namespace`` and
    ``shardset`` place its cold tier in the bucket (the policy's ShardSet when ``shardset`` is None)."""
    return {
        "consumer": SHADOW_CONSUMER,
        "tables": list(policy.tables) if policy.tables is not None else None,
        "snapshot": {
            "intervalSeconds": _seconds(policy.snapshot_interval),
            "granularity": policy.granularity,
            "fullEvery": policy.full_every,
        },
        "compression": {
            "codec": policy.compression.codec,
            "level": policy.compression.level,
            "dictionary": policy.compression.dictionary,
        },
        "retention": {
            "hotSeconds": _seconds(policy.retention.hot),
            "warmSeconds": _seconds(policy.retention.warm),
            "coldSeconds": _seconds(policy.retention.cold),
        },
        "cold": (cold_config(policy.cold_storage, namespace, shardset or policy.shardset)
                 if policy.cold_storage is not None else None),
        "reversion": {"mode": policy.reversion_mode, "maxBlocks": policy.reversion_max_blocks},
        "anomaly": {
            "model": policy.anomaly.model,
            "threshold": policy.anomaly.threshold,
            "severityThreshold": policy.anomaly.severity_threshold,
            # Floats, as the shadow's contract says (60.0, not 60).
            "trainingWindowSeconds": policy.anomaly.training_window.total_seconds(),
            "intervalSeconds": policy.anomaly.interval.total_seconds(),
        },
    }


def weave_config(plan: WeavePlanSpec, namespace: str, name: str) -> dict[str, Any]:
    """Settings of the ``weaver`` process (weave.json, docs/weaving.md) from the WeavePlan ``namespace/name``."""
    return {
        "plan": f"{namespace}/{name}",
        "mode": plan.mode,
        "predictionWindowSeconds": _seconds(plan.prediction_window),
        "confidenceThreshold": plan.confidence_threshold,
        "split": {
            "sizeBytes": plan.split_size_threshold_bytes,
            "loadRps": plan.split_load_threshold,
            "sustainedSeconds": _seconds(plan.sustained_for),
            "minPartitionBytes": plan.min_partition_size_bytes,
        },
        "intervalSeconds": _seconds(plan.interval),
        "sampleIntervalSeconds": _seconds(plan.sample_interval),
        "model": plan.model,
        "retention": {"maxSnapshots": plan.max_snapshots, "maxAgeSeconds": _seconds(plan.max_age)},
    }


def bootstrap_config(namespace: str, spec: ShardSetSpec, source: FromShadow) -> dict[str, Any]:
    """Settings of the ``bootstrap`` init container (bootstrap.json): which backup, at which point, for which
    tables; the source's objects are found under its own namespace and name."""
    src_ns = source.source_namespace or namespace
    point = source.point_in_time
    return {
        "source": {"namespace": src_ns, "name": source.source_name},
        "pointInTime": (point.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").replace(".000000Z", "Z")
                        if point is not None else None),
        "tables": list(spec.tables),
        "cold": cold_config(source.cold_storage, src_ns, source.source_name),
    }
