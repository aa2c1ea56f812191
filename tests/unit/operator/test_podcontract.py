"""The pod contract agrees with the CRD's container names and with the manifests built from it."""

import json

from chronoshard.operator import podcontract
from chronoshard.operator.shardset import manifests
from chronoshard.operator.spec.shadowpolicy import parse_shadowpolicy
from chronoshard.operator.spec.shardset import CONTAINERS, parse_shardset
from chronoshard.operator.spec.weaveplan import parse_weaveplan
from chronoshard.operator.weaveselect import WeaveSelection

OWNER = {"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShardSet",
         "metadata": {"name": "orders", "namespace": "shop", "uid": "u-1"}}


def test_the_crd_resources_name_the_pod_containers():
    assert CONTAINERS == podcontract.CONTAINERS


def test_every_container_listens_on_its_contract_port():
    shadow = parse_shadowpolicy({"shardSetRef": {"name": "orders"}})
    weave = WeaveSelection("growth", parse_weaveplan({"shardSetRef": {"name": "orders"}}))
    containers = manifests.containers(parse_shardset({"shards": 1}), shadow, weave=weave)
    assert {c["name"]: c["ports"][0]["containerPort"] for c in containers} == podcontract.PORTS
    assert podcontract.PORTS[podcontract.SHADOW] == 7403
    assert podcontract.PORTS[podcontract.WEAVER] == 7404


def test_the_config_map_carries_one_file_per_process():
    cm = manifests.config_map(OWNER, parse_shardset({"shards": 1}))
    assert set(cm["data"]) == {podcontract.NODE_CONFIG_FILE, podcontract.CACHE_CONFIG_FILE,
                               podcontract.PREDICTOR_CONFIG_FILE, podcontract.SECURITY_CONFIG_FILE}


def test_shadow_config_of_the_default_policy_is_the_contracts_shadow_json():
    policy = parse_shadowpolicy({"shardSetRef": {"name": "orders"}})
    # Exactly the document of the contract between operator and shadow process (docs/shadow.md).
    assert podcontract.shadow_config(policy, "shop") == json.loads("""
        {"consumer": "shadow", "tables": null,
         "snapshot": {"intervalSeconds": 60, "granularity": "differential", "fullEvery": 10},
         "compression": {"codec": "zstd", "level": 3, "dictionary": true},
         "retention": {"hotSeconds": 86400, "warmSeconds": 604800, "coldSeconds": 2592000},
         "cold": null,
         "reversion": {"mode": "confirm", "maxBlocks": null},
         "anomaly": {"model": "isolation-forest", "threshold": 0.8, "severityThreshold": 0.5,
                     "trainingWindowSeconds": 86400.0, "intervalSeconds": 60.0}}""")


def test_shadow_config_carries_every_field_of_the_policy():
    policy = parse_shadowpolicy({
        "shardSetRef": {"name": "orders"}, "tables": ["a", "b"],
        "snapshot": {"interval": "1.5s", "granularity": "full", "fullEvery": 3},
        "compression": {"codec": "none", "level": 9, "dictionary": False},
        "retention": {"hot": "90m", "warm": "2h", "cold": "3h"},
        "coldStorage": {"endpoint": "http://seaweedfs:8333", "bucket": "backups", "prefix": "prod/eu",
                        "region": "eu-west-1", "forcePathStyle": False, "credentialsSecret": {"name": "creds"}},
        "reversion": {"mode": "auto", "maxBlocks": 500},
        "anomaly": {"model": "zscore", "threshold": 0.7, "severityThreshold": 0.25, "trainingWindow": "2h",
                    "interval": "30s"}})
    config = podcontract.shadow_config(policy, "shop")
    assert config["tables"] == ["a", "b"]
    assert config["snapshot"] == {"intervalSeconds": 1.5, "granularity": "full", "fullEvery": 3}
    assert config["compression"] == {"codec": "none", "level": 9, "dictionary": False}
    assert config["retention"] == {"hotSeconds": 5400, "warmSeconds": 7200, "coldSeconds": 10800}
    # The prefix stops at the ShardSet: each shadow appends its own shard ordinal.
    assert config["cold"] == {"endpoint": "http://seaweedfs:8333", "bucket": "backups",
                              "prefix": "prod/eu/shop/orders", "region": "eu-west-1", "forcePathStyle": False,
                              "credentialsDir": "/etc/chronoshard/objectstore"}
    assert config["reversion"] == {"mode": "auto", "maxBlocks": 500}
    assert config["anomaly"] == {"model": "zscore", "threshold": 0.7, "severityThreshold": 0.25,
                                 "trainingWindowSeconds": 7200.0, "intervalSeconds": 30.0}
    # Credentials are only ever a mounted directory, never in the settings file.
    assert "creds" not in json.dumps(config)


def test_bootstrap_config_points_at_the_sources_objects():
    spec = parse_shardset({"shards": 2, "tables": [{"name": "orders"}], "bootstrap": {"fromShadow": {
        "coldStorage": {"endpoint": "http://seaweedfs:8333", "bucket": "backups",
                        "credentialsSecret": {"name": "creds"}},
        "source": {"name": "orders-old"}, "pointInTime": "2026-12-01T11:30:00+01:00",
        "keyringSecret": {"name": "k"}}}})
    assert spec.from_shadow is not None
    assert podcontract.bootstrap_config("shop", spec, spec.from_shadow) == {
        "source": {"namespace": "shop", "name": "orders-old"},
        "pointInTime": "2026-12-01T10:30:00Z",
        "tables": ["orders"],
        "cold": {"endpoint": "http://seaweedfs:8333", "bucket": "backups", "prefix": "shop/orders-old",
                 "region": "us-east-1", "forcePathStyle": True, "credentialsDir": "/etc/chronoshard/objectstore"},
    }


def test_the_shadow_and_the_bootstrap_accept_what_the_operator_writes():
    # The other side of the contract: the shadow process's and the bootstrap's own strict parsers.
    from chronoshard.shardnode.shadow.bootstrap import parse_bootstrap
    from chronoshard.shardnode.shadow.config import parse_settings

    policy = parse_shadowpolicy({
        "shardSetRef": {"name": "orders"}, "tables": ["a"], "snapshot": {"fullEvery": 3},
        "compression": {"level": 7, "dictionary": False},
        "coldStorage": {"endpoint": "http://seaweedfs:8333", "bucket": "backups", "prefix": "prod",
                        "credentialsSecret": {"name": "creds"}},
        "reversion": {"mode": "auto", "maxBlocks": 50}})
    settings = parse_settings(json.loads(json.dumps(podcontract.shadow_config(policy, "shop"))))
    assert settings.tables == ("a",)
    assert settings.cold is not None and settings.cold.prefix == "prod/shop/orders"
    assert settings.cold.credentials_dir == podcontract.OBJECTSTORE_MOUNT
    assert parse_settings(podcontract.shadow_config(parse_shadowpolicy({"shardSetRef": {"name": "o"}}))).cold is None

    spec = parse_shardset({"shards": 2, "bootstrap": {"fromShadow": {
        "coldStorage": {"endpoint": "http://seaweedfs:8333", "bucket": "backups", "prefix": "prod",
                        "credentialsSecret": {"name": "creds"}},
        "source": {"name": "orders"}, "pointInTime": "2026-12-01T10:00:00Z", "keyringSecret": {"name": "k"}}}})
    assert spec.from_shadow is not None
    doc = json.loads(json.dumps(podcontract.bootstrap_config("shop", spec, spec.from_shadow)))
    boot = parse_bootstrap(doc, "orders-1")
    assert (boot.shard, boot.object_prefix()) == (1, "prod/shop/orders/1")
