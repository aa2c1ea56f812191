"""ShardSet → the manifests of its children (pure: spec in, dicts out).

The pod contract (containers, ports, mounts, file names, config files) is in ``podcontract`` and docs/interfaces.md;
the StatefulSet written here is exactly what a real cluster runs and what ``chronoshard-dev``'s node agent runs as
local processes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .. import naming
from ..podcontract import (
    BOOTSTRAP,
    BOOTSTRAP_CONFIG_FILE,
    CA_CERT_FILE,
    CA_KEY_FILE,
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
    OBJECTSTORE_MOUNT,
    PARTITION_MAP_FILE,
    PARTITIONS_MOUNT,
    PEERS_CA_FILE,
    PREDICTOR,
    PREDICTOR_CONFIG_FILE,
    PREDICTOR_PORT,
    REPLICATION_DIR_FLAG,
    REPLICATION_MOUNT,
    RUN_AS_USER,
    SECURITY_CONFIG_FILE,
    SECURITY_CONFIG_FLAG,
    SHADOW,
    SHADOW_CONFIG_FILE,
    SHADOW_PORT,
    TLS_CERT_FILE,
    TLS_DIR_FLAG,
    TLS_KEY_FILE,
    TLS_MOUNT,
    WEAVE_CONFIG_FILE,
    WEAVER,
    WEAVER_PORT,
    bootstrap_config,
    cache_config,
    node_config,
    pod_identity,
    predictor_config,
    security_config,
    shadow_config,
    weave_config,
)
from ..spec.prefetchpolicy import PrefetchPolicySpec
from ..spec.reshard import ReshardStep, step_to_spec
from ..spec.shadowpolicy import ShadowPolicySpec
from ..spec.shardset import ShardSetSpec
from ..weaveselect import WeaveSelection

AUTH_DELEGATOR = "system:auth-delegator"
# The MirrorSet token service's public keys in a member's config (docs/tokens.md; nodes and caches read it).
TOKENS_CONFIG_FILE = "tokens.json"
# Cluster-scoped children carry their ShardSet's namespace as a label (no ownerReference can point at it).
NAMESPACE_LABEL = "chronoshard.io/shardset-namespace"

# Requests every container gets when the ShardSet names none, so the scheduler can place shards sensibly.
DEFAULT_RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    NODE: {"requests": {"cpu": "100m", "memory": "128Mi"}},
    CACHE: {"requests": {"cpu": "100m", "memory": "128Mi"}},
    PREDICTOR: {"requests": {"cpu": "50m", "memory": "128Mi"}},
    SHADOW: {"requests": {"cpu": "100m", "memory": "128Mi"}},
    WEAVER: {"requests": {"cpu": "50m", "memory": "128Mi"}},
    BOOTSTRAP: {"requests": {"cpu": "100m", "memory": "128Mi"}},
}
# Volumes of the object-storage credentials: the ShadowPolicy's (shadow container) and the bootstrap's.
OBJECTSTORE_VOLUME = "objectstore"
BOOTSTRAP_OBJECTSTORE_VOLUME = "bootstrap-objectstore"
# A MirrorSet member's node: the other members' CA certificates (the ``<name>-replication`` ConfigMap).
REPLICATION_VOLUME = "replication"
# What a member's pods do with their primary Leases ``<name>-<i>-primary`` (docs/mirroring.md, fencing).
LEASE_VERBS = ("get", "create", "update", "patch")


def _meta(name: str, namespace: str, owner: Mapping[str, Any], component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": naming.common_labels(owner["metadata"]["name"], component),
        "ownerReferences": [naming.owner_reference(owner)],
    }


def _dump(settings: Mapping[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True, indent=2) + "\n"


def config_map(owner: Mapping[str, Any], spec: ShardSetSpec, prefetch: PrefetchPolicySpec | None = None,
               operator_identities: tuple[str, ...] | None = None,
               shadow: ShadowPolicySpec | None = None, replica_identities: tuple[str, ...] = (),
               weave: WeaveSelection | None = None, tokens_json: str | None = None) -> dict[str, Any]:
    """The ConfigMap ``<name>-config`` (node.json, cache.json, predictor.json, security.json, and shadow.json /
    bootstrap.json when a ShadowPolicy is in force / the spec bootstraps); ``prefetch`` and ``shadow``: the
    policies in force; ``operator_identities``: whom the pods treat as the operator (default its certificate CN);
    ``replica_identities``: the other MirrorSet members' pod identities (none outside a MirrorSet); ``weave``: the
    WeavePlan in force, which adds weave.json; ``tokens_json``: the MirrorSet token service's public keys
    (docs/tokens.md), absent outside a MirrorSet."""
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    security = (security_config(ns, name, spec, replica_identities=replica_identities)
                if operator_identities is None
                else security_config(ns, name, spec, operator_identities, replica_identities))
    data = {
        NODE_CONFIG_FILE: _dump(node_config(spec)),
        CACHE_CONFIG_FILE: _dump(cache_config(spec, prefetch)),
        PREDICTOR_CONFIG_FILE: _dump(predictor_config(spec, prefetch)),
        SECURITY_CONFIG_FILE: _dump(security),
    }
    if shadow is not None:
        data[SHADOW_CONFIG_FILE] = _dump(shadow_config(shadow, ns, name))
    if weave is not None and weave.name is not None and weave.spec is not None:
        data[WEAVE_CONFIG_FILE] = _dump(weave_config(weave.spec, ns, weave.name))
    if spec.from_shadow is not None:
        data[BOOTSTRAP_CONFIG_FILE] = _dump(bootstrap_config(ns, spec, spec.from_shadow))
    if tokens_json is not None:
        data[TOKENS_CONFIG_FILE] = tokens_json
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(naming.config_map_name(name), ns, owner, "config"),
        "data": data,
    }


def replication_config_map(owner: Mapping[str, Any], peers_ca_pem: str) -> dict[str, Any]:
    """The ConfigMap ``<name>-replication`` a MirrorSet member's node mounts: ``peers-ca.crt``, the other members'
    public CA certificates, concatenated (each accepted for the replication routes only)."""
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(naming.replication_config_map_name(name), ns, owner, "replication"),
        "data": {PEERS_CA_FILE: peers_ca_pem},
    }


def lease_role(owner: Mapping[str, Any]) -> dict[str, Any]:
    """The Role ``<name>-lease``: a MirrorSet member's pods hold and renew their primary Leases in their namespace."""
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(naming.lease_role_name(name), ns, owner, "shard"),
        "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": list(LEASE_VERBS)}],
    }


def lease_role_binding(owner: Mapping[str, Any]) -> dict[str, Any]:
    """The RoleBinding ``<name>-lease`` of the pods' ServiceAccount to the Role of the same name."""
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(naming.lease_role_name(name), ns, owner, "shard"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": naming.lease_role_name(name)},
        "subjects": [{"kind": "ServiceAccount", "name": naming.service_account_name(name), "namespace": ns}],
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


def rebalance_reshard_name(shardset: str, epoch: int) -> str:
    """The Reshard a rebalance on scale creates for the map of ``epoch`` (docs/resharding.md)."""
    return f"{shardset}-rebalance-{epoch}"


def rebalance_reshard(owner: Mapping[str, Any], epoch: int, steps: Sequence[ReshardStep],
                      grace_period: str = "5m") -> dict[str, Any]:
    """The Reshard (owned by the ShardSet) whose steps spread the keyspace evenly over ``spec.shards``."""
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    return {
        "apiVersion": naming.API_VERSION,
        "kind": "Reshard",
        "metadata": _meta(rebalance_reshard_name(name, epoch), ns, owner, "rebalance"),
        "spec": {"shardSetRef": {"name": name}, "steps": [step_to_spec(s) for s in steps],
                 "gracePeriod": grace_period},
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


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def ca_secret(owner: Mapping[str, Any], cert_pem: bytes, key_pem: bytes) -> dict[str, Any]:
    """The ShardSet's CA Secret ``<name>-ca`` (created once, never overwritten, kept when the ShardSet goes)."""
    return _secret(owner, naming.ca_secret_name(owner["metadata"]["name"]), "ca",
                   {CA_CERT_FILE: _b64(cert_pem), CA_KEY_FILE: _b64(key_pem)})


def tls_secret(owner: Mapping[str, Any], cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> dict[str, Any]:
    """The pods' certificate Secret ``<name>-tls`` (type kubernetes.io/tls, plus ``ca.crt``)."""
    secret = _secret(owner, naming.tls_secret_name(owner["metadata"]["name"]), "tls",
                     {TLS_CERT_FILE: _b64(cert_pem), TLS_KEY_FILE: _b64(key_pem), CA_CERT_FILE: _b64(ca_pem)})
    secret["type"] = "kubernetes.io/tls"
    return secret


def ca_config_map(owner: Mapping[str, Any], ca_pem: str) -> dict[str, Any]:
    """The ConfigMap ``<name>-ca``: the CA certificate alone, public, for clients to verify the pods."""
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    meta = _meta(naming.ca_config_map_name(name), ns, owner, "ca")
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {CA_CERT_FILE: ca_pem}}


def certificate(owner: Mapping[str, Any], spec: ShardSetSpec, dns_names: Sequence[str],
                ip_addresses: Sequence[str]) -> dict[str, Any]:
    """The cert-manager Certificate for ``<name>-tls`` (same CN, names and usages as the operator's own)."""
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    ref = spec.issuer_ref
    if ref is None:
        raise ValueError("the ShardSet names no issuer (spec.tls.issuerRef)")
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": _meta(naming.certificate_name(name), ns, owner, "tls"),
        "spec": {
            "secretName": naming.tls_secret_name(name),
            # cert-manager's Secret carries no ownerReference to us: these labels let the operator notice it.
            "secretTemplate": {"labels": naming.common_labels(name, "tls")},
            "commonName": pod_identity(ns, name),
            "dnsNames": list(dns_names),
            "ipAddresses": list(ip_addresses),
            "duration": "2160h",  # 90 days
            "renewBefore": "720h",  # a third of it
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "usages": ["digital signature", "server auth", "client auth"],
            "issuerRef": {"name": ref.name, "kind": ref.kind, "group": ref.group},
        },
    }


def service_account(owner: Mapping[str, Any]) -> dict[str, Any]:
    """The ServiceAccount ``<name>-shard`` the pods run as; its token lets them ask TokenReview and
    SubjectAccessReview."""
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": _meta(naming.service_account_name(name), ns, owner, "shard"),
            "automountServiceAccountToken": True}


def cluster_role_binding(owner: Mapping[str, Any]) -> dict[str, Any]:
    """The binding of the pods' ServiceAccount to ``system:auth-delegator`` (cluster-scoped: no ownerReference;
    the operator deletes it with the ShardSet)."""
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    labels = {**naming.common_labels(name, "shard"), NAMESPACE_LABEL: ns}
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": naming.cluster_role_binding_name(ns, name), "labels": labels},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": AUTH_DELEGATOR},
        "subjects": [{"kind": "ServiceAccount", "name": naming.service_account_name(name), "namespace": ns}],
    }


def _port(number: int) -> dict[str, Any]:
    return {"port": number, "protocol": "TCP"}


def network_policy(owner: Mapping[str, Any], spec: ShardSetSpec, operator_peer: Mapping[str, Any],
                   replica_peers: Sequence[tuple[str, str]] = (),
                   token_service: tuple[str, str] | None = None) -> dict[str, Any]:
    """The NetworkPolicy: every port from the ShardSet's own pods and the operator, the cache and shadow ports from
    ``spec.access.clients``, every port (each serves /metrics) from ``spec.access.monitoring``, the node port
    from the pods of ``replica_peers`` (the other members of its MirrorSet: ``(namespace, name)``), and the node and
    cache ports from its MirrorSet's token service (``(namespace, mirrorset)``: health samples, revocations)."""
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    own = {"podSelector": {"matchLabels": naming.selector_labels(name)}}
    every_port = [_port(p) for p in (NODE_PORT, CACHE_PORT, PREDICTOR_PORT, SHADOW_PORT, WEAVER_PORT)]
    ingress: list[dict[str, Any]] = [{"from": [own, dict(operator_peer)], "ports": every_port}]
    if spec.access.clients:
        # Clients read blocks at the cache, history at the shadow (when a ShadowPolicy runs one) and woven
        # snapshots at the weaver (when a WeavePlan runs one).
        ingress.append({"from": [dict(p) for p in spec.access.clients],
                        "ports": [_port(CACHE_PORT), _port(SHADOW_PORT), _port(WEAVER_PORT)]})
    if spec.access.monitoring:
        ingress.append({"from": [dict(p) for p in spec.access.monitoring], "ports": every_port})
    if replica_peers:
        # Whichever member is primary, the others' nodes stream from its node (and only the node port).
        ingress.append({"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": pns}},
                                  "podSelector": {"matchLabels": naming.selector_labels(pname)}}
                                 for pns, pname in replica_peers],
                        "ports": [_port(NODE_PORT)]})
    if token_service is not None:
        tns, ms = token_service
        ingress.append({"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": tns}},
                                  "podSelector": {"matchLabels": {
                                      "app.kubernetes.io/name": "chronoshard",
                                      "app.kubernetes.io/instance": naming.token_service_name(ms),
                                      "app.kubernetes.io/component": "tokens"}}}],
                        "ports": [_port(NODE_PORT), _port(CACHE_PORT)]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(naming.network_policy_name(name), ns, owner, "shard"),
        "spec": {"podSelector": {"matchLabels": naming.selector_labels(name)}, "policyTypes": ["Ingress"],
                 "ingress": ingress},
    }


def _service_ports() -> list[dict[str, Any]]:
    return [
        {"name": NODE, "port": NODE_PORT, "targetPort": NODE, "protocol": "TCP"},
        {"name": CACHE, "port": CACHE_PORT, "targetPort": CACHE, "protocol": "TCP"},
        {"name": PREDICTOR, "port": PREDICTOR_PORT, "targetPort": PREDICTOR, "protocol": "TCP"},
        # Served only while a ShadowPolicy gives the pods a shadow container; the CLI reads history here.
        {"name": SHADOW, "port": SHADOW_PORT, "targetPort": SHADOW, "protocol": "TCP"},
        # Likewise while a WeavePlan gives them a weaver; the CLI lists woven snapshots here.
        {"name": WEAVER, "port": WEAVER_PORT, "targetPort": WEAVER, "protocol": "TCP"},
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
        # The servers speak HTTPS only; kubelet does not verify a probe's certificate, and the probe paths are
        # public (docs/security.md).
        "httpGet": {"path": path, "port": port, "scheme": "HTTPS"},
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


def containers(spec: ShardSetSpec, shadow: ShadowPolicySpec | None = None,
               replication: bool = False, weave: WeaveSelection | None = None) -> list[dict[str, Any]]:
    """The ``node``, ``cache`` and ``predictor`` containers, and ``shadow`` while a ShadowPolicy is in force
    (commands per docs/interfaces.md); ``replication``: the ShardSet is a MirrorSet member, so the node gets its
    replication directory (the other members' CAs); ``weave``: the WeavePlan in force adds ``weaver``."""
    keyring = {"name": "keyring", "mountPath": KEYRING_MOUNT, "readOnly": True}
    partitions = {"name": "partitions", "mountPath": PARTITIONS_MOUNT, "readOnly": True}
    config = {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}
    data = {"name": "data", "mountPath": DATA_MOUNT}
    tmp = {"name": "tmp", "mountPath": "/tmp"}
    tls = {"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True}
    # Every process serves HTTPS from the pods' certificate and checks callers against security.json.
    secure = [TLS_DIR_FLAG, TLS_MOUNT, SECURITY_CONFIG_FLAG, f"{CONFIG_MOUNT}/{SECURITY_CONFIG_FILE}"]
    map_file = f"{PARTITIONS_MOUNT}/{PARTITION_MAP_FILE}"
    # Wrapped key versions: node and cache (the processes that decrypt) read the KEK; the predictor never does.
    kek_mounts = [{"name": "kek", "mountPath": KEK_MOUNT, "readOnly": True}] if spec.key_encryption.wrapped else []
    kek_args = ["--kek-dir", KEK_MOUNT] if spec.key_encryption.wrapped else []
    # Only the node serves the replication routes a peer member may call, so only it trusts the peers' CAs.
    repl_mounts = ([{"name": REPLICATION_VOLUME, "mountPath": REPLICATION_MOUNT, "readOnly": True}]
                   if replication else [])
    repl_args = [REPLICATION_DIR_FLAG, REPLICATION_MOUNT] if replication else []
    node = _container(
        NODE,
        [
            "chronoshard-node", "--host", "$(POD_IP)", "--port", str(NODE_PORT),
            "--data-dir", DATA_MOUNT, "--keyring-dir", KEYRING_MOUNT, *kek_args,
            "--partition-map", map_file, "--config", f"{CONFIG_MOUNT}/{NODE_CONFIG_FILE}", *secure, *repl_args,
        ],
        NODE_PORT, spec, [data, keyring, *kek_mounts, partitions, config, tls, tmp, *repl_mounts],
    )
    cache = _container(
        CACHE,
        [
            "chronoshard-cache", "--host", "$(POD_IP)", "--port", str(CACHE_PORT),
            "--node-url", f"https://$(POD_IP):{NODE_PORT}", "--keyring-dir", KEYRING_MOUNT, *kek_args,
            "--partition-map", map_file, "--config", f"{CONFIG_MOUNT}/{CACHE_CONFIG_FILE}", *secure,
        ],
        CACHE_PORT, spec, [keyring, *kek_mounts, partitions, config, tls, tmp],
    )
    predictor = _container(
        PREDICTOR,
        [
            "chronoshard-predictor", "--host", "$(POD_IP)", "--port", str(PREDICTOR_PORT),
            "--cache-url", f"https://$(POD_IP):{CACHE_PORT}", "--data-dir", f"{DATA_MOUNT}/predictor",
            "--config", f"{CONFIG_MOUNT}/{PREDICTOR_CONFIG_FILE}", *secure,
        ],
        PREDICTOR_PORT, spec, [data, config, tls, tmp],
    )
    weaver = ([_weaver_container(spec, [data, keyring, *kek_mounts, partitions, config, tls, tmp],
                                 [*kek_args, *secure])] if weave is not None and weave.spec is not None else [])
    if shadow is None:
        return [node, cache, predictor, *weaver]
    # The shadow reads the node's change stream like the cache does (same keys, TLS and pod identity) and keeps
    # its history beside the node's blocks on the data volume.
    objectstore = ([{"name": OBJECTSTORE_VOLUME, "mountPath": OBJECTSTORE_MOUNT, "readOnly": True}]
                   if shadow.cold_storage is not None else [])
    shadow_container = _container(
        SHADOW,
        [
            "chronoshard-shadow", "--host", "$(POD_IP)", "--port", str(SHADOW_PORT),
            "--node-url", f"https://$(POD_IP):{NODE_PORT}", "--data-dir", DATA_MOUNT,
            "--keyring-dir", KEYRING_MOUNT, *kek_args, "--partition-map", map_file,
            "--settings", f"{CONFIG_MOUNT}/{SHADOW_CONFIG_FILE}",
            *(["--objectstore-dir", OBJECTSTORE_MOUNT] if objectstore else []), *secure,
        ],
        SHADOW_PORT, spec, [data, keyring, *kek_mounts, partitions, config, tls, tmp, *objectstore],
    )
    return [node, cache, predictor, shadow_container, *weaver]


def _weaver_container(spec: ShardSetSpec, mounts: list[dict[str, Any]], extra: list[str]) -> dict[str, Any]:
    """The ``weaver`` (docs/weaving.md): the shadow's keys, TLS and pod identity; it samples its node, reads the
    shadow's history file on the shard volume read-only and keeps ``weave.sqlite3`` beside it."""
    return _container(
        WEAVER,
        [
            "chronoshard-weaver", "--host", "$(POD_IP)", "--port", str(WEAVER_PORT),
            "--node-url", f"https://$(POD_IP):{NODE_PORT}", "--data-dir", DATA_MOUNT,
            "--keyring-dir", KEYRING_MOUNT, "--partition-map", f"{PARTITIONS_MOUNT}/{PARTITION_MAP_FILE}",
            "--settings", f"{CONFIG_MOUNT}/{WEAVE_CONFIG_FILE}", *extra,
        ],
        WEAVER_PORT, spec, mounts,
    )


def bootstrap_container(spec: ShardSetSpec) -> dict[str, Any]:
    """The ``bootstrap`` init container: fills an empty data volume from the source's backup before the node
    starts (``chronoshard-shadow bootstrap``; a volume that already holds blocks is left as it is)."""
    kek_mounts = [{"name": "kek", "mountPath": KEK_MOUNT, "readOnly": True}] if spec.key_encryption.wrapped else []
    kek_args = ["--kek-dir", KEK_MOUNT] if spec.key_encryption.wrapped else []
    return {
        "name": BOOTSTRAP,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": [
            "chronoshard-shadow", "bootstrap", "--settings", f"{CONFIG_MOUNT}/{BOOTSTRAP_CONFIG_FILE}",
            "--data-dir", DATA_MOUNT, "--keyring-dir", KEYRING_MOUNT, *kek_args,
            "--objectstore-dir", OBJECTSTORE_MOUNT,
        ],
        "env": _env(),
        "resources": DEFAULT_RESOURCES[BOOTSTRAP],
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_MOUNT},
            {"name": "keyring", "mountPath": KEYRING_MOUNT, "readOnly": True},
            *kek_mounts,
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": BOOTSTRAP_OBJECTSTORE_VOLUME, "mountPath": OBJECTSTORE_MOUNT, "readOnly": True},
        ],
    }


def _add_shadow_volumes(pod_spec: dict[str, Any], spec: ShardSetSpec, shadow: ShadowPolicySpec | None) -> None:
    """The object-storage Secrets of the shadow and of the bootstrap init container, and that init container."""
    if shadow is not None and shadow.cold_storage is not None:
        # optional: a missing credentials Secret must not keep the node and cache from starting; the
        # ShadowPolicy's status says it is missing, and the shadow reports its cold tier cannot export.
        pod_spec["volumes"].append({"name": OBJECTSTORE_VOLUME, "secret": {
            "secretName": shadow.cold_storage.credentials_secret, "defaultMode": 0o440, "optional": True}})
    if spec.from_shadow is not None:
        # Not optional: without credentials there is nothing to restore, so the pod waits for the Secret.
        pod_spec["volumes"].append({"name": BOOTSTRAP_OBJECTSTORE_VOLUME, "secret": {
            "secretName": spec.from_shadow.cold_storage.credentials_secret, "defaultMode": 0o440}})
        pod_spec["initContainers"] = [bootstrap_container(spec)]


ZONE_LABEL = "topology.kubernetes.io/zone"


def statefulset(owner: Mapping[str, Any], spec: ShardSetSpec, shadow: ShadowPolicySpec | None = None,
                replication: bool = False, zone: str | None = None,
                weave: WeaveSelection | None = None) -> dict[str, Any]:
    """The StatefulSet: one pod per shard, a PVC per shard kept when the ShardSet is deleted or scaled down;
    ``shadow``: the ShadowPolicy in force, which adds the shadow container; ``replication``: a MirrorSet member
    (the node mounts ``<name>-replication``); ``zone``: the MirrorSet places this mirror's pods in that zone;
    ``weave``: the WeavePlan in force, which adds the weaver container."""
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    template = spec.pod_template or {}
    pod_labels = {**(template.get("labels") or {}), **naming.common_labels(name, "shard")}
    pod_spec: dict[str, Any] = {
        # The pods' own ServiceAccount: its token asks the API server's TokenReview and SubjectAccessReview.
        "serviceAccountName": naming.service_account_name(name),
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": containers(spec, shadow, replication, weave),
        "volumes": [
            {
                "name": "keyring",
                "secret": {"secretName": naming.keyring_secret_name(name), "defaultMode": 0o440},
            },
            {"name": "partitions", "configMap": {"name": naming.partitions_config_map_name(name)}},
            {"name": "config", "configMap": {"name": naming.config_map_name(name)}},
            {"name": "tls", "secret": {"secretName": naming.tls_secret_name(name), "defaultMode": 0o440}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    kek = kek_secret_in_use(name, spec)
    if kek is not None:
        pod_spec["volumes"].insert(1, {"name": "kek", "secret": {"secretName": kek, "defaultMode": 0o440}})
    _add_shadow_volumes(pod_spec, spec, shadow)
    if replication:
        # optional: the ConfigMap is written in the same pass; a pod started first serves without peers until the
        # kubelet refreshes the mounted files (the node rereads them), rather than waiting in ContainerCreating.
        pod_spec["volumes"].append({"name": REPLICATION_VOLUME, "configMap": {
            "name": naming.replication_config_map_name(name), "optional": True}})
    if zone is not None:
        # A mirror in the source's zone would not survive the zone's loss: placing it is what `zone` is for.
        pod_spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": ZONE_LABEL, "operator": "In", "values": [zone]}]}]}}}
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
