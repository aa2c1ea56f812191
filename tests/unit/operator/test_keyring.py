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


KEK = bytes(range(32))


def _unwrap(data, version, kek=KEK):
    from chronoshard.shardnode.keys.provider import unwrap_key

    return unwrap_key(kek, base64.b64decode(data[f"v{version}.wrapped"]), version)


def test_initial_keyring_with_a_kek_holds_v1_wrapped_that_unwraps_to_32_bytes():
    from chronoshard.operator.keyring import wrapped_versions

    a, b = initial_keyring_data("AES-256-GCM", kek=KEK), initial_keyring_data("AES-256-GCM", kek=KEK)
    assert set(a) == {"keyring.json", "v1.wrapped"}
    key = _unwrap(a, 1)
    assert len(key) == 32 and key != _unwrap(b, 1)
    assert key not in base64.b64decode(a["v1.wrapped"]), "the blob does not carry the key in the clear"
    assert parse_manifest(a).primary == 1 and wrapped_versions(a) == (1,)
    from chronoshard.shardnode.keys.provider import KeyUnavailable

    with pytest.raises(KeyUnavailable):
        _unwrap(a, 1, kek=bytes(32))


def test_each_version_has_exactly_one_material_file():
    data = initial_keyring_data("AES-256-GCM", kek=KEK)
    both = {**data, "v1.key": base64.b64encode(bytes(32)).decode()}
    with pytest.raises(ValueError, match=r"versions \[1\] have both"):
        parse_manifest(both)
    neither = {k: v for k, v in data.items() if k != "v1.wrapped"}
    with pytest.raises(ValueError, match="without key material"):
        parse_manifest(neither)


def test_add_version_takes_the_primarys_form():
    from chronoshard.operator.keyring import add_version, promote, retire, wrapped_versions

    wrapped = add_version(initial_keyring_data("AES-256-GCM", kek=KEK), 2, now="t", kek=KEK)
    assert "v2.wrapped" in wrapped and "v2.key" not in wrapped
    assert len(_unwrap(wrapped, 2)) == 32 and _unwrap(wrapped, 2) != _unwrap(wrapped, 1)
    assert wrapped_versions(wrapped) == (1, 2)
    assert add_version(wrapped, 2, now="t", kek=KEK) == wrapped, "idempotent"
    # Without the KEK a wrapped keyring cannot grow (the error names the version, never bytes).
    with pytest.raises(ValueError, match="version 3 needs the key-encryption key") as err:
        add_version(wrapped, 3, now="t")
    assert KEK.hex() not in str(err.value)

    raw = add_version(initial_keyring_data("AES-256-GCM"), 2, now="t", kek=KEK)
    assert "v2.key" in raw and "v2.wrapped" not in raw, "a raw keyring stays raw even when a KEK is at hand"
    assert len(base64.b64decode(raw["v2.key"])) == 32

    # Retire removes whichever material file the version has.
    d = retire(promote(wrapped, 2), 1)
    assert set(d) == {"keyring.json", "v2.wrapped"} and _versions(d) == [(2, "primary", False)]
    stray = {**d, "v9.wrapped": "eA=="}
    assert "v9.wrapped" not in retire(stray, 9)
    with pytest.raises(ValueError, match="already exists"):
        add_version(stray, 9, kek=KEK)


def test_kek_secret_data_and_its_errors_carry_no_bytes():
    from chronoshard.operator.keyring import new_kek_data, parse_kek

    a, b = new_kek_data(), new_kek_data()
    assert set(a) == {"kek.key"} and a != b
    assert len(parse_kek(a, "orders-kek")) == 32
    short = base64.b64encode(b"secret-bytes-16!").decode()
    for data, msg in (({}, "has no kek.key"), (None, "has no kek.key"), ({"kek.key": "!!notb64"}, "not valid base64"),
                      ({"kek.key": short}, "holds 16 bytes, expected 32")):
        with pytest.raises(ValueError, match=msg) as err:
            parse_kek(data, "mine")
        assert "mine" in str(err.value) and "secret-bytes" not in str(err.value) and short not in str(err.value)


def test_versions_not_unwrapping_finds_a_foreign_kek():
    from chronoshard.operator.keyring import add_version, versions_not_unwrapping

    data = add_version(initial_keyring_data("AES-256-GCM", kek=KEK), 2, kek=KEK)
    assert versions_not_unwrapping(data, KEK) == []
    assert versions_not_unwrapping(data, bytes(32)) == [1, 2]
    assert versions_not_unwrapping(initial_keyring_data("AES-256-GCM"), bytes(32)) == []
