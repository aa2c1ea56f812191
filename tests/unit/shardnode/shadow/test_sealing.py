"""History frames: node frame format and AEAD, bound to table, key and LSN; compressed; checksum checked."""

import pytest
from chronoshard.shardnode.keys import frames
from chronoshard.shardnode.keys.crypto import CompromisedVersion, IntegrityError, checksum, open_block, seal_block
from chronoshard.shardnode.keys.keyring import Keyring, KeyVersion, MissingKeyVersion
from chronoshard.shardnode.shadow import codec, sealing
from chronoshard.shardnode.shadow.codec import CodecError, Compressor
from chronoshard.shardnode.shadow.sealing import open_version, rewrap_version, seal_version
from hypothesis import given, settings
from hypothesis import strategies as st


def _ring(primary=2, versions=(1, 2), compromised=()):
    return Keyring(3, [KeyVersion(v, "primary" if v == primary else "decrypt-only", compromised=v in compromised)
                       for v in versions], {v: bytes([v]) * 32 for v in versions})


RING = _ring()
COMP = Compressor()
VALUE = b'{"order": 1234, "items": ["apple", "pear", "plum"], "status": "shipped"}' * 20


@given(st.text(max_size=30), st.text(max_size=60), st.integers(0, sealing.MAX_LSN), st.binary(max_size=3000))
@settings(max_examples=150, deadline=None)
def test_round_trip(table, key, lsn, value):
    sealed = seal_version(RING, table, key, lsn, value, COMP)
    assert open_version(RING, table, key, lsn, sealed.frame, COMP) == value
    assert sealed.key_version == RING.primary == frames.peek_key_version(sealed.frame)
    assert sealed.stored_size == len(sealed.frame) and sealed.checksum == checksum(value)


def test_frame_is_a_node_frame_and_compressed():
    sealed = seal_version(RING, "t", "k", 7, VALUE, COMP)
    f = frames.decode(sealed.frame)
    assert f.key_version == 2 and f.format_version == frames.FORMAT_VERSION
    assert sealed.stored_size < len(VALUE) // 5
    assert b"apple" not in sealed.frame


@pytest.mark.parametrize("table, key, lsn", [("t", "k", 8), ("t", "k", 6), ("t", "other", 7), ("u", "k", 7)])
def test_version_cannot_be_replayed_as_another_lsn_key_or_table(table, key, lsn):
    sealed = seal_version(RING, "t", "k", 7, VALUE, COMP)
    with pytest.raises(IntegrityError) as exc:
        open_version(RING, table, key, lsn, sealed.frame, COMP)
    assert exc.value.reason == "tag"


def test_node_frame_and_history_frame_are_not_interchangeable():
    node_frame, cs, _ = seal_block(RING, "t", "k", VALUE)
    with pytest.raises(IntegrityError):
        open_version(RING, "t", "k", 0, node_frame, COMP)
    sealed = seal_version(RING, "t", "k", 0, VALUE, COMP)
    with pytest.raises(IntegrityError):
        open_block(RING, "t", "k", sealed.frame, None)


def test_node_frames_are_byte_identical_with_the_empty_extra():
    nonce = b"\x01" * 12
    frame, _, _ = seal_block(RING, "t", "k", b"data", nonce=nonce)
    aead = RING.aead(2, "t")
    expected = frames.encode(frames.Frame(2, nonce, aead.encrypt(nonce, b"data", frames.aad_for(2, "t", "k"))))
    assert frame == expected


def test_every_single_bit_flip_is_detected():
    sealed = seal_version(RING, "t", "k", 99, b"x" * 64, COMP)
    for i in range(len(sealed.frame) * 8):
        bad = bytearray(sealed.frame)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises((IntegrityError, MissingKeyVersion)):
            open_version(RING, "t", "k", 99, bytes(bad), COMP)


@pytest.mark.parametrize("cut", [0, 1, 18, 34, 40])
def test_truncated_frame_is_integrity_error(cut):
    sealed = seal_version(RING, "t", "k", 1, VALUE, COMP)
    with pytest.raises(IntegrityError):
        open_version(RING, "t", "k", 1, sealed.frame[:cut], COMP)


def test_wrong_dictionary_under_the_right_id_is_caught_by_the_plaintext_checksum():
    samples = [b'{"name": "n%d", "kind": "widget", "colour": "blue"}' % i for i in range(500)]
    good = codec.train_dictionary(samples, 1024)
    writer = Compressor(dictionaries={"t": good})
    sealed = seal_version(RING, "t", "k", 5, samples[3], writer)
    # A reader that holds other bytes under the same id (a restored dictionary table mixed up, say).
    reader = Compressor()
    reader._dicts[("t", codec.dictionary_id(good))] = codec.zstandard.ZstdCompressionDict(
        b"\x00" * 64 + good[64:], dict_type=codec.zstandard.DICT_TYPE_RAWCONTENT)
    with pytest.raises((IntegrityError, CodecError)):
        open_version(RING, "t", "k", 5, sealed.frame, reader)


def test_missing_dictionary_is_codec_error_after_authentication():
    samples = [b'{"name": "n%d", "kind": "widget"}' % i for i in range(500)]
    writer = Compressor(dictionaries={"t": codec.train_dictionary(samples, 1024)})
    sealed = seal_version(RING, "t", "k", 5, samples[0], writer)
    with pytest.raises(CodecError, match="unknown dictionary"):
        open_version(RING, "t", "k", 5, sealed.frame, Compressor())


def test_missing_key_version_names_the_version():
    sealed = seal_version(RING, "t", "k", 1, VALUE, COMP, version=1)
    with pytest.raises(MissingKeyVersion) as exc:
        open_version(_ring(2, (2,)), "t", "k", 1, sealed.frame, COMP)
    assert exc.value.version == 1


def test_rewrap_changes_key_version_and_nonce_not_the_value():
    old = seal_version(RING, "t", "k", 12, VALUE, COMP, version=1)
    new = rewrap_version(RING, "t", "k", 12, old.frame, 2)
    assert new.key_version == 2 == frames.peek_key_version(new.frame)
    assert frames.decode(new.frame).nonce != frames.decode(old.frame).nonce
    assert new.checksum == old.checksum == checksum(VALUE)
    assert open_version(_ring(2, (2,)), "t", "k", 12, new.frame, COMP) == VALUE


def test_rewrap_to_the_current_version_is_a_no_op_but_still_authenticates():
    sealed = seal_version(RING, "t", "k", 12, VALUE, COMP)
    assert rewrap_version(RING, "t", "k", 12, sealed.frame, 2).frame == sealed.frame
    with pytest.raises(IntegrityError):
        rewrap_version(RING, "t", "k", 13, sealed.frame, 2)


def test_rewrap_of_a_moved_frame_fails():
    sealed = seal_version(RING, "t", "k", 12, VALUE, COMP, version=1)
    with pytest.raises(IntegrityError):
        rewrap_version(RING, "t", "other", 12, sealed.frame, 2)


def test_compromised_version_never_seals():
    ring = _ring(primary=2, compromised=(1,))
    sealed = seal_version(ring, "t", "k", 1, VALUE, COMP, version=2)
    with pytest.raises(CompromisedVersion):
        seal_version(ring, "t", "k", 1, VALUE, COMP, version=1)
    with pytest.raises(CompromisedVersion):
        rewrap_version(ring, "t", "k", 1, sealed.frame, 1)


def test_version_checksum_without_decompressing():
    sealed = seal_version(RING, "t", "k", 3, VALUE, COMP)
    assert sealing.version_checksum(RING, "t", "k", 3, sealed.frame) == checksum(VALUE)


@pytest.mark.parametrize("lsn", [-1, 1 << 63, True, 1.0])
def test_bad_lsn_is_refused(lsn):
    with pytest.raises(ValueError, match="LSN"):
        seal_version(RING, "t", "k", lsn, b"v", COMP)


def test_history_aad_layout():
    aad = sealing.history_aad(0x0102030405060708)
    assert aad == len(sealing.HISTORY_AAD_TAG).to_bytes(2, "big") + sealing.HISTORY_AAD_TAG + \
        bytes.fromhex("0102030405060708")
