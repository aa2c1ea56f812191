"""The shadow container, shadow.json and the bootstrap init container in the ShardSet's manifests (pure)."""

import json

from chronoshard.operator.shardset import manifests
from chronoshard.operator.spec.shadowpolicy import parse_shadowpolicy
from chronoshard.operator.spec.shardset import parse_shardset

OWNER = {"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShardSet",
         "metadata": {"name": "orders", "namespace": "shop", "uid": "1234-uid"}}
COLD = {"endpoint": "http://seaweedfs:8333", "bucket": "backups", "credentialsSecret": {"name": "shadow-s3"}}
BOOTSTRAP = {"fromShadow": {
    "coldStorage": {**COLD, "credentialsSecret": {"name": "restore-s3"}},
    "source": {"namespace": "prod", "name": "orders"}, "keyringSecret": {"name": "orders-keyring-copy"}}}


def policy(**spec):
    return parse_shadowpolicy({"shardSetRef": {"name": "orders"}, **spec})


def pod_spec(shadow=None, **spec):
    return manifests.statefulset(OWNER, parse_shardset({"shards": 2, **spec}), shadow)["spec"]["template"]["spec"]


def by_name(items):
    return {i["name"]: i for i in items}


def test_no_policy_no_shadow_container_and_no_shadow_json():
    assert [c["name"] for c in pod_spec()["containers"]] == ["node", "cache", "predictor"]
    assert "initContainers" not in pod_spec()
    cm = manifests.config_map(OWNER, parse_shardset({"shards": 2}))
    assert "shadow.json" not in cm["data"] and "bootstrap.json" not in cm["data"]


def test_policy_adds_the_shadow_container_like_the_cache():
    containers = by_name(pod_spec(policy())["containers"])
    assert list(containers) == ["node", "cache", "predictor", "shadow"]
    shadow, cache = containers["shadow"], containers["cache"]
    assert shadow["image"] == cache["image"] and shadow["env"] == cache["env"]
    assert shadow["ports"] == [{"name": "shadow", "containerPort": 7403, "protocol": "TCP"}]
    cmd = shadow["command"]
    assert cmd[0] == "chronoshard-shadow"
    flags = dict(zip(cmd[1::2], cmd[2::2], strict=True))
    assert flags == {
        "--host": "$(POD_IP)", "--port": "7403", "--node-url": "https://$(POD_IP):7400",
        "--data-dir": "/var/lib/chronoshard", "--keyring-dir": "/etc/chronoshard/keyring",
        "--kek-dir": "/etc/chronoshard/kek", "--partition-map": "/etc/chronoshard/partitions/map.json",
        "--settings": "/etc/chronoshard/config/shadow.json", "--tls-dir": "/etc/chronoshard/tls",
        "--security-config": "/etc/chronoshard/config/security.json",
    }
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert shadow[probe]["httpGet"]["port"] == "shadow"
        assert {k: v for k, v in shadow[probe].items() if k != "httpGet"} == {
            k: v for k, v in cache[probe].items() if k != "httpGet"}
    assert shadow["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert shadow["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert shadow["securityContext"] == cache["securityContext"]
    mounts = by_name(shadow["volumeMounts"])
    # The cache's mounts plus the data volume, where the history lives beside the node's blocks.
    assert set(mounts) == {m["name"] for m in cache["volumeMounts"]} | {"data"}
    assert mounts["data"]["mountPath"] == "/var/lib/chronoshard"
    assert all(m.get("readOnly") for n, m in mounts.items() if n not in ("data", "tmp"))


def test_shadow_without_cold_storage_mounts_no_object_store():
    spec = pod_spec(policy())
    assert "objectstore" not in by_name(spec["volumes"])
    assert "objectstore" not in by_name(by_name(spec["containers"])["shadow"]["volumeMounts"])
    assert "--objectstore-dir" not in by_name(spec["containers"])["shadow"]["command"]


def test_cold_storage_mounts_its_secret_into_the_shadow_only_and_optional():
    spec = pod_spec(policy(coldStorage=COLD))
    volume = by_name(spec["volumes"])["objectstore"]
    assert volume["secret"] == {"secretName": "shadow-s3", "defaultMode": 0o440, "optional": True}
    containers = by_name(spec["containers"])
    assert by_name(containers["shadow"]["volumeMounts"])["objectstore"] == {
        "name": "objectstore", "mountPath": "/etc/chronoshard/objectstore", "readOnly": True}
    for other in ("node", "cache", "predictor"):
        assert "objectstore" not in by_name(containers[other]["volumeMounts"])
    # The path is a flag, like every other mount (shadow.json's credentialsDir is only the fallback).
    command = containers["shadow"]["command"]
    assert command[command.index("--objectstore-dir") + 1] == "/etc/chronoshard/objectstore"


def test_provider_none_gives_the_shadow_no_kek():
    shadow = by_name(pod_spec(policy(), keyEncryption={"provider": "none"})["containers"])["shadow"]
    assert "--kek-dir" not in shadow["command"]
    assert "kek" not in by_name(shadow["volumeMounts"])


def test_shadow_resources_default_and_override():
    assert by_name(pod_spec(policy())["containers"])["shadow"]["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"}}
    spec = pod_spec(policy(), resources={"shadow": {"limits": {"memory": "1Gi"}}})
    assert by_name(spec["containers"])["shadow"]["resources"] == {"limits": {"memory": "1Gi"}}


def test_config_map_carries_shadow_json_of_the_policy():
    cm = manifests.config_map(OWNER, parse_shardset({"shards": 2}), shadow=policy(coldStorage=COLD))
    doc = json.loads(cm["data"]["shadow.json"])
    assert doc["consumer"] == "shadow" and doc["cold"]["prefix"] == "shop/orders"
    assert doc["cold"]["credentialsDir"] == "/etc/chronoshard/objectstore"


def test_network_policy_and_headless_service_expose_the_shadow_port():
    service_ports = {p["name"]: p["port"] for p in manifests.headless_service(OWNER)["spec"]["ports"]}
    assert service_ports["shadow"] == 7403


def test_bootstrap_runs_before_the_node_with_its_own_credentials():
    spec = pod_spec(bootstrap=BOOTSTRAP)
    (init,) = spec["initContainers"]
    assert init["name"] == "bootstrap"
    assert init["command"] == [
        "chronoshard-shadow", "bootstrap", "--settings", "/etc/chronoshard/config/bootstrap.json",
        "--data-dir", "/var/lib/chronoshard", "--keyring-dir", "/etc/chronoshard/keyring",
        "--kek-dir", "/etc/chronoshard/kek", "--objectstore-dir", "/etc/chronoshard/objectstore"]
    mounts = by_name(init["volumeMounts"])
    assert mounts["data"]["mountPath"] == "/var/lib/chronoshard" and not mounts["data"].get("readOnly")
    assert mounts["bootstrap-objectstore"]["mountPath"] == "/etc/chronoshard/objectstore"
    # The restore's credentials are not optional (nothing to start without them) and never reach a server.
    assert by_name(spec["volumes"])["bootstrap-objectstore"]["secret"] == {
        "secretName": "restore-s3", "defaultMode": 0o440}
    for c in spec["containers"]:
        assert "bootstrap-objectstore" not in by_name(c["volumeMounts"])
    assert init["securityContext"]["readOnlyRootFilesystem"] is True


def test_bootstrap_and_shadow_together_keep_two_credential_volumes():
    spec = pod_spec(policy(coldStorage=COLD), bootstrap=BOOTSTRAP)
    volumes = by_name(spec["volumes"])
    assert (volumes["objectstore"]["secret"]["secretName"], volumes["bootstrap-objectstore"]["secret"]["secretName"]
            ) == ("shadow-s3", "restore-s3")


def test_config_map_carries_bootstrap_json():
    spec = parse_shardset({"shards": 2, "bootstrap": BOOTSTRAP})
    doc = json.loads(manifests.config_map(OWNER, spec)["data"]["bootstrap.json"])
    assert doc["source"] == {"namespace": "prod", "name": "orders"}
    assert doc["cold"]["prefix"] == "prod/orders" and doc["pointInTime"] is None


def test_builders_are_deterministic_with_a_policy():
    p = policy(coldStorage=COLD)
    assert pod_spec(p, bootstrap=BOOTSTRAP) == pod_spec(p, bootstrap=BOOTSTRAP)
