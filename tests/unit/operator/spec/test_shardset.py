"""ShardSet spec parsing: the sample, the defaults the controller relies on, and every invalid case."""

import dataclasses

import pytest
from chronoshard.operator.spec import SpecError, parse_shardset
from chronoshard.operator.spec.shardset import KeyEncryption

from tests.support.crdcases import REPO, invalid_cases, sample

# The default image is tagged with the release in the VERSION file.
IMAGE = "ghcr.io/chronoshard/chronoshard:" + (REPO / "VERSION").read_text().strip()


def test_sample_parses_into_the_controller_model():
    spec = parse_shardset(sample("ShardSet")["spec"])
    assert spec.shards == 3
    assert spec.image == IMAGE
    assert spec.image_pull_policy == "IfNotPresent"
    assert spec.tables == ("orders", "customers")
    assert spec.table_descriptions == {"orders": "Order documents."}
    assert spec.key_algorithm == "AES-256-GCM"
    assert spec.storage_size == "2Gi"
    assert spec.storage_class is None
    assert (spec.cache_size, spec.cache_size_bytes, spec.eviction_policy) == ("256Mi", 256 * 2**20, "scored")
    assert spec.resources["node"] == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
    assert spec.resources["predictor"] == {"requests": {"cpu": "50m", "memory": "128Mi"}}
    assert spec.pod_template == {"labels": {"team": "payments"}}
    assert spec.pdb_max_unavailable == 1


def test_minimal_spec_gets_the_schema_defaults():
    spec = parse_shardset({"shards": 1})
    assert spec.image == IMAGE
    assert spec.tables == ("default",)
    assert (spec.storage_size, spec.storage_class) == ("1Gi", None)
    assert (spec.cache_size, spec.cache_size_bytes) == ("256Mi", 256 * 2**20)
    assert spec.resources == {"node": {}, "cache": {}, "predictor": {}, "shadow": {}}
    assert spec.pod_template == {}
    assert spec.pdb_max_unavailable == 1


def test_pod_template_and_storage_class_are_kept_in_kubernetes_shape():
    spec = parse_shardset({
        "shards": 2,
        "storage": {"size": 10 * 2**30, "storageClassName": "fast"},
        "podTemplate": {
            "annotations": {"a": "b"},
            "nodeSelector": {"disk": "ssd"},
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "high",
        },
    })
    assert (spec.storage_size, spec.storage_class) == (10 * 2**30, "fast")
    assert spec.pod_template == {
        "annotations": {"a": "b"},
        "nodeSelector": {"disk": "ssd"},
        "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "high",
    }


def test_model_is_frozen():
    spec = parse_shardset({"shards": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.shards = 2  # type: ignore[misc]


@pytest.mark.parametrize("case", invalid_cases("ShardSet"), ids=lambda c: c.id)
def test_invalid_case_is_refused_naming_the_field(case):
    with pytest.raises(SpecError) as err:
        parse_shardset(case.obj.get("spec"))
    assert case.field in str(err.value)


def test_there_are_at_least_three_invalid_cases():
    assert len(invalid_cases("ShardSet")) >= 3


def test_key_encryption_defaults_to_embedded_with_the_operators_kek():
    assert parse_shardset({"shards": 1}).key_encryption == KeyEncryption(provider="embedded", kek_secret=None)
    assert parse_shardset(sample("ShardSet")["spec"]).key_encryption.wrapped is True


def test_key_encryption_with_own_secret_or_none():
    own = parse_shardset({"shards": 1, "keyEncryption": {"kekSecretRef": {"name": "my-kek.v2"}}}).key_encryption
    assert own == KeyEncryption(provider="embedded", kek_secret="my-kek.v2") and own.wrapped
    raw = parse_shardset({"shards": 1, "keyEncryption": {"provider": "none"}}).key_encryption
    assert raw == KeyEncryption(provider="none") and not raw.wrapped


@pytest.mark.parametrize(("key_encryption", "field"), [
    ({"provider": "kms"}, "spec.keyEncryption.provider"),
    ({"provider": "none", "kekSecretRef": {"name": "k"}}, "spec.keyEncryption.kekSecretRef"),
    ({"kekSecretRef": {}}, "spec.keyEncryption.kekSecretRef.name"),
    ({"kekSecretRef": {"name": "Bad_Name"}}, "spec.keyEncryption.kekSecretRef.name"),
    ({"kekSecretRef": {"name": "k", "key": "kek.key"}}, "spec.keyEncryption.kekSecretRef.key"),
    ({"wrap": True}, "spec.keyEncryption.wrap"),
    ("embedded", "spec.keyEncryption"),
])
def test_bad_key_encryption_is_refused_naming_the_field(key_encryption, field):
    with pytest.raises(SpecError) as err:
        parse_shardset({"shards": 1, "keyEncryption": key_encryption})
    assert err.value.field_path == field


def test_tls_and_access_defaults():
    spec = parse_shardset({"shards": 1})
    assert spec.issuer_ref is None
    assert spec.access.clients == ({"podSelector": {}},)  # every pod of the namespace
    assert spec.access.monitoring == ()
    assert spec.access.accept_kubeconfig_tokens is False


def test_tls_issuer_ref_and_access_peers_are_kept_in_kubernetes_shape():
    spec = parse_shardset({
        "shards": 1,
        "tls": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}},
        "access": {
            "clients": [{"podSelector": {"matchLabels": {"app": "shop"}}},
                        {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In",
                                                                     "values": ["a", "b"]}]},
                         "podSelector": {}}],
            "monitoring": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "acceptKubeconfigTokens": True,
        },
    })
    assert (spec.issuer_ref.name, spec.issuer_ref.kind, spec.issuer_ref.group) == \
        ("corp-ca", "ClusterIssuer", "cert-manager.io")
    assert spec.access.clients == (
        {"podSelector": {"matchLabels": {"app": "shop"}}},
        {"podSelector": {}, "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In",
                                                                        "values": ["a", "b"]}]}})
    assert spec.access.monitoring == ({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name":
                                                                             "monitoring"}}},)
    assert spec.access.accept_kubeconfig_tokens is True
    assert parse_shardset({"shards": 1, "access": {"clients": []}}).access.clients == ()


def test_access_refuses_unknown_selector_fields():
    with pytest.raises(SpecError, match=r"spec\.access\.monitoring\[0\]\.podSelector\.labels"):
        parse_shardset({"shards": 1, "access": {"monitoring": [{"podSelector": {"labels": {}}}]}})


FROM_SHADOW = {
    "coldStorage": {"endpoint": "http://seaweedfs:8333", "bucket": "backups", "prefix": "prod",
                    "credentialsSecret": {"name": "objectstore"}},
    "source": {"namespace": "prod", "name": "orders"},
    "pointInTime": "2026-12-01T10:00:00Z",
    "keyringSecret": {"name": "orders-keyring-copy"},
    "kekSecret": {"name": "orders-kek-copy"},
}


def test_bootstrap_from_shadow_is_parsed():
    spec = parse_shardset({"shards": 2, "bootstrap": {"fromShadow": FROM_SHADOW}})
    fs = spec.from_shadow
    assert fs is not None
    assert (fs.source_namespace, fs.source_name, fs.keyring_secret, fs.kek_secret) == (
        "prod", "orders", "orders-keyring-copy", "orders-kek-copy")
    assert fs.point_in_time is not None and fs.point_in_time.isoformat() == "2026-12-01T10:00:00+00:00"
    assert (fs.cold_storage.bucket, fs.cold_storage.prefix, fs.cold_storage.region) == ("backups", "prod", "us-east-1")


def test_bootstrap_minimal_and_absent():
    minimal = {k: v for k, v in FROM_SHADOW.items() if k in ("coldStorage", "keyringSecret")}
    spec = parse_shardset({"shards": 1, "bootstrap": {"fromShadow": {**minimal, "source": {"name": "orders"}}}})
    assert spec.from_shadow is not None
    assert (spec.from_shadow.source_namespace, spec.from_shadow.point_in_time, spec.from_shadow.kek_secret) == (
        None, None, None)
    assert parse_shardset({"shards": 1}).from_shadow is None
    assert parse_shardset({"shards": 1, "bootstrap": {}}).from_shadow is None


def test_bootstrap_kek_may_equal_kek_secret_ref():
    spec = parse_shardset({"shards": 1, "keyEncryption": {"kekSecretRef": {"name": "orders-kek-copy"}},
                           "bootstrap": {"fromShadow": FROM_SHADOW}})
    assert spec.from_shadow is not None and spec.key_encryption.kek_secret == "orders-kek-copy"


@pytest.mark.parametrize(("change", "field"), [
    ({"source": {}}, "spec.bootstrap.fromShadow.source.name"),
    ({"source": {"name": "Orders"}}, "spec.bootstrap.fromShadow.source.name"),
    ({"keyringSecret": None}, "spec.bootstrap.fromShadow.keyringSecret"),
    ({"coldStorage": None}, "spec.bootstrap.fromShadow.coldStorage"),
    ({"pointInTime": "yesterday"}, "spec.bootstrap.fromShadow.pointInTime"),
    ({"zzz": 1}, "spec.bootstrap.fromShadow.zzz"),
])
def test_bad_bootstrap_is_refused_naming_the_field(change, field):
    with pytest.raises(SpecError) as err:
        parse_shardset({"shards": 1, "bootstrap": {"fromShadow": {**FROM_SHADOW, **change}}})
    assert err.value.field_path == field
