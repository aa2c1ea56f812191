"""MirrorSet members (#17) against a real kube-apiserver: the ShardSet controller gives every member's pods the
other members' identities and CAs and a Lease Role; a ShardSet in no MirrorSet keeps today's pods."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.support.waiting import wait_for

GROUP, VERSION = "chronoshard.io", "v1alpha1"

pytestmark = pytest.mark.integration


@pytest.fixture()
def other_namespace(k8s_client) -> Iterator[str]:
    """A second fresh namespace: a mirror may live anywhere."""
    core = client.CoreV1Api(k8s_client)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def _shardset(apis, ns: str, name: str, shards: int = 2) -> None:
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, ns, "shardsets", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ShardSet", "metadata": {"name": name},
        "spec": {"shards": shards}})


def _mirrorset(apis, ns: str, name: str, source: str, mirror: str, mirror_ns: str) -> None:
    apis["custom"].create_namespaced_custom_object(GROUP, VERSION, ns, "mirrorsets", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "MirrorSet", "metadata": {"name": name},
        "spec": {"sourceRef": {"name": source},
                 "mirrors": [{"shardSetRef": {"name": mirror}, "namespace": mirror_ns}]}})


def _read(fn, *args: Any) -> Any:
    try:
        return fn(*args)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _security(apis, ns: str, name: str) -> dict[str, Any] | None:
    cm = _read(apis["core"].read_namespaced_config_map, f"{name}-config", ns)
    return json.loads(cm.data["security.json"]) if cm is not None else None


def _ca(apis, ns: str, name: str) -> str | None:
    cm = _read(apis["core"].read_namespaced_config_map, f"{name}-ca", ns)
    return cm.data["ca.crt"] if cm is not None else None


def _peers_ca(apis, ns: str, name: str) -> str | None:
    cm = _read(apis["core"].read_namespaced_config_map, f"{name}-replication", ns)
    return (cm.data or {}).get("peers-ca.crt") if cm is not None else None


def _node(apis, ns: str, name: str):
    sts = _read(apis["apps"].read_namespaced_stateful_set, name, ns)
    return (sts, sts.spec.template.spec.containers[0]) if sts is not None else (None, None)


def test_members_trust_each_other_for_replication_and_may_hold_leases(operator_runner, apis, k8s_client,
                                                                      namespace, other_namespace):
    ns_a, ns_b = namespace, other_namespace
    _shardset(apis, ns_a, "src")
    _shardset(apis, ns_b, "mir")
    _shardset(apis, ns_a, "alone")
    wait_for(lambda: _ca(apis, ns_a, "src") and _ca(apis, ns_b, "mir") and _node(apis, ns_a, "alone")[0]
             and _node(apis, ns_a, "src")[0], what="the members' CAs and the StatefulSets")
    before = {"src": _node(apis, ns_a, "src")[0].spec.template.spec.to_dict()}
    assert "replicaIdentities" not in _security(apis, ns_a, "src")
    _mirrorset(apis, ns_a, "orders", "src", "mir", ns_b)

    # security.json: each member lists the other's pod identity (and only it).
    wait_for(lambda: (_security(apis, ns_a, "src") or {}).get("replicaIdentities")
             == [f"chronoshard:shardset:{ns_b}:mir"], what="src's replicaIdentities")
    wait_for(lambda: (_security(apis, ns_b, "mir") or {}).get("replicaIdentities")
             == [f"chronoshard:shardset:{ns_a}:src"], what="mir's replicaIdentities")

    # peers-ca.crt: the other member's public CA, never a private key.
    ca_src, ca_mir = _ca(apis, ns_a, "src"), _ca(apis, ns_b, "mir")
    assert ca_src != ca_mir
    assert wait_for(lambda: _peers_ca(apis, ns_a, "src") == ca_mir, what="src's peers-ca.crt")
    assert wait_for(lambda: _peers_ca(apis, ns_b, "mir") == ca_src, what="mir's peers-ca.crt")
    repl = apis["core"].read_namespaced_config_map("src-replication", ns_a)
    assert set(repl.data) == {"peers-ca.crt"} and "PRIVATE KEY" not in repl.data["peers-ca.crt"]
    src_uid = apis["custom"].get_namespaced_custom_object(GROUP, VERSION, ns_a, "shardsets", "src")["metadata"]["uid"]
    assert repl.metadata.owner_references[0].uid == src_uid

    # The node container: --replication-dir and the optional ConfigMap volume mounted there.
    def node_has_replication() -> Any:
        sts, node = _node(apis, ns_a, "src")
        return sts if node is not None and "--replication-dir" in node.command else None

    sts = wait_for(node_has_replication, what="src's node with --replication-dir")
    node = sts.spec.template.spec.containers[0]
    assert node.command[node.command.index("--replication-dir") + 1] == "/etc/chronoshard/replication"
    mount = next(m for m in node.volume_mounts if m.name == "replication")
    assert (mount.mount_path, mount.read_only) == ("/etc/chronoshard/replication", True)
    volume = next(v for v in sts.spec.template.spec.volumes if v.name == "replication")
    assert (volume.config_map.name, volume.config_map.optional) == ("src-replication", True)
    # Nothing else in the pod changed.
    after = sts.spec.template.spec.to_dict()
    after["containers"][0]["command"] = [a for a in after["containers"][0]["command"]
                                         if a not in ("--replication-dir", "/etc/chronoshard/replication")]
    after["containers"][0]["volume_mounts"] = [m for m in after["containers"][0]["volume_mounts"]
                                               if m["name"] != "replication"]
    after["volumes"] = [v for v in after["volumes"] if v["name"] != "replication"]
    assert after == before["src"]

    # The Lease Role and its binding to the pods' ServiceAccount, in each member's namespace.
    rbac = client.RbacAuthorizationV1Api(k8s_client)
    for ns, name in ((ns_a, "src"), (ns_b, "mir")):
        role = wait_for(lambda ns=ns, name=name: _read(rbac.read_namespaced_role, f"{name}-lease", ns),
                        what=f"{name}'s Lease Role")
        assert [(r.api_groups, r.resources, sorted(r.verbs)) for r in role.rules] == [
            (["coordination.k8s.io"], ["leases"], ["create", "get", "patch", "update"])]
        binding = wait_for(lambda ns=ns, name=name: _read(rbac.read_namespaced_role_binding, f"{name}-lease", ns),
                           what=f"{name}'s Lease RoleBinding")
        assert (binding.role_ref.kind, binding.role_ref.name) == ("Role", f"{name}-lease")
        assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [
            ("ServiceAccount", f"{name}-shard", ns)]

    # The NetworkPolicy lets the other member's pods reach the node port (whichever member is primary).
    net = client.NetworkingV1Api(k8s_client)

    def peer_rule() -> Any:
        rules = net.read_namespaced_network_policy("src", ns_a).spec.ingress
        return next((r for r in rules if any(p.namespace_selector for p in r._from or [])
                     and any((p.pod_selector.match_labels or {}).get("app.kubernetes.io/instance") == "mir"
                             for p in r._from if p.pod_selector)), None)

    rule = wait_for(peer_rule, what="src's NetworkPolicy admitting mir's pods")
    assert [p.port for p in rule.ports] == [7400]
    assert rule._from[0].namespace_selector.match_labels == {"kubernetes.io/metadata.name": ns_b}

    # The pods' ServiceAccount may now hold a Lease in its namespace, and nothing more.
    authz = client.AuthorizationV1Api(k8s_client)

    def allowed(verb: str, resource: str, group: str) -> bool:
        review = authz.create_subject_access_review(client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
            user=f"system:serviceaccount:{ns_a}:src-shard",
            resource_attributes=client.V1ResourceAttributes(namespace=ns_a, verb=verb, resource=resource,
                                                            group=group))))
        return bool(review.status.allowed)

    assert all(allowed(v, "leases", "coordination.k8s.io") for v in ("get", "create", "update", "patch"))
    assert not allowed("delete", "leases", "coordination.k8s.io")
    assert not allowed("get", "secrets", "")

    # A member's new CA reaches the other member's peers-ca.crt.
    apis["core"].delete_namespaced_secret("mir-ca", ns_b)
    new_ca = wait_for(lambda: (c := _ca(apis, ns_b, "mir")) != ca_mir and c, what="mir's new CA")
    wait_for(lambda: _peers_ca(apis, ns_a, "src") == new_ca, what="src's peers-ca.crt with mir's new CA")

    # The ShardSet in no MirrorSet keeps today's pods and security.json.
    _, alone = _node(apis, ns_a, "alone")
    assert "--replication-dir" not in alone.command
    assert "replicaIdentities" not in _security(apis, ns_a, "alone")
    assert _read(apis["core"].read_namespaced_config_map, "alone-replication", ns_a) is None
    assert _read(rbac.read_namespaced_role, "alone-lease", ns_a) is None
    assert len(net.read_namespaced_network_policy("alone", ns_a).spec.ingress) == 2  # own pods, clients


def _degraded_reasons(apis, ns: str, name: str) -> dict[str, str]:
    st = apis["custom"].get_namespaced_custom_object(GROUP, VERSION, ns, "shardsets", name).get("status") or {}
    return {c["reason"]: c["message"] for c in st.get("conditions") or []
            if c["type"] == "Degraded" and c["status"] == "True"}


def test_a_second_mirrorset_is_reported_and_leaving_removes_every_replication_child(operator_runner, apis,
                                                                                    k8s_client, namespace):
    ns = namespace
    rbac = client.RbacAuthorizationV1Api(k8s_client)
    for name in ("src", "mir", "other"):
        _shardset(apis, ns, name, shards=1)
    _mirrorset(apis, ns, "first", "src", "mir", ns)
    wait_for(lambda: _read(rbac.read_namespaced_role_binding, "src-lease", ns), what="src's Lease RoleBinding")
    _mirrorset(apis, ns, "second", "other", "src", ns)

    conflict = wait_for(lambda: _degraded_reasons(apis, ns, "src").get("MirrorSetConflict"),
                        what="src reporting the second MirrorSet")
    assert f"{ns}/second" in conflict and f"{ns}/first" in conflict
    # The oldest one is in force: src's peer is still mir, not other.
    assert _security(apis, ns, "src")["replicaIdentities"] == [f"chronoshard:shardset:{ns}:mir"]

    apis["custom"].delete_namespaced_custom_object(GROUP, VERSION, ns, "mirrorsets", "first")
    apis["custom"].delete_namespaced_custom_object(GROUP, VERSION, ns, "mirrorsets", "second")

    def left() -> bool:
        sts, node = _node(apis, ns, "src")
        return (node is not None and "--replication-dir" not in node.command
                and "replicaIdentities" not in (_security(apis, ns, "src") or {})
                and _read(apis["core"].read_namespaced_config_map, "src-replication", ns) is None
                and _read(rbac.read_namespaced_role, "src-lease", ns) is None
                and _read(rbac.read_namespaced_role_binding, "src-lease", ns) is None
                and len(client.NetworkingV1Api(k8s_client).read_namespaced_network_policy("src", ns).spec.ingress)
                == 2)  # own pods and the operator, clients: no member's pods any more

    wait_for(left, what="src back to a ShardSet in no MirrorSet")
    sts, _ = _node(apis, ns, "src")
    assert "replication" not in {v.name for v in sts.spec.template.spec.volumes}
    wait_for(lambda: "MirrorSetConflict" not in _degraded_reasons(apis, ns, "src"), what="the conflict cleared")
