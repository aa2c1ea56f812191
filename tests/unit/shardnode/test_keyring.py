"""Keyring directory loading (kubelet layout), per-table HKDF keys, and the reloading watcher."""

import json
import os
import shutil

import pytest
from chronoshard.shardnode.keyring import (
    KeyringError,
    KeyringWatcher,
    MissingKeyVersion,
    derive_table_key,
    load_keyring,
    parse_manifest,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tests.unit.shardnode.kubelet_dir import write_keyring

K1, K2 = bytes(range(32)), bytes(range(32, 64))


def test_loads_kubelet_layout_and_reports_without_key_material(tmp_path):
    write_keyring(tmp_path, 3, {1: ("decrypt-only", K1), 2: ("primary", K2)})
    ring = load_keyring(tmp_path)
    assert ring.generation == 3 and ring.primary == 2
    assert ring.describe() == {"generation": 3, "primary": 2,
                               "versions": [{"id": 1, "state": "decrypt-only"}, {"id": 2, "state": "primary"}],
                               "compromised": []}
    assert K1.hex() not in repr(ring) and K2.hex() not in json.dumps(ring.describe())


def test_table_key_is_the_documented_hkdf():
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=b"chronoshard/table-key/v1/users").derive(K1)
    assert derive_table_key(K1, "users") == expected
    assert derive_table_key(K1, "users") != derive_table_key(K1, "orders")


def test_aead_for_missing_version_names_the_version(tmp_path):
    write_keyring(tmp_path, 1, {2: ("primary", K2)})
    ring = load_keyring(tmp_path)
    with pytest.raises(MissingKeyVersion, match="key version 1 ") as exc:
        ring.aead(1, "t")
    assert exc.value.version == 1


def test_plain_directory_without_data_symlink_also_loads(tmp_path):
    (tmp_path / "keyring.json").write_text(json.dumps(
        {"format": 1, "generation": 0, "versions": [{"id": 5, "state": "primary"}]}))
    (tmp_path / "v5.key").write_bytes(K1)
    assert load_keyring(tmp_path).primary == 5


@pytest.mark.parametrize(
    "manifest, message",
    [
        ("{not json", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"format": 2, "generation": 1, "versions": []}', "unsupported format"),
        ('{"format": 1, "generation": -1, "versions": [{"id": 1, "state": "primary"}]}', "generation"),
        ('{"format": 1, "generation": 1, "versions": []}', "non-empty"),
        ('{"format": 1, "generation": 1, "versions": [{"id": 1, "state": "decrypt-only"}]}', "exactly one"),
        ('{"format": 1, "generation": 1, "versions": [{"id": 1, "state": "primary"}, {"id": 1, "state": "primary"}]}',
         "listed twice"),
        ('{"format": 1, "generation": 1, "versions": [{"id": 0, "state": "primary"}]}', "version id"),
        ('{"format": 1, "generation": 1, "versions": [{"id": 1, "state": "retired"}]}', "unknown state"),
        ('{"format": 1, "generation": 1, "algorithm": "DES", "versions": [{"id": 1, "state": "primary"}]}',
         "algorithm"),
    ],
)
def test_bad_manifests_are_rejected_with_a_clear_message(manifest, message):
    with pytest.raises(KeyringError, match=message):
        parse_manifest(manifest)


def test_wrong_key_length_reports_length_not_content(tmp_path):
    write_keyring(tmp_path, 1, {1: ("primary", b"\xab" * 16)})
    with pytest.raises(KeyringError, match="16 bytes") as exc:
        load_keyring(tmp_path)
    assert "ab" * 4 not in str(exc.value)


def test_missing_key_file_is_an_error(tmp_path):
    snap = write_keyring(tmp_path, 1, {1: ("primary", K1)})
    os.unlink(snap / "v1.key")
    with pytest.raises(KeyringError, match="version 1"):
        load_keyring(tmp_path)


def test_watcher_swaps_on_data_symlink_change_and_keeps_old_on_parse_error(tmp_path):
    seen = []
    write_keyring(tmp_path, 1, {1: ("primary", K1)})
    w = KeyringWatcher(tmp_path, on_reload=lambda ring, err: seen.append((ring, err)))
    assert w.poll() and w.keyring.generation == 1
    assert not w.poll()  # unchanged directory: no reload
    write_keyring(tmp_path, 2, {1: ("decrypt-only", K1), 2: ("primary", K2)})
    assert w.poll() and w.keyring.primary == 2 and w.load_error is None
    old = w.keyring
    write_keyring(tmp_path, 3, {}, manifest_text="{broken")
    assert not w.poll()
    assert w.keyring is old  # the old keyring stays loaded
    assert "not valid JSON" in w.load_error
    assert w.describe()["generation"] == 2 and w.describe()["loadError"] == w.load_error
    assert seen[-1] == (None, w.load_error)
    write_keyring(tmp_path, 4, {2: ("primary", K2)})
    assert w.poll() and w.load_error is None and w.keyring.generation == 4


def test_watcher_without_any_keyring_reports_error(tmp_path):
    w = KeyringWatcher(tmp_path / "absent")
    assert not w.poll()
    assert w.keyring is None and "cannot read keyring.json" in w.load_error
    assert w.describe() == {"generation": None, "primary": None, "versions": [], "loadError": w.load_error}


def test_old_snapshot_removed_after_swap_does_not_matter(tmp_path):
    first = write_keyring(tmp_path, 1, {1: ("primary", K1)})
    w = KeyringWatcher(tmp_path)
    w.poll()
    write_keyring(tmp_path, 2, {1: ("primary", K1)})
    shutil.rmtree(first)  # kubelet deletes the previous timestamped dir after the swap
    assert w.poll() and w.keyring.generation == 2
