"""MirrorSet → the token service's children (pure: values in, dicts out; docs/tokens.md, "The operator").

Names: Secret ``<ms>-token-signing`` (Ed25519 signing key), Secrets ``<ms>-tokens-ca`` / ``<ms>-tokens-tls`` and
ConfigMap ``<ms>-tokens-ca`` (the service's HTTPS), ServiceAccount ``<ms>-tokens`` bound to
``system:auth-delegator``, ConfigMap ``<ms>-tokens`` (tokens-service.json, security.json, members-ca.crt,
tokens.json), Service and StatefulSet ``<ms>-tokens``. Everything namespaced carries the MirrorSet as controller
owner, so deleting the MirrorSet deletes it; the ClusterRoleBinding is deleted by the controller.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .. import naming
from ..podcontract import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    CACHE_PORT,
    NODE_PORT,
    RUN_AS_USER,
    SECURITY_CONFIG_FILE,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    audience,
    pod_dns_name,
    pod_identity,
)
from ..spec.mirrorset import MirrorSetSpec
from .keys import PREVIOUS_FILE, SIGNING_FILE

PORT = naming.TOKEN_SERVICE_PORT
PORT_NAME = "tokens"
CONTAINER = "tokens"
COMPONENT = "tokens"
SERVICE_CONFIG_FILE = "tokens-service.json"
TOKENS_FILE = "tokens.json"
MEMBERS_CA_FILE = "members-ca.crt"
CONFIG_MOUNT = "/etc/chronoshard/tokens"
SIGNING_MOUNT = "/etc/chronoshard/token-signing"
TLS_MOUNT = "/etc/chronoshard/tls"
DATA_MOUNT = "/var/lib/chronoshard-tokens"
# One projected ServiceAccount token per member, with that member's audience: the service's identity towards the
# members' nodes (health samples, revocation pushes).
MEMBER_TOKENS_MOUNT = "/var/run/secrets/chronoshard/members"
MEMBER_TOKEN_SECONDS = 3600
STORAGE = "1Gi"
AUTH_DELEGATOR = "system:auth-delegator"
# Cluster-scoped: the MirrorSet's namespace as a label (not the ShardSet label the ShardSet sweep deletes by).
MIRRORSET_NAMESPACE_LABEL = "chronoshard.io/mirrorset-namespace"
ROTATE_ANNOTATION = "chronoshard.io/rotate-token-key"
# On the signing Secret: the rotation request last handled and when the signing key last changed.
ROTATED_REQUEST_ANNOTATION = "chronoshard.io/rotated-for"
ROTATED_AT_ANNOTATION = "chronoshard.io/rotated-at"
AUDIENCE = "chronoshard"
DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "192Mi"}}


service_name = naming.token_service_name
service_host = naming.token_service_host
service_identity = naming.token_service_identity


def signing_secret_name(mirrorset: str) -> str:
    """``<ms>-token-signing``: the Ed25519 signing key(s)."""
    return f"{mirrorset}-token-signing"


ca_secret_name = naming.token_ca_name
ca_config_map_name = naming.token_ca_name


def tls_secret_name(mirrorset: str) -> str:
    """``<ms>-tokens-tls``: the service's serving certificate."""
    return f"{mirrorset}-tokens-tls"


def cluster_role_binding_name(namespace: str, mirrorset: str) -> str:
    """The service account's binding to system:auth-delegator (TokenReview, SubjectAccessReview)."""
    return f"chronoshard:tokens:{namespace}:{mirrorset}"


def service_url(namespace: str, mirrorset: str) -> str:
    """The service's URL inside the cluster."""
    return f"https://{service_host(namespace, mirrorset)}:{PORT}"


certificate_identity = naming.token_service_cert_identity


def issuer(namespace: str, mirrorset: str) -> str:
    """The tokens' ``iss``."""
    return f"chronoshard-tokens:{namespace}/{mirrorset}"


def dns_names(namespace: str, mirrorset: str) -> list[str]:
    """The SANs of the service's certificate: the Service's names and the pod's (headless through the Service)."""
    svc = service_name(mirrorset)
    return [f"{svc}.{namespace}.svc", f"{svc}.{namespace}.svc.cluster.local", f"{svc}.{namespace}", svc,
            f"{svc}-0.{svc}.{namespace}.svc", "localhost"]


@dataclass(frozen=True)
class MemberPods:
    """One member ShardSet as the service needs it: its pods' IPs per shard (None: no IP yet)."""

    namespace: str
    name: str
    ips: Mapping[int, str | None] = field(default_factory=dict)

    @property
    def store(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"


def _meta(owner: Mapping[str, Any], name: str, component: str = COMPONENT) -> dict[str, Any]:
    ms = owner["metadata"]["name"]
    return {"name": name, "namespace": owner["metadata"]["namespace"],
            "labels": naming.common_labels(service_name(ms), component),
            "ownerReferences": [naming.owner_reference(owner)]}


def selector_labels(mirrorset: str) -> dict[str, str]:
    """Labels selecting the service's pod."""
    return {"app.kubernetes.io/name": "chronoshard", "app.kubernetes.io/instance": service_name(mirrorset),
            "app.kubernetes.io/component": COMPONENT}


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def signing_secret(owner: Mapping[str, Any], signing_pem: bytes, previous_pem: bytes | None,
                   annotations: Mapping[str, str]) -> dict[str, Any]:
    """The Secret ``<ms>-token-signing``: ``signing.pem`` and, during a rotation, ``previous.pem``."""
    data = {SIGNING_FILE: _b64(signing_pem)}
    if previous_pem is not None:
        data[PREVIOUS_FILE] = _b64(previous_pem)
    meta = _meta(owner, signing_secret_name(owner["metadata"]["name"]), "token-signing")
    meta["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque", "data": data}


def ca_secret(owner: Mapping[str, Any], cert_pem: bytes, key_pem: bytes) -> dict[str, Any]:
    """The service's CA Secret."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(owner, ca_secret_name(owner["metadata"]["name"]), "tokens-ca"),
            "data": {CA_CERT_FILE: _b64(cert_pem), CA_KEY_FILE: _b64(key_pem)}}


def tls_secret(owner: Mapping[str, Any], cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> dict[str, Any]:
    """The service's serving certificate (``tls.crt``, ``tls.key``, ``ca.crt``)."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": _meta(owner, tls_secret_name(owner["metadata"]["name"]), "tokens-tls"),
            "data": {TLS_CERT_FILE: _b64(cert_pem), TLS_KEY_FILE: _b64(key_pem), CA_CERT_FILE: _b64(ca_pem)}}


def ca_config_map(owner: Mapping[str, Any], ca_pem: str) -> dict[str, Any]:
    """The public CA certificate of the service, for clients."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(owner, ca_config_map_name(owner["metadata"]["name"]), "tokens-ca"),
            "data": {CA_CERT_FILE: ca_pem}}


def service_account(owner: Mapping[str, Any]) -> dict[str, Any]:
    """The service's ServiceAccount (its token asks TokenReview / SubjectAccessReview and calls the nodes)."""
    return {"apiVersion": "v1", "kind": "ServiceAccount", "automountServiceAccountToken": True,
            "metadata": _meta(owner, service_name(owner["metadata"]["name"]))}


def cluster_role_binding(owner: Mapping[str, Any]) -> dict[str, Any]:
    """The ServiceAccount's binding to ``system:auth-delegator`` (cluster-scoped: no ownerReference)."""
    ms, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    labels = {**naming.common_labels(service_name(ms), COMPONENT), MIRRORSET_NAMESPACE_LABEL: ns}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": cluster_role_binding_name(ns, ms), "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": AUTH_DELEGATOR},
            "subjects": [{"kind": "ServiceAccount", "name": service_name(ms), "namespace": ns}]}


def _seconds(delta: timedelta) -> int | float:
    s = delta.total_seconds()
    return int(s) if s == int(s) else s


def _member_token_file(m: MemberPods) -> str:
    return f"{MEMBER_TOKENS_MOUNT}/{m.namespace}.{m.name}/token"


def _member_config(m: MemberPods, role: str) -> dict[str, Any]:
    shards = []
    for i in sorted(m.ips):
        ip = m.ips[i]
        if not ip:  # no IP yet: left out, the file is rewritten when the pod has one
            continue
        host = f"[{ip}]" if ":" in ip else ip
        shards.append({"index": i, "serverName": pod_dns_name(m.namespace, m.name, i),
                       "node": f"https://{host}:{NODE_PORT}", "cache": f"https://{host}:{CACHE_PORT}"})
    # audience/tokenFile: the projected ServiceAccount token the service presents to this member's pods.
    return {"store": m.store, "role": role, "audience": audience(m.namespace, m.name),
            "tokenFile": _member_token_file(m), "shards": shards}


def service_config(owner: Mapping[str, Any], spec: MirrorSetSpec, members: Sequence[MemberPods],
                   status: Mapping[str, Any]) -> dict[str, Any]:
    """``tokens-service.json``: the MirrorSet, its members' nodes and caches per shard (from their pods), the
    active member and the operation in progress (from the MirrorSet's status), TTLs, prediction and health
    settings. Re-rendered when any of them changes; the service re-reads it."""
    ms, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    op = status.get("operation") or None
    return {
        "mirrorSet": f"{ns}/{ms}",
        "activeStore": status.get("activeShardSet") or (members[0].store if members else None),
        "term": int(status.get("term") or 0),
        "operation": ({"kind": op.get("kind"), "from": op.get("from"), "to": op.get("to"), "step": op.get("step"),
                       "term": op.get("term")} if isinstance(op, Mapping) else None),
        "members": [_member_config(m, "source" if i == 0 else "mirror") for i, m in enumerate(members)],
        "tokens": {"validTTL": _seconds(spec.tokens.valid_ttl), "temporaryTTL": _seconds(spec.tokens.temporary_ttl),
                   "provisionalTTL": _seconds(spec.tokens.provisional_ttl)},
        "prediction": {"windows": [_seconds(w) for w in spec.prediction.windows],
                       "unavailabilityThreshold": spec.prediction.unavailability_threshold,
                       "model": spec.prediction.model},
        "health": {"probeInterval": _seconds(spec.health.probe_interval),
                   "failureThreshold": spec.health.failure_threshold},
        "failoverPolicy": spec.failover_policy,
    }


def security_config(namespace: str, mirrorset: str, operator_identities: Sequence[str],
                    members: Sequence[MemberPods] = ()) -> dict[str, Any]:
    """The service's ``security.json`` (the same shape as a ShardSet's: docs/security.md): callers authenticate
    with their ServiceAccount tokens (kubeconfig tokens accepted: services use their default token); the members'
    pod identities are ``replicaIdentities`` (their nodes and caches pull ``GET /v1/revocations``)."""
    doc: dict[str, Any] = {"shardSet": {"namespace": namespace, "name": service_name(mirrorset)},
                           "audience": audience(namespace, service_name(mirrorset)),
                           "podIdentity": certificate_identity(namespace, mirrorset),
                           "operatorIdentities": list(operator_identities),
                           "acceptKubeconfigTokens": True, "cacheTTLSeconds": 10, "cacheSize": 10000}
    replicas = [pod_identity(m.namespace, m.name) for m in members]
    if replicas:
        doc["replicaIdentities"] = replicas
    return doc


def tokens_json(namespace: str, mirrorset: str, public_keys: Sequence[Mapping[str, str]], store: str,
                members: Sequence[str]) -> dict[str, Any]:
    """A member's ``tokens.json`` (docs/tokens.md, "The token"): issuer, public keys, the service's address;
    ``store`` is the member whose ConfigMap holds it (the ShardSet its pods serve)."""
    return {"issuer": issuer(namespace, mirrorset), "mirrorSet": f"{namespace}/{mirrorset}",
            "keys": [dict(k) for k in public_keys],
            "service": {"url": service_url(namespace, mirrorset), "serverName": service_host(namespace, mirrorset)},
            "store": store, "members": list(members)}


def dump(doc: Mapping[str, Any]) -> str:
    """JSON as the ConfigMaps hold it (sorted keys: an unchanged document is byte-equal)."""
    return json.dumps(doc, sort_keys=True, indent=2) + "\n"


def config_map(owner: Mapping[str, Any], service: Mapping[str, Any], security: Mapping[str, Any],
               members_ca: str, published: Mapping[str, Any]) -> dict[str, Any]:
    """ConfigMap ``<ms>-tokens``: the service's settings and, under ``tokens.json``, the public document the
    members' ConfigMaps get (``store`` set per member by operator/tokenlookup.py)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(owner, service_name(owner["metadata"]["name"])),
            "data": {SERVICE_CONFIG_FILE: dump(service), SECURITY_CONFIG_FILE: dump(security),
                     MEMBERS_CA_FILE: members_ca, TOKENS_FILE: dump(published)}}


def service(owner: Mapping[str, Any]) -> dict[str, Any]:
    """Service ``<ms>-tokens`` (port 7405, ``tokens``)."""
    ms = owner["metadata"]["name"]
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(owner, service_name(ms)),
            "spec": {"selector": selector_labels(ms),
                     "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP"}]}}


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": PORT_NAME, "scheme": "HTTPS"}, "periodSeconds": period,
            "timeoutSeconds": 2, "failureThreshold": failures}


def _container(image: str, pull_policy: str) -> dict[str, Any]:
    return {
        "name": CONTAINER, "image": image, "imagePullPolicy": pull_policy,
        "command": ["chronoshard-tokens", "--host", "$(POD_IP)", "--port", str(PORT),
                    "--config", f"{CONFIG_MOUNT}/{SERVICE_CONFIG_FILE}", "--data-dir", DATA_MOUNT,
                    "--signing-dir", SIGNING_MOUNT, "--tls-dir", TLS_MOUNT,
                    "--security-config", f"{CONFIG_MOUNT}/{SECURITY_CONFIG_FILE}",
                    "--members-ca", f"{CONFIG_MOUNT}/{MEMBERS_CA_FILE}"],
        "env": [{"name": n, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": p}}}
                for n, p in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace"),
                             ("POD_IP", "status.podIP"))] + [{"name": "PYTHONUNBUFFERED", "value": "1"}],
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "startupProbe": _probe("/healthz", 1, 60),
        "livenessProbe": _probe("/healthz", 10, 3),
        "readinessProbe": _probe("/readyz", 2, 3),
        "resources": DEFAULT_RESOURCES,
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_MOUNT},
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "signing", "mountPath": SIGNING_MOUNT, "readOnly": True},
            {"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True},
            {"name": "member-tokens", "mountPath": MEMBER_TOKENS_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def _member_tokens_volume(members: Sequence[MemberPods]) -> dict[str, Any]:
    sources = [{"serviceAccountToken": {"audience": audience(m.namespace, m.name),
                                        "expirationSeconds": MEMBER_TOKEN_SECONDS,
                                        "path": f"{m.namespace}.{m.name}/token"}} for m in members]
    return {"name": "member-tokens", "projected": {"sources": sources, "defaultMode": 0o440}}


def statefulset(owner: Mapping[str, Any], image: str, pull_policy: str,
                members: Sequence[MemberPods]) -> dict[str, Any]:
    """StatefulSet ``<ms>-tokens``: one replica (one writer of the registry), a 1 GiB volume for the registry and
    the model, the signing Secret mounted only here; the shard pods' security context."""
    ms = owner["metadata"]["name"]
    pod_spec: dict[str, Any] = {
        "serviceAccountName": service_name(ms),
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER,
                            "fsGroup": RUN_AS_USER, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_container(image, pull_policy)],
        "volumes": [
            {"name": "config", "configMap": {"name": service_name(ms)}},
            {"name": "signing", "secret": {"secretName": signing_secret_name(ms), "defaultMode": 0o440}},
            {"name": "tls", "secret": {"secretName": tls_secret_name(ms), "defaultMode": 0o440}},
            _member_tokens_volume(members),
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta(owner, service_name(ms)),
        "spec": {
            "replicas": 1, "serviceName": service_name(ms),
            "selector": {"matchLabels": selector_labels(ms)},
            "updateStrategy": {"type": "RollingUpdate"},
            # The registry belongs to the MirrorSet: it goes with it.
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
            "template": {"metadata": {"labels": {**naming.common_labels(service_name(ms), COMPONENT),
                                                 **selector_labels(ms)}},
                         "spec": pod_spec},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                                      "spec": {"accessModes": ["ReadWriteOnce"],
                                               "resources": {"requests": {"storage": STORAGE}}}}],
        },
    }
