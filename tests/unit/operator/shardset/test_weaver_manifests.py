"""The weaver container and weave.json in the ShardSet's manifests (pure), built like the shadow's."""

import json

from chronoshard.operator.shardset import manifests
from chronoshard.operator.spec.shadowpolicy import parse_shadowpolicy
from chronoshard.operator.spec.shardset import parse_shardset
from chronoshard.operator.spec.weaveplan import parse_weaveplan
from chronoshard.operator.weaveselect import WeaveSelection

OWNER = {"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShardSet",
         "metadata": {"name": "orders", "namespace": "shop", "uid": "1234-uid"}}


def plan(**spec):
    return WeaveSelection("growth", parse_weaveplan({"shardSetRef": {"name": "orders"}, **spec}))


def pod_spec(shadow=None, weave=None, **spec):
    return manifests.statefulset(OWNER, parse_shardset({"shards": 2, **spec}), shadow,
                                 weave=weave)["spec"]["template"]["spec"]


def by_name(items):
    return {i["name"]: i for i in items}


def test_no_plan_no_weaver_and_no_weave_json():
    assert "weaver" not in by_name(pod_spec()["containers"])
    assert "weave.json" not in manifests.config_map(OWNER, parse_shardset({"shards": 2}))["data"]
    assert "weaver" not in by_name(pod_spec(weave=WeaveSelection())["containers"])


def test_plan_adds_the_weaver_with_the_shadows_mounts_identity_and_probes():
    shadow = parse_shadowpolicy({"shardSetRef": {"name": "orders"}})
    containers = by_name(pod_spec(shadow, plan())["containers"])
    assert list(containers) == ["node", "cache", "predictor", "shadow", "weaver"]
    weaver, sh = containers["weaver"], containers["shadow"]
    assert weaver["image"] == sh["image"] and weaver["env"] == sh["env"]
    assert weaver["ports"] == [{"name": "weaver", "containerPort": 7404, "protocol": "TCP"}]
    cmd = weaver["command"]
    assert cmd[0] == "chronoshard-weaver"
    flags = dict(zip(cmd[1::2], cmd[2::2], strict=True))
    assert flags == {
        "--host": "$(POD_IP)", "--port": "7404", "--node-url": "https://$(POD_IP):7400",
        "--data-dir": "/var/lib/chronoshard", "--keyring-dir": "/etc/chronoshard/keyring",
        "--kek-dir": "/etc/chronoshard/kek", "--partition-map": "/etc/chronoshard/partitions/map.json",
        "--settings": "/etc/chronoshard/config/weave.json", "--tls-dir": "/etc/chronoshard/tls",
        "--security-config": "/etc/chronoshard/config/security.json",
    }
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert weaver[probe]["httpGet"]["port"] == "weaver"
        assert {k: v for k, v in weaver[probe].items() if k != "httpGet"} == {
            k: v for k, v in sh[probe].items() if k != "httpGet"}
    assert weaver["securityContext"] == sh["securityContext"]
    # The shadow's mounts (the shard volume for shadow.sqlite3 and weave.sqlite3 among them).
    assert weaver["volumeMounts"] == sh["volumeMounts"]


def test_weaver_without_a_shadow_policy_still_runs_and_forecasts():
    containers = by_name(pod_spec(None, plan())["containers"])
    assert list(containers) == ["node", "cache", "predictor", "weaver"]


def test_weaver_of_an_unwrapped_keyring_gets_no_kek():
    weaver = by_name(pod_spec(None, plan(), keyEncryption={"provider": "none"})["containers"])["weaver"]
    assert "--kek-dir" not in weaver["command"]
    assert "kek" not in by_name(weaver["volumeMounts"])


def test_config_map_carries_the_plans_weave_json():
    cm = manifests.config_map(OWNER, parse_shardset({"shards": 2}),
                              weave=plan(mode="split", interval="10m", sampleInterval="15s",
                                         split={"sizeThreshold": "1Mi", "minPartitionSize": "64Ki"}))
    doc = json.loads(cm["data"]["weave.json"])
    assert doc == {
        "plan": "shop/growth", "mode": "split", "predictionWindowSeconds": 86400, "confidenceThreshold": 0.75,
        "split": {"sizeBytes": 2**20, "loadRps": 1000, "sustainedSeconds": 600, "minPartitionBytes": 65536},
        "intervalSeconds": 600, "sampleIntervalSeconds": 15, "model": "auto",
        "retention": {"maxSnapshots": 10, "maxAgeSeconds": 604800},
    }


def test_the_weaver_port_is_served_and_open_to_clients():
    service_ports = {p["name"]: p["port"] for p in manifests.headless_service(OWNER)["spec"]["ports"]}
    assert service_ports["weaver"] == 7404
    spec = parse_shardset({"shards": 2, "access": {"clients": [{"podSelector": {"matchLabels": {"app": "x"}}}]}})
    policy = manifests.network_policy(OWNER, spec, {"podSelector": {}})
    ports = [sorted(p["port"] for p in rule["ports"]) for rule in policy["spec"]["ingress"]]
    assert [7400, 7401, 7402, 7403, 7404] in ports and [7401, 7403, 7404] in ports
