"""ShardSet → the manifests of its children (pure: spec in, dicts out).

The pod contract (containers, ports, mounts, file names, config files) is in ``podcontract`` and docs/interfaces.md;
the StatefulSet written here is exactly what a real cluster runs and what ``chronoshard-dev``'s node agent runs as
local processes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .. import naming
from ..podcontract import (
    CACHE,
    CACHE_CONFIG_FILE,
    CACHE_PORT,
    CONFIG_MOUNT,
    DATA_MOUNT,
    KEK_MOUNT,
    KEYRING_MOUNT,
    NODE,
    NODE_CONFIG_FILE,
    NODE_PORT,
    PARTITION_MAP_FILE,
    PARTITIONS_MOUNT,
    PREDICTOR,
    PREDICTOR_CONFIG_FILE,
    PREDICTOR_PORT,
    RUN_AS_USER,
    cache_config,
    node_config,
    predictor_config,
)
from ..spec.prefetchpolicy import PrefetchPolicySpec
from ..spec.shardset import ShardSetSpec

# Requests every container gets when the ShardSet names none, so the scheduler can place shards sensibly.
DEFAULT_RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    NODE: {"requests": {"cpu": "100m", "memory": "128Mi"}},
    CACHE: {"requests": {"cpu": "100m", "memory": "128Mi"}},
    PREDICTOR: {"requests": {"cpu": "50m", "memory": "128Mi"}},
}


def _meta(name: str, namespace: str, owner: Mapping[str, Any], component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": naming.common_labels(owner["metadata"]["name"], component),
        "ownerReferences": [naming.owner_reference(owner)],
    }


def _dump(settings: Mapping[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True, indent=2) + "\n"


def config_map(owner: Mapping[str, Any], spec: ShardSetSpec, prefetch: PrefetchPolicySpec | None = None
               ) -> dict[str, Any]:
    """The ConfigMap ``<name>-config`` (node.json, cache.json, predictor.json); ``prefetch``: the policy in force."""
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(naming.config_map_name(name), ns, owner, "config"),
        "data": {
            NODE_CONFIG_FILE: _dump(node_config(spec)),
            CACHE_CONFIG_FILE: _dump(cache_config(spec, prefetch)),
            PREDICTOR_CONFIG_FILE: _dump(predictor_config(spec, prefetch)),
        },
    }


def partitions_config_map(owner: Mapping[str, Any], map_json: str) -> dict[str, Any]:
    """The ConfigMap ``<name>-partitions`` carrying the partition map the pods route by."""
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(naming.partitions_config_map_name(name), ns, owner, "partitions"),
        "data": {PARTITION_MAP_FILE: map_json},
    }


def _secret(owner: Mapping[str, Any], name: str, component: str, data: Mapping[str, str]) -> dict[str, Any]:
    ns = owner["metadata"]["namespace"]
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(name, ns, owner, component), "data": dict(data)}


def keyring_secret(owner: Mapping[str, Any], data: Mapping[str, str]) -> dict[str, Any]:
    """The keyring Secret (created once; the operator never overwrites existing key material)."""
    return _secret(owner, naming.keyring_secret_name(owner["metadata"]["name"]), "keyring", data)


def kek_secret(owner: Mapping[str, Any], data: Mapping[str, str]) -> dict[str, Any]:
    """The KEK Secret ``<name>-kek`` (created once, never overwritten, kept when the ShardSet is deleted)."""
    return _secret(owner, naming.kek_secret_name(owner["metadata"]["name"]), "kek", data)


def kek_secret_in_use(name: str, spec: ShardSetSpec) -> str | None:
    """The Secret the pods mount as the KEK: the user's (kekSecretRef), the operator's, or None (provider none)."""
    if not spec.key_encryption.wrapped:
        return None
    return spec.key_encryption.kek_secret or naming.kek_secret_name(name)


def _service_ports() -> list[dict[str, Any]]:
    return [
        {"name": NODE, "port": NODE_PORT, "targetPort": NODE, "protocol": "TCP"},
        {"name": CACHE, "port": CACHE_PORT, "targetPort": CACHE, "protocol": "TCP"},
        {"name": PREDICTOR, "port": PREDICTOR_PORT, "targetPort": PREDICTOR, "protocol": "TCP"},
    ]


def headless_service(owner: Mapping[str, Any]) -> dict[str, Any]:
    """Headless Service: stable per-shard DNS names, published before readiness so shards find each other."""
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(naming.headless_service_name(name), ns, owner, "shard"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": naming.selector_labels(name),
            "ports": _service_ports(),
        },
    }


def client_service(owner: Mapping[str, Any]) -> dict[str, Any]:
    """Client Service: reaches any ready shard's cache, which forwards keys it does not own."""
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(naming.client_service_name(name), ns, owner, "client"),
        "spec": {
            "type": "ClusterIP",
            "selector": naming.selector_labels(name),
            "ports": [{"name": "http", "port": CACHE_PORT, "targetPort": CACHE, "protocol": "TCP"}],
        },
    }


def pod_disruption_budget(owner: Mapping[str, Any], spec: ShardSetSpec) -> dict[str, Any]:
    """PDB: every shard holds a distinct part of the keyspace, so voluntary disruptions go one at a time."""
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(naming.pdb_name(name), ns, owner, "shard"),
        "spec": {
            "maxUnavailable": spec.pdb_max_unavailable,
            "selector": {"matchLabels": naming.selector_labels(name)},
        },
    }


def _env() -> list[dict[str, Any]]:
    def field_ref(name: str, path: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}

    return [
        field_ref("POD_NAME", "metadata.name"),
        field_ref("POD_NAMESPACE", "metadata.namespace"),
        field_ref("POD_IP", "status.podIP"),
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _probe(path: str, port: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _container(
    name: str,
    command: list[str],
    port: int,
    spec: ShardSetSpec,
    mounts: list[dict[str, Any]],
) -> dict[str, Any]:
    resources = spec.resources.get(name) or DEFAULT_RESOURCES[name]
    return {
        "name": name,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": command,
        "env": _env(),
        "ports": [{"name": name, "containerPort": port, "protocol": "TCP"}],
        "startupProbe": _probe("/healthz", name, 1, 60),
        "livenessProbe": _probe("/healthz", name, 10, 3),
        "readinessProbe": _probe("/readyz", name, 2, 3),
        "resources": resources,
        "securityContext": _container_security(),
        "volumeMounts": mounts,
    }


def containers(spec: ShardSetSpec) -> list[dict[str, Any]]:
    """The ``node``, ``cache`` and ``predictor`` containers (commands per docs/interfaces.md)."""
    keyring = {"name": "keyring", "mountPath": KEYRING_MOUNT, "readOnly": True}
    partitions = {"name": "partitions", "mountPath": PARTITIONS_MOUNT, "readOnly": True}
    config = {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}
    data = {"name": "data", "mountPath": DATA_MOUNT}
    tmp = {"name": "tmp", "mountPath": "/tmp"}
    map_file = f"{PARTITIONS_MOUNT}/{PARTITION_MAP_FILE}"
    # Wrapped key versions: node and cache (the processes that decrypt) read the KEK; the predictor never does.
    kek_mounts = [{"name": "kek", "mountPath": KEK_MOUNT, "readOnly": True}] if spec.key_encryption.wrapped else []
    kek_args = ["--kek-dir", KEK_MOUNT] if spec.key_encryption.wrapped else []
    node = _container(
        NODE,
        [
            "chronoshard-node", "--host", "$(POD_IP)", "--port", str(NODE_PORT),
            "--data-dir", DATA_MOUNT, "--keyring-dir", KEYRING_MOUNT, *kek_args,
            "--partition-map", map_file, "--config", f"{CONFIG_MOUNT}/{NODE_CONFIG_FILE}",
        ],
        NODE_PORT, spec, [data, keyring, *kek_mounts, partitions, config, tmp],
    )
    cache = _container(
        CACHE,
        [
            "chronoshard-cache", "--host", "$(POD_IP)", "--port", str(CACHE_PORT),
            "--node-url", f"http://$(POD_IP):{NODE_PORT}", "--keyring-dir", KEYRING_MOUNT, *kek_args,
            "--partition-map", map_file, "--config", f"{CONFIG_MOUNT}/{CACHE_CONFIG_FILE}",
        ],
        CACHE_PORT, spec, [keyring, *kek_mounts, partitions, config, tmp],
    )
    predictor = _container(
        PREDICTOR,
        [
            "chronoshard-predictor", "--host", "$(POD_IP)", "--port", str(PREDICTOR_PORT),
            "--cache-url", f"http://$(POD_IP):{CACHE_PORT}", "--data-dir", f"{DATA_MOUNT}/predictor",
            "--config", f"{CONFIG_MOUNT}/{PREDICTOR_CONFIG_FILE}",
        ],
        PREDICTOR_PORT, spec, [data, config, tmp],
    )
    return [node, cache, predictor]


def statefulset(owner: Mapping[str, Any], spec: ShardSetSpec) -> dict[str, Any]:
    """The StatefulSet: one pod per shard, a PVC per shard kept when the ShardSet is deleted or scaled down."""
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    template = spec.pod_template or {}
    pod_labels = {**(template.get("labels") or {}), **naming.common_labels(name, "shard")}
    pod_spec: dict[str, Any] = {
        "serviceAccountName": "default",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": containers(spec),
        "volumes": [
            {
                "name": "keyring",
                "secret": {"secretName": naming.keyring_secret_name(name), "defaultMode": 0o440},
            },
            {"name": "partitions", "configMap": {"name": naming.partitions_config_map_name(name)}},
            {"name": "config", "configMap": {"name": naming.config_map_name(name)}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    kek = kek_secret_in_use(name, spec)
    if kek is not None:
        pod_spec["volumes"].insert(1, {"name": "kek", "secret": {"secretName": kek, "defaultMode": 0o440}})
    if template.get("nodeSelector"):
        pod_spec["nodeSelector"] = dict(template["nodeSelector"])
    if template.get("tolerations"):
        pod_spec["tolerations"] = list(template["tolerations"])
    if template.get("priorityClassName"):
        pod_spec["priorityClassName"] = template["priorityClassName"]
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.storage_size}},
    }
    if spec.storage_class:
        claim_spec["storageClassName"] = spec.storage_class
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(naming.statefulset_name(name), ns, owner, "shard"),
        "spec": {
            "replicas": spec.shards,
            "serviceName": naming.headless_service_name(name),
            # Shards are independent; starting them together makes a ShardSet available sooner.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": naming.selector_labels(name)},
            "updateStrategy": {"type": "RollingUpdate"},
            # A shard's volume holds its only copy of the data: never delete it implicitly.
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": dict(template.get("annotations") or {}),
                },
                "spec": pod_spec,
            },
            "volumeClaimTemplates": [
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": "data", "labels": naming.selector_labels(name)},
                    "spec": claim_spec,
                }
            ],
        },
    }
