"""Sealing and opening blocks: AAD binding, checksum, tamper detection, missing versions."""

import os

import pytest
from chronoshard.shardnode.keys import frames
from chronoshard.shardnode.keys.crypto import IntegrityError, checksum, open_block, seal_block
from chronoshard.shardnode.keys.keyring import Keyring, KeyVersion, MissingKeyVersion


def _ring(primary=2, versions=(1, 2)):
    return Keyring(7, [KeyVersion(v, "primary" if v == primary else "decrypt-only") for v in versions],
                   {v: bytes([v]) * 32 for v in versions})


def test_round_trip_under_primary_and_named_version():
    ring = _ring()
    frame, cs, v = seal_block(ring, "t", "k", b"hello")
    assert v == 2 and frames.decode(frame).key_version == 2
    assert cs == checksum(b"hello") and len(cs) == 16
    assert open_block(ring, "t", "k", frame, cs) == b"hello"
    old, cs1, v1 = seal_block(ring, "t", "k", b"old", version=1)
    assert v1 == 1 and open_block(ring, "t", "k", old, cs1) == b"old"


def test_ciphertext_hides_plaintext_and_nonces_differ():
    ring = _ring()
    a, _, _ = seal_block(ring, "t", "k", b"secret-secret-secret")
    b, _, _ = seal_block(ring, "t", "k", b"secret-secret-secret")
    assert b"secret" not in a and a != b


@pytest.mark.parametrize("table, key", [("t", "other"), ("u", "k")])
def test_block_moved_to_another_key_or_table_fails(table, key):
    ring = _ring()
    frame, cs, _ = seal_block(ring, "t", "k", b"payload")
    with pytest.raises(IntegrityError) as exc:
        open_block(ring, table, key, frame, cs)
    assert exc.value.reason == "tag"


def test_every_single_bit_flip_is_detected():
    ring = _ring()
    frame, cs, _ = seal_block(ring, "t", "k", b"x" * 40)
    for i in range(len(frame) * 8):
        bad = bytearray(frame)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises((IntegrityError, MissingKeyVersion)):
            open_block(ring, "t", "k", bytes(bad), cs)


def test_checksum_mismatch_is_detected():
    ring = _ring()
    frame, cs, _ = seal_block(ring, "t", "k", b"data")
    with pytest.raises(IntegrityError) as exc:
        open_block(ring, "t", "k", frame, checksum(b"other"))
    assert exc.value.reason == "checksum"


def test_relabelled_key_version_fails():
    ring = _ring()
    frame, cs, _ = seal_block(ring, "t", "k", b"data", version=1)
    relabelled = frame[:3] + (2).to_bytes(4, "big") + frame[7:]
    with pytest.raises(IntegrityError):
        open_block(ring, "t", "k", relabelled, cs)


def test_missing_version_names_the_version_not_the_key():
    frame, cs, _ = seal_block(_ring(), "t", "k", b"data", version=1)
    ring = _ring(primary=2, versions=(2,))
    with pytest.raises(MissingKeyVersion) as exc:
        open_block(ring, "t", "k", frame, cs)
    assert exc.value.version == 1 and "key version 1" in str(exc.value)
    assert (bytes([1]) * 32).hex() not in str(exc.value)


def test_malformed_frame_is_integrity_error():
    with pytest.raises(IntegrityError) as exc:
        open_block(_ring(), "t", "k", b"garbage", None)
    assert exc.value.reason == "frame"


def test_a_compromised_version_decrypts_but_never_encrypts(tmp_path):
    import json as _json

    from chronoshard.shardnode.keys.crypto import CompromisedVersion, open_block, seal_block
    from chronoshard.shardnode.keys.keyring import load_keyring

    (tmp_path / "v1.key").write_bytes(b"\x01" * 32)
    (tmp_path / "v2.key").write_bytes(b"\x02" * 32)
    doc = {"format": 1, "generation": 2, "algorithm": "AES-256-GCM",
           "versions": [{"id": 1, "state": "primary"}, {"id": 2, "state": "decrypt-only"}]}
    (tmp_path / "keyring.json").write_text(_json.dumps(doc))
    frame, cs, _ = seal_block(load_keyring(tmp_path), "t", "k", b"before")
    doc["versions"][0]["compromised"] = True
    (tmp_path / "keyring.json").write_text(_json.dumps(doc))
    ring = load_keyring(tmp_path)
    assert ring.describe()["compromised"] == [1]
    assert open_block(ring, "t", "k", frame, cs) == b"before"
    with pytest.raises(CompromisedVersion, match="version 1 is marked compromised"):
        seal_block(ring, "t", "k", b"after")
    with pytest.raises(CompromisedVersion):
        seal_block(ring, "t", "k", b"after", version=1)
    assert seal_block(ring, "t", "k", b"after", version=2)[2] == 2


@pytest.mark.parametrize("size", [0, 4096, 65536])
def test_large_and_small_blocks_open_and_every_corruption_is_caught(size):
    ring = _ring()
    plain = os.urandom(size)
    frame, cs, _ = seal_block(ring, "t", "k", plain, aad_extra=b"lsn")
    assert open_block(ring, "t", "k", frame, cs, aad_extra=b"lsn") == plain
    assert type(open_block(ring, "t", "k", frame, cs, aad_extra=b"lsn")) is bytes
    with pytest.raises(IntegrityError) as exc:
        open_block(ring, "t", "k", frame, cs)  # sealed with extra AAD, opened without
    assert exc.value.reason == "tag"
    bad = bytearray(frame)
    bad[-20] ^= 1
    with pytest.raises(IntegrityError) as exc:
        open_block(ring, "t", "k", bytes(bad), cs, aad_extra=b"lsn")
    assert exc.value.reason == "tag"
    with pytest.raises(IntegrityError) as exc:
        open_block(ring, "t", "k", frame, checksum(plain + b"x"), aad_extra=b"lsn")
    assert exc.value.reason == "checksum"


def test_open_block_refuses_each_malformed_header_as_split_does():
    """open_block parses the header inline: the same refusals, with the same reasons, as frames.split."""
    ring = _ring()
    frame, cs, _ = seal_block(ring, "t", "k", b"data")
    cases = {
        "frame too short": frame[: frames.MIN_FRAME_SIZE - 1],
        "bad frame magic": b"XS" + frame[2:],
        "unsupported frame format version 2": frame[:2] + b"\x02" + frame[3:],
        "key version 0 is invalid": frame[:3] + bytes(4) + frame[7:],
    }
    for message, bad in cases.items():
        with pytest.raises(IntegrityError, match=message) as exc:
            open_block(ring, "t", "k", bad, cs)
        assert exc.value.reason == "frame"
        with pytest.raises(frames.FrameError, match=message):
            frames.split(bad)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_open_block_takes_any_buffer_and_returns_bytes(kind):
    ring = _ring()
    for size in (10, frames.VIEW_FROM + 100):  # one below the view threshold (a slice), one above (a view)
        plain = os.urandom(size)
        frame, cs, _ = seal_block(ring, "t", "k", plain)
        out = open_block(ring, "t", "k", kind(frame), cs)
        assert out == plain and type(out) is bytes
