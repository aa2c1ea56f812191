"""The keyring Secret's content."""

import base64
import json

import pytest

from chronoshard.operator.keyring import initial_keyring_data, parse_manifest


def test_initial_keyring_has_one_random_primary_version():
    a, b = initial_keyring_data("AES-256-GCM", now="t"), initial_keyring_data("AES-256-GCM", now="t")
    assert len(base64.b64decode(a["v1.key"])) == 32
    assert a["v1.key"] != b["v1.key"]
    m = parse_manifest(a)
    assert m.primary == 1 and m.generation == 1 and m.algorithm == "AES-256-GCM"
    assert json.loads(base64.b64decode(a["keyring.json"]))["versions"][0]["state"] == "primary"


@pytest.mark.parametrize("data, msg", [
    ({}, "no keyring.json"),
    ({"keyring.json": base64.b64encode(b"{not json").decode()}, "malformed"),
])
def test_bad_manifest(data, msg):
    with pytest.raises(ValueError, match=msg):
        parse_manifest(data)


def test_manifest_without_key_material_or_primary_is_rejected_without_leaking_keys():
    data = initial_keyring_data("AES-256-GCM")
    key = data.pop("v1.key")
    with pytest.raises(ValueError, match="without key material") as err:
        parse_manifest(data)
    assert key not in str(err.value)
    doc = {"format": 1, "generation": 1, "algorithm": "AES-256-GCM", "versions": [{"id": 1, "state": "decrypt-only"}]}
    with pytest.raises(ValueError, match="exactly one primary"):
        parse_manifest({"keyring.json": base64.b64encode(json.dumps(doc).encode()).decode(), "v1.key": key})
