"""A MirrorSet member's pods: replicaIdentities in security.json, the node's replication directory, the peers'
CA ConfigMap and the Lease Role; a ShardSet in no MirrorSet gets none of it."""

import json

from chronoshard.operator.shardset import manifests
from chronoshard.operator.spec.shardset import parse_shardset

OWNER = {
    "apiVersion": "chronoshard.io/v1alpha1",
    "kind": "ShardSet",
    "metadata": {"name": "orders", "namespace": "shop", "uid": "1234-uid"},
}
SPEC = parse_shardset({"shards": 2})
PEERS = ("chronoshard:shardset:west:orders-b",)


def _pod(replication):
    return manifests.statefulset(OWNER, SPEC, replication=replication)["spec"]["template"]["spec"]


def test_member_node_gets_the_replication_dir_and_the_optional_configmap_volume():
    pod = _pod(True)
    node, cache, predictor = pod["containers"]
    cmd = node["command"]
    assert cmd[cmd.index("--replication-dir") + 1] == "/etc/chronoshard/replication"
    mount = next(m for m in node["volumeMounts"] if m["name"] == "replication")
    assert mount == {"name": "replication", "mountPath": "/etc/chronoshard/replication", "readOnly": True}
    volume = next(v for v in pod["volumes"] if v["name"] == "replication")
    assert volume == {"name": "replication", "configMap": {"name": "orders-replication", "optional": True}}
    # Only the node serves the replication routes: the other containers trust their own CA only.
    for c in (cache, predictor):
        assert "--replication-dir" not in c["command"]
        assert "replication" not in {m["name"] for m in c["volumeMounts"]}


def test_a_shardset_in_no_mirrorset_has_exactly_todays_pod():
    assert _pod(False) == manifests.statefulset(OWNER, SPEC)["spec"]["template"]["spec"]
    pod = _pod(False)
    assert "replication" not in {v["name"] for v in pod["volumes"]}
    assert "--replication-dir" not in pod["containers"][0]["command"]


def test_a_mirror_with_a_zone_is_required_to_run_there():
    pod = manifests.statefulset(OWNER, SPEC, replication=True, zone="zone-b")["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In",
                                            "values": ["zone-b"]}]}]
    assert "affinity" not in _pod(True)


def test_security_json_lists_replica_identities_only_for_a_member():
    member = json.loads(manifests.config_map(OWNER, SPEC, replica_identities=PEERS)["data"]["security.json"])
    assert member["replicaIdentities"] == list(PEERS)
    assert member["podIdentity"] == "chronoshard:shardset:shop:orders"
    alone = json.loads(manifests.config_map(OWNER, SPEC)["data"]["security.json"])
    assert "replicaIdentities" not in alone
    assert {k: v for k, v in member.items() if k != "replicaIdentities"} == alone
    with_ops = json.loads(manifests.config_map(OWNER, SPEC, operator_identities=("op",),
                                               replica_identities=PEERS)["data"]["security.json"])
    assert (with_ops["operatorIdentities"], with_ops["replicaIdentities"]) == (["op"], list(PEERS))


def test_replication_configmap_is_owned_and_holds_the_peers_cas():
    cm = manifests.replication_config_map(OWNER, "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n")
    assert cm["metadata"]["name"] == "orders-replication" and cm["metadata"]["namespace"] == "shop"
    assert cm["metadata"]["ownerReferences"][0]["uid"] == "1234-uid"
    assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "chronoshard-operator"
    assert list(cm["data"]) == ["peers-ca.crt"]


def test_lease_role_allows_only_leases_and_binds_the_pods_service_account():
    role, binding = manifests.lease_role(OWNER), manifests.lease_role_binding(OWNER)
    assert role["metadata"]["name"] == binding["metadata"]["name"] == "orders-lease"
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "create", "update", "patch"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "orders-lease"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "orders-shard", "namespace": "shop"}]
    for obj in (role, binding):
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "1234-uid"


def test_network_policy_lets_the_other_members_pods_reach_the_node_port_only():
    operator_peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "chronoshard-system"}}}
    alone = manifests.network_policy(OWNER, SPEC, operator_peer)
    member = manifests.network_policy(OWNER, SPEC, operator_peer, [("west", "orders-b"), ("shop", "orders-c")])
    assert member["spec"]["ingress"][:-1] == alone["spec"]["ingress"]
    peers = member["spec"]["ingress"][-1]
    assert peers["ports"] == [{"port": 7400, "protocol": "TCP"}]
    assert peers["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "chronoshard", "app.kubernetes.io/instance": name,
                                         "app.kubernetes.io/component": "shard"}}}
        for ns, name in (("west", "orders-b"), ("shop", "orders-c"))]
