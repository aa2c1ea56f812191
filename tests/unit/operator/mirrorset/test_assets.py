"""Keys in step (pure parts): which Secrets hold a member's keys, and the patch that copies data into one."""

from chronoshard.operator.mirrorset.assets import KeySecrets, data_patch, key_secrets
from chronoshard.operator.spec.shardset import parse_shardset


def test_key_secrets_follow_the_shardsets_key_encryption():
    assert key_secrets("b", parse_shardset({"shards": 1})) == KeySecrets("b-keyring", "b-kek")
    assert key_secrets("b", parse_shardset({"shards": 1, "keyEncryption": {"provider": "none"}})) == KeySecrets(
        "b-keyring", None)
    assert key_secrets("b", parse_shardset({"shards": 1, "keyEncryption": {"kekSecretRef": {"name": "mine"}}})
                       ) == KeySecrets("b-keyring", "mine", user_kek=True)


def test_data_patch_replaces_the_data_under_the_targets_resource_version_and_keeps_its_metadata():
    target = {"metadata": {"name": "b-keyring", "resourceVersion": "7", "ownerReferences": [{"uid": "b"}],
                           "annotations": {"chronoshard.io/rotation-lock": "x"}},
              "data": {"keyring.json": "b2xk", "v1": "b2xk", "v9.wrapped": "b2xk"}}
    source = {"keyring.json": "bmV3", "v1.wrapped": "bmV3"}
    patch = data_patch(source, target)
    assert patch == {"metadata": {"resourceVersion": "7"},
                     "data": {"v1": None, "v9.wrapped": None, "keyring.json": "bmV3", "v1.wrapped": "bmV3"}}
    assert data_patch(source, {**target, "data": dict(source)}) is None
    assert data_patch(source, {"metadata": {"resourceVersion": "1"}})["data"] == source
