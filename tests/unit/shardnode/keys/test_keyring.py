"""Keyring directory loading (kubelet layout), per-table HKDF keys, and the reloading watcher."""

import json
import os
import shutil

import pytest
from chronoshard.shardnode.keys import frames
from chronoshard.shardnode.keys.keyring import (
    KeyringError,
    KeyringWatcher,
    MissingKeyVersion,
    derive_table_key,
    load_keyring,
    parse_manifest,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tests.support.kubelet_dir import write_keyring

K1, K2 = bytes(range(32)), bytes(range(32, 64))


def test_loads_kubelet_layout_and_reports_without_key_material(tmp_path):
    write_keyring(tmp_path, 3, {1: ("decrypt-only", K1), 2: ("primary", K2)})
    ring = load_keyring(tmp_path)
    assert ring.generation == 3 and ring.primary == 2
    assert ring.describe() == {"generation": 3, "primary": 2,
                               "versions": [{"id": 1, "state": "decrypt-only"}, {"id": 2, "state": "primary"}],
                               "compromised": [], "wrapped": []}
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
    assert w.describe() == {"generation": None, "primary": None, "versions": [], "wrapped": [],
                            "loadError": w.load_error}


def test_old_snapshot_removed_after_swap_does_not_matter(tmp_path):
    first = write_keyring(tmp_path, 1, {1: ("primary", K1)})
    w = KeyringWatcher(tmp_path)
    w.poll()
    write_keyring(tmp_path, 2, {1: ("primary", K1)})
    shutil.rmtree(first)  # kubelet deletes the previous timestamped dir after the swap
    assert w.poll() and w.keyring.generation == 2


# ---- wrapped versions (v<id>.wrapped under a KEK) ------------------------------------------------
KEK = os.urandom(32)


def _secret_forms(*keys: bytes) -> list[str]:
    """Every printable form a key could leak in."""
    import base64

    return [f for k in keys for f in (k.hex(), base64.b64encode(k).decode(), repr(k)[2:-1])]


def _cache(tmp_path, capacity=64, kek=KEK):
    from chronoshard.shardnode.keys.provider import EmbeddedKeyProvider, KeyCache

    from tests.support.kubelet_dir import write_kek

    write_kek(tmp_path / "kek", kek)
    return KeyCache(EmbeddedKeyProvider(tmp_path / "kek", tmp_path / "keyring"), capacity)


def test_wrapped_keyring_loads_and_derives_the_same_table_keys(tmp_path):
    write_keyring(tmp_path / "keyring", 2, {1: ("decrypt-only", K1), 2: ("primary", K2)}, kek=KEK, wrapped={1, 2})
    kc = _cache(tmp_path)
    ring = load_keyring(tmp_path / "keyring", kc)
    assert ring.wrapped == {1, 2} and ring.has(1) and ring.has(2) and not ring.has(3)
    assert ring.describe()["wrapped"] == [1, 2]
    assert kc.held == 0  # the load check unwraps each version once but keeps nothing
    nonce = os.urandom(12)
    ct = ring.aead(2, "users").encrypt(nonce, b"x", b"")
    # the same bytes as a raw keyring with the same version key would produce
    raw_dir = tmp_path / "raw"
    write_keyring(raw_dir, 2, {1: ("decrypt-only", K1), 2: ("primary", K2)})
    assert load_keyring(raw_dir).aead(2, "users").decrypt(nonce, ct, b"") == b"x"
    assert kc.held == 1 and (kc.hits, kc.misses) == (0, 1)
    ring.aead(2, "users")
    assert (kc.hits, kc.misses) == (1, 1)


def test_wrapped_keyring_reuses_the_key_caches_aead_and_drops_it_with_the_key(tmp_path):
    from chronoshard.shardnode.keys.keyring import KeyNotHeld

    write_keyring(tmp_path / "keyring", 2, {1: ("decrypt-only", K1), 2: ("primary", K2)}, kek=KEK, wrapped={1, 2})
    kc = _cache(tmp_path, capacity=1)
    ring = load_keyring(tmp_path / "keyring", kc)
    aead = ring.aead(2, "users")
    assert ring.aead(2, "users") is aead and kc.aead("users", 2) is aead  # no new AESGCM per block
    assert ring.opener(2, "users") == (aead, frames.aad_prefix(2, "users"))
    ring.aead(1, "users")  # capacity 1: the key of (users, 2) is evicted, and its AEAD with it
    with pytest.raises(KeyNotHeld):
        ring.aead(2, "users", unwrap=False)
    assert ring.aead(2, "users") is not aead


def test_raw_keyring_keeps_one_aead_and_aad_prefix_per_table(tmp_path):
    write_keyring(tmp_path / "keyring", 2, {1: ("decrypt-only", K1), 2: ("primary", K2)})
    ring = load_keyring(tmp_path / "keyring")
    aead, prefix = ring.opener(2, "t")
    assert ring.opener(2, "t") == (aead, prefix) and ring.aead(2, "t") is aead
    assert prefix == frames.aad_prefix(2, "t") and ring.opener(1, "t")[1] == frames.aad_prefix(1, "t")
    assert ring.aead(1, "t") is not aead


def test_mixed_keyring_only_wrapped_versions_use_the_key_cache(tmp_path):
    write_keyring(tmp_path / "keyring", 2, {1: ("decrypt-only", K1), 2: ("primary", K2)}, kek=KEK, wrapped={2})
    kc = _cache(tmp_path)
    ring = load_keyring(tmp_path / "keyring", kc)
    assert ring.wrapped == {2} and ring.describe()["wrapped"] == [2]
    ring.aead(1, "t")
    assert kc.misses == 0 and kc.held == 0
    ring.aead(2, "t")
    assert kc.misses == 1 and kc.held == 1


def test_unwrap_false_raises_key_not_held_without_counting(tmp_path):
    from chronoshard.shardnode.keys.keyring import KeyNotHeld

    write_keyring(tmp_path / "keyring", 1, {1: ("primary", K1)}, kek=KEK, wrapped={1})
    kc = _cache(tmp_path)
    ring = load_keyring(tmp_path / "keyring", kc)
    with pytest.raises(KeyNotHeld):
        ring.aead(1, "t", unwrap=False)
    assert (kc.hits, kc.misses) == (0, 0)
    ring.aead(1, "t")
    ring.aead(1, "t", unwrap=False)
    assert (kc.hits, kc.misses) == (1, 1)


def test_both_files_or_neither_is_an_error(tmp_path):
    snap = write_keyring(tmp_path / "keyring", 1, {1: ("primary", K1)}, kek=KEK, wrapped={1})
    (snap / "v1.key").write_bytes(K1)
    with pytest.raises(KeyringError, match="version 1 has both v1.key and v1.wrapped") as exc:
        load_keyring(tmp_path / "keyring", _cache(tmp_path))
    os.unlink(snap / "v1.key")
    os.unlink(snap / "v1.wrapped")
    with pytest.raises(KeyringError, match="version 1") as exc2:
        load_keyring(tmp_path / "keyring", _cache(tmp_path))
    for e in (exc, exc2):
        assert not any(f in str(e.value) for f in _secret_forms(K1, KEK))


def test_wrapped_without_kek_dir_names_the_version(tmp_path):
    write_keyring(tmp_path / "keyring", 1, {1: ("decrypt-only", K1), 2: ("primary", K2)}, kek=KEK, wrapped={2})
    with pytest.raises(KeyringError) as exc:
        load_keyring(tmp_path / "keyring")
    assert str(exc.value) == "version 2 is wrapped but no KEK directory is configured (--kek-dir)"


@pytest.mark.parametrize("problem", ["wrong_kek", "missing_kek", "short_kek", "damaged_blob", "other_version"])
def test_wrapped_version_that_does_not_unwrap_fails_at_load(tmp_path, problem):
    from chronoshard.shardnode.keys.provider import wrap_key

    snap = write_keyring(tmp_path / "keyring", 1, {1: ("decrypt-only", K1), 2: ("primary", K2)}, kek=KEK,
                         wrapped={1, 2})
    other = os.urandom(32)
    kc = _cache(tmp_path, kek=other if problem == "wrong_kek" else KEK)
    if problem == "missing_kek":
        os.unlink(os.path.realpath(tmp_path / "kek" / "kek.key"))
    elif problem == "short_kek":
        _cache(tmp_path, kek=KEK)  # republish: same dir, then truncate the file
        (tmp_path / "kek" / "kek.key").resolve().write_bytes(KEK[:16])
    elif problem == "damaged_blob":
        blob = bytearray((snap / "v2.wrapped").read_bytes())
        blob[-1] ^= 1
        (snap / "v2.wrapped").write_bytes(bytes(blob))
    elif problem == "other_version":
        (snap / "v2.wrapped").write_bytes(wrap_key(KEK, K2, 1))  # a blob moved from another version
    with pytest.raises(KeyringError, match=r"version \d is wrapped but cannot be unwrapped") as exc:
        load_keyring(tmp_path / "keyring", kc)
    assert not any(f in str(exc.value) for f in _secret_forms(K1, K2, KEK, other))


def test_watcher_keeps_one_key_cache_across_reloads_and_drops_retired_versions(tmp_path):
    kc = _cache(tmp_path)
    write_keyring(tmp_path / "keyring", 1, {1: ("primary", K1)}, kek=KEK, wrapped={1})
    w = KeyringWatcher(tmp_path / "keyring", table_keys=kc)
    assert w.poll()
    w.keyring.aead(1, "a")
    w.keyring.aead(1, "b")
    write_keyring(tmp_path / "keyring", 2, {1: ("decrypt-only", K1), 2: ("primary", K2)}, kek=KEK, wrapped={1, 2})
    assert w.poll() and w.describe()["wrapped"] == [1, 2]
    assert ("a", 1) in kc and ("b", 1) in kc  # kept across the reload: no new unwrap
    w.keyring.aead(1, "a")
    assert kc.misses == 2 and kc.hits == 1
    w.keyring.aead(2, "a")
    write_keyring(tmp_path / "keyring", 3, {2: ("primary", K2)}, kek=KEK, wrapped={2})
    assert w.poll()
    assert ("a", 1) not in kc and ("b", 1) not in kc and ("a", 2) in kc
    # A KEK that does not match keeps the previous keyring in force, with a clear error.
    write_keyring(tmp_path / "keyring", 4, {2: ("primary", K2)}, kek=os.urandom(32), wrapped={2})
    assert not w.poll()
    assert w.keyring.generation == 3 and "version 2 is wrapped but cannot be unwrapped" in w.load_error
    assert not any(f in w.load_error for f in _secret_forms(K2, KEK))


def test_unwrap_failure_at_read_is_a_missing_key_version_naming_it(tmp_path):
    from chronoshard.shardnode.keys.keyring import KeyVersionUnavailable

    from tests.support.kubelet_dir import write_kek

    write_keyring(tmp_path / "keyring", 1, {1: ("primary", K1)}, kek=KEK, wrapped={1})
    kc = _cache(tmp_path)
    ring = load_keyring(tmp_path / "keyring", kc)
    write_kek(tmp_path / "kek", os.urandom(32))  # the KEK changed under a loaded keyring
    with pytest.raises(MissingKeyVersion, match="key version 1 could not be unwrapped") as exc:
        ring.aead(1, "t")
    assert isinstance(exc.value, KeyVersionUnavailable) and exc.value.version == 1


def test_keyring_in_force_keeps_unwrapping_after_a_refused_update_and_kek_changes_are_watched(tmp_path):
    from tests.support.kubelet_dir import write_kek

    kc = _cache(tmp_path)
    write_keyring(tmp_path / "keyring", 1, {1: ("primary", K1)}, kek=KEK, wrapped={1})
    w = KeyringWatcher(tmp_path / "keyring", table_keys=kc, kek_dir=tmp_path / "kek")
    assert w.poll()
    ring = w.keyring
    # The Secret is updated with a blob under another KEK: refused, and the keyring in force still unwraps
    # new table keys from the blob it loaded (not from the refused snapshot).
    write_keyring(tmp_path / "keyring", 2, {1: ("primary", K1)}, kek=os.urandom(32), wrapped={1})
    assert not w.poll() and w.keyring is ring
    nonce = os.urandom(12)
    ct = ring.aead(1, "new-table").encrypt(nonce, b"x", b"")
    assert AESGCM(derive_table_key(K1, "new-table")).decrypt(nonce, ct, b"") == b"x"
    # Fixed keyring: loads. Then only the KEK Secret changes: a reload is triggered and reports the mismatch.
    write_keyring(tmp_path / "keyring", 3, {1: ("primary", K1)}, kek=KEK, wrapped={1})
    assert w.poll() and w.keyring.generation == 3
    assert not w.poll()
    write_kek(tmp_path / "kek", os.urandom(32))
    assert not w.poll()
    assert w.keyring.generation == 3 and "version 1 is wrapped but cannot be unwrapped" in w.load_error
