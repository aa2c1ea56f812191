"""Test helper: ServiceAccounts, real TokenRequest tokens, RBAC bindings and the kubeconfig a shard process uses
for TokenReview/SubjectAccessReview, on the test control plane; plus the files of a ShardSet's security.json."""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

SHARDSET = "orders"


def audience(namespace: str, name: str = SHARDSET) -> str:
    """The ShardSet's token audience (docs/security.md)."""
    return f"chronoshard.io/{namespace}/{name}"


def security_doc(namespace: str, *, operators: list[str] | None = None, accept_kubeconfig: bool = False,
                 ttl: float = 10, name: str = SHARDSET) -> dict[str, Any]:
    """A security.json document for ShardSet ``namespace/name``."""
    return {"shardSet": {"namespace": namespace, "name": name}, "audience": audience(namespace, name),
            "podIdentity": f"chronoshard:shardset:{namespace}:{name}",
            "operatorIdentities": ["chronoshard:operator", *(operators or [])],
            "acceptKubeconfigTokens": accept_kubeconfig, "cacheTTLSeconds": ttl, "cacheSize": 10000}


def service_account(core: client.CoreV1Api, namespace: str, name: str) -> str:
    """Create a ServiceAccount; its user name."""
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name=name)))
    return f"system:serviceaccount:{namespace}:{name}"


def token(core: client.CoreV1Api, namespace: str, sa: str, audiences: list[str] | None,
          seconds: int = 600) -> str:
    """A token from the real TokenRequest API (``audiences`` None: the API server's own, as kubectl create token)."""
    spec = client.V1TokenRequestSpec(audiences=audiences or [], expiration_seconds=seconds)
    tr = core.create_namespaced_service_account_token(sa, namespace, client.AuthenticationV1TokenRequest(spec=spec))
    return str(tr.status.token)


def expired_jwt(aud: str, sub: str) -> str:
    """A JWT-shaped token whose ``exp`` is past. TokenRequest will not issue one shorter than 10 minutes, so this
    is crafted (unsigned): the servers must refuse it as expired *before* any review, which is what it tests."""
    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    now = int(time.time())
    return ".".join([part({"alg": "RS256", "kid": "x"}),
                     part({"aud": [aud], "sub": sub, "iat": now - 1200, "nbf": now - 1200, "exp": now - 600}),
                     base64.urlsafe_b64encode(b"not-a-signature").rstrip(b"=").decode()])


def bind_cluster_role(rbac: client.RbacAuthorizationV1Api, role: str, namespace: str, sa: str) -> str:
    """A ClusterRoleBinding of ``role`` to a ServiceAccount (a unique name; the caller deletes it)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    rbac.create_cluster_role_binding(client.V1ClusterRoleBinding(
        metadata=client.V1ObjectMeta(name=name),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name=sa, namespace=namespace)]))
    return name


def bind_role(rbac: client.RbacAuthorizationV1Api, namespace: str, sa: str, rules: list[client.V1PolicyRule]) -> None:
    """A Role with ``rules`` in ``namespace`` bound to a ServiceAccount."""
    name = f"{sa}-role"
    rbac.create_namespaced_role(namespace, client.V1Role(metadata=client.V1ObjectMeta(name=name), rules=rules))
    rbac.create_namespaced_role_binding(namespace, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name=name),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=name),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name=sa, namespace=namespace)]))


def data_rules(tables: list[str] | None, verbs: list[str],
               shardset: str | None = SHARDSET) -> list[client.V1PolicyRule]:
    """Rules on ``shardsets/data`` (the tables, or all) and ``get`` on the ShardSet (its partition map)."""
    rules = [client.V1PolicyRule(api_groups=["chronoshard.io"], resources=["shardsets/data"],
                                 resource_names=tables, verbs=verbs)]
    if shardset is not None:
        rules.append(client.V1PolicyRule(api_groups=["chronoshard.io"], resources=["shardsets"],
                                         resource_names=[shardset], verbs=["get"]))
    return rules


def metrics_cluster_role(rbac: client.RbacAuthorizationV1Api) -> str:
    """A ClusterRole allowing ``get`` on the non-resource URL /metrics (as for Prometheus); its name."""
    name = f"t-metrics-{uuid.uuid4().hex[:8]}"
    rbac.create_cluster_role(client.V1ClusterRole(metadata=client.V1ObjectMeta(name=name), rules=[
        client.V1PolicyRule(non_resource_urls=["/metrics"], verbs=["get"])]))
    return name


@dataclass
class Delegator:
    """The identity a shard process reviews with: a ServiceAccount bound to system:auth-delegator."""

    kubeconfig: Path
    token: str
    binding: str


def delegator(control_plane: Any, core: client.CoreV1Api, rbac: client.RbacAuthorizationV1Api, namespace: str,
              directory: Path) -> Delegator:
    """The kubeconfig of a ServiceAccount with system:auth-delegator (what the node agent gives a shard pod)."""
    from chronoshard.devcluster.controlplane import kubeconfig_document

    service_account(core, namespace, "shard")
    binding = bind_cluster_role(rbac, "system:auth-delegator", namespace, "shard")
    tok = token(core, namespace, "shard", None)
    path = directory / "shard-kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig_document(control_plane.server, tok, control_plane.ca_pem,
                                                       user="shard")))
    return Delegator(path, tok, binding)
