"""Pure ShardSet manifest builders: spec in, manifests out."""

import json

import pytest
from chronoshard.operator.shardset import manifests
from chronoshard.operator.spec.shardset import parse_shardset

OWNER = {
    "apiVersion": "chronoshard.io/v1alpha1",
    "kind": "ShardSet",
    "metadata": {"name": "orders", "namespace": "shop", "uid": "1234-uid"},
}


def build(**spec):
    return manifests.statefulset(OWNER, parse_shardset({"shards": 3, **spec}))


def test_statefulset_has_one_pod_per_shard_and_the_three_containers():
    sts = build()
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == "orders-headless"
    containers = sts["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["node", "cache", "predictor"]
    assert [c["ports"][0]["containerPort"] for c in containers] == [7400, 7401, 7402]
    for c in containers:
        assert c["command"][0] == f"chronoshard-{c['name']}"
        assert c["command"][1:3] == ["--host", "$(POD_IP)"]
        assert {e["name"] for e in c["env"]} >= {"POD_NAME", "POD_NAMESPACE", "POD_IP"}
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"]["drop"] == ["ALL"]


def test_cache_talks_to_node_at_pod_ip_not_localhost():
    cache = build()["spec"]["template"]["spec"]["containers"][1]
    assert "https://$(POD_IP):7400" in cache["command"]


def test_keyring_is_mounted_read_only_and_volume_claim_is_retained():
    spec = build(storage={"size": "5Gi", "storageClassName": "fast"})["spec"]
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert volumes["keyring"]["secret"]["secretName"] == "orders-keyring"
    node = spec["template"]["spec"]["containers"][0]
    mounts = {m["name"]: m for m in node["volumeMounts"]}
    assert mounts["keyring"]["readOnly"] is True
    claim = spec["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}


def test_selector_is_stable_and_pod_labels_include_user_labels():
    sts = build(podTemplate={"labels": {"team": "a", "app.kubernetes.io/instance": "hijack"}})
    sel = sts["spec"]["selector"]["matchLabels"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in sel.items()), "user labels must not override the selector"
    assert labels["team"] == "a"


def test_resources_default_and_override():
    default = build()["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert default == manifests.DEFAULT_RESOURCES["node"]
    custom = build(resources={"node": {"limits": {"memory": "1Gi"}}})
    assert custom["spec"]["template"]["spec"]["containers"][0]["resources"] == {"limits": {"memory": "1Gi"}}


def test_every_child_is_owned_and_labelled():
    spec = parse_shardset({"shards": 2})
    children = [
        manifests.config_map(OWNER, spec),
        manifests.headless_service(OWNER),
        manifests.client_service(OWNER),
        manifests.pod_disruption_budget(OWNER, spec),
        manifests.statefulset(OWNER, spec),
        manifests.keyring_secret(OWNER, {}),
        manifests.partitions_config_map(OWNER, "{}"),
    ]
    for child in children:
        ref = child["metadata"]["ownerReferences"][0]
        assert ref == {"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShardSet", "name": "orders",
                       "uid": "1234-uid", "controller": True, "blockOwnerDeletion": True}
        assert child["metadata"]["namespace"] == "shop"
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "chronoshard-operator"


def test_config_map_carries_process_settings():
    cm = manifests.config_map(OWNER, parse_shardset({"shards": 1, "cache": {"size": "1Mi", "evictionPolicy": "lru"},
                                                     "tables": [{"name": "a"}, {"name": "b"}]}))
    cache = json.loads(cm["data"]["cache.json"])
    assert cache == {"budgetBytes": 1048576, "evictionPolicy": "lru", "tables": ["a", "b"]}
    assert json.loads(cm["data"]["predictor.json"])["enabled"] is False


def test_headless_service_publishes_not_ready_addresses():
    svc = manifests.headless_service(OWNER)
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True


@pytest.mark.parametrize("max_unavailable", [0, 1, 2])
def test_pdb(max_unavailable):
    pdb = manifests.pod_disruption_budget(OWNER, parse_shardset(
        {"shards": 3, "podDisruptionBudget": {"maxUnavailable": max_unavailable}}))
    assert pdb["spec"]["maxUnavailable"] == max_unavailable


def test_builders_are_deterministic():
    spec = parse_shardset({"shards": 4})
    assert manifests.statefulset(OWNER, spec) == manifests.statefulset(OWNER, spec)


def _pod(**spec):
    return build(**spec)["spec"]["template"]["spec"]


def test_embedded_key_encryption_mounts_the_kek_into_node_and_cache_only():
    for spec, secret in (({}, "orders-kek"),
                         ({"keyEncryption": {"kekSecretRef": {"name": "byo-kek"}}}, "byo-kek")):
        pod = _pod(**spec)
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["kek"] == {"name": "kek", "secret": {"secretName": secret, "defaultMode": 0o440}}
        node, cache, predictor = pod["containers"]
        for c in (node, cache):
            mounts = {m["name"]: m for m in c["volumeMounts"]}
            assert mounts["kek"] == {"name": "kek", "mountPath": "/etc/chronoshard/kek", "readOnly": True}
            i = c["command"].index("--kek-dir")
            assert c["command"][i + 1] == "/etc/chronoshard/kek"
        assert "kek" not in {m["name"] for m in predictor["volumeMounts"]}
        assert "--kek-dir" not in predictor["command"]


def test_provider_none_mounts_no_kek():
    pod = _pod(keyEncryption={"provider": "none"})
    assert "kek" not in {v["name"] for v in pod["volumes"]}
    for c in pod["containers"]:
        assert "kek" not in {m["name"] for m in c["volumeMounts"]}
        assert "--kek-dir" not in c["command"]
    assert manifests.kek_secret_in_use("orders", parse_shardset({"shards": 1, "keyEncryption": {"provider": "none"}}
                                                                )) is None


def test_kek_secret_is_owned_labelled_and_named_after_the_shardset():
    secret = manifests.kek_secret(OWNER, {"kek.key": "eA=="})
    assert secret["metadata"]["name"] == "orders-kek" and secret["metadata"]["namespace"] == "shop"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "1234-uid"
    assert secret["metadata"]["labels"]["app.kubernetes.io/component"] == "kek"
    assert secret["data"] == {"kek.key": "eA=="} and secret["type"] == "Opaque"
