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


def _versions(data):
    return [(v.id, v.state, v.compromised) for v in parse_manifest(data).versions]


def test_rotation_steps_on_secret_data_are_idempotent_and_safe():
    from chronoshard.operator.keyring import add_version, promote, retire

    d0 = initial_keyring_data("AES-256-GCM", now="t")
    d1 = add_version(d0, 2, now="t")
    assert _versions(d1) == [(1, "primary", False), (2, "decrypt-only", False)]
    assert parse_manifest(d1).generation == 2
    assert d1["v1.key"] == d0["v1.key"] and len(base64.b64decode(d1["v2.key"])) == 32
    assert add_version(d1, 2, now="t") == d1, "adding the same version twice changes nothing"
    d2 = promote(d1, 2)
    assert _versions(d2) == [(1, "decrypt-only", False), (2, "primary", False)]
    assert promote(d2, 2) == d2
    with pytest.raises(ValueError, match="it is the primary"):
        retire(d2, 2)
    d3 = retire(d2, 1)
    assert _versions(d3) == [(2, "primary", False)] and "v1.key" not in d3
    assert parse_manifest(d3).generation == 4
    assert retire(d3, 1) == d3


def test_compromise_marks_the_version_in_the_same_update():
    from chronoshard.operator.keyring import add_version

    d1 = add_version(initial_keyring_data("AES-256-GCM"), 2, compromised=(1,))
    assert _versions(d1) == [(1, "primary", True), (2, "decrypt-only", False)]
    doc = json.loads(base64.b64decode(d1["keyring.json"]))
    assert doc["versions"][0]["compromised"] is True
