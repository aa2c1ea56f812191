"""The pod contract agrees with the CRD's container names and with the manifests built from it."""

from chronoshard.operator import podcontract
from chronoshard.operator.shardset import manifests
from chronoshard.operator.spec.shardset import CONTAINERS, parse_shardset

OWNER = {"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShardSet",
         "metadata": {"name": "orders", "namespace": "shop", "uid": "u-1"}}


def test_the_crd_resources_name_the_pod_containers():
    assert CONTAINERS == podcontract.CONTAINERS


def test_every_container_listens_on_its_contract_port():
    containers = manifests.containers(parse_shardset({"shards": 1}))
    assert {c["name"]: c["ports"][0]["containerPort"] for c in containers} == podcontract.PORTS


def test_the_config_map_carries_one_file_per_process():
    cm = manifests.config_map(OWNER, parse_shardset({"shards": 1}))
    assert set(cm["data"]) == {podcontract.NODE_CONFIG_FILE, podcontract.CACHE_CONFIG_FILE,
                               podcontract.PREDICTOR_CONFIG_FILE, podcontract.SECURITY_CONFIG_FILE}
