"""Block frame encoding: layout, round trip, and rejection of malformed frames."""

import os
import struct

import pytest
from chronoshard.shardnode.keys import frames


def _frame(version=7, nonce=b"N" * 12, ct=b"C" * 20):
    return frames.Frame(key_version=version, nonce=nonce, ciphertext=ct)


def test_layout_matches_the_documented_bytes():
    data = frames.encode(_frame())
    assert data[:2] == b"CS"
    assert data[2] == 1
    assert struct.unpack(">I", data[3:7]) == (7,)
    assert data[7:19] == b"N" * 12
    assert data[19:] == b"C" * 20
    assert frames.HEADER_SIZE == 19


def test_round_trip_and_peek():
    f = _frame(version=0xFFFFFFFF)
    data = frames.encode(f)
    assert frames.decode(data) == f
    assert frames.peek_key_version(data) == 0xFFFFFFFF


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "too short"),
        (b"CS\x01" + b"\x00" * 40, "key version 0"),
        (b"XX\x01\x00\x00\x00\x01" + b"\x00" * 30, "magic"),
        (b"CS\x02\x00\x00\x00\x01" + b"\x00" * 30, "format version 2"),
        (b"CS\x01\x00\x00\x00\x01" + b"\x00" * 27, "too short"),
    ],
)
def test_malformed_frames_are_rejected(data, message):
    with pytest.raises(frames.FrameError, match=message):
        frames.decode(data)


def test_encode_rejects_bad_fields():
    with pytest.raises(frames.FrameError):
        frames.encode(_frame(version=0))
    with pytest.raises(frames.FrameError):
        frames.encode(_frame(nonce=b"short"))
    with pytest.raises(frames.FrameError):
        frames.encode(_frame(ct=b"x" * 15))


def test_associated_data_binds_table_key_and_version_unambiguously():
    f = _frame()
    a = frames.associated_data(f, "ab", "c")
    assert a != frames.associated_data(f, "a", "bc")  # length prefixes keep the pairs apart
    assert a != frames.associated_data(_frame(version=8), "ab", "c")
    assert a == frames.associated_data(_frame(nonce=b"M" * 12), "ab", "c")  # the nonce is GCM's own input


def test_split_copies_small_ciphertexts_and_views_large_ones():
    for n in (16, frames.VIEW_FROM - frames.HEADER_SIZE, frames.VIEW_FROM + 1, 65536 + 16):
        data = frames.encode(_frame(ct=os.urandom(n)))
        version, nonce, ct = frames.split(data)
        assert (version, nonce, bytes(ct)) == (7, b"N" * 12, data[frames.HEADER_SIZE:])
        assert isinstance(ct, memoryview) == (len(data) > frames.VIEW_FROM)
        assert type(frames.decode(data).ciphertext) is bytes  # a Frame never holds a view


def test_aad_is_the_cached_prefix_then_the_key_part():
    assert frames.aad_for(7, "tbl", "k") == frames.aad_prefix(7, "tbl") + frames.aad_suffix("k")
    assert frames.aad_for(7, "tbl", "k") == b"CS\x01" + struct.pack(">IH", 7, 3) + b"tbl" + struct.pack(">I", 1) + b"k"
