import os

import pytest
from chronoshard.shardnode.anomaly.profile import (
    PROFILE_BYTES,
    byte_profile,
    decode_profile,
    encode_profile,
    hist_distance,
)


def test_text_and_ciphertext_differ_in_entropy_and_histogram() -> None:
    text = byte_profile(b'{"order": 1042, "customer": "ada lovelace", "items": ["tea", "scones"]}' * 40)
    noise = byte_profile(os.urandom(4096))
    assert text.entropy < 5.0
    assert noise.entropy > 7.9
    assert hist_distance(text, noise) > 0.5
    assert hist_distance(text, text) == pytest.approx(0.0, abs=1e-9)
    assert sum(noise.hist) == pytest.approx(1.0)


def test_partial_encryption_moves_the_histogram() -> None:
    text = b"the quick brown fox jumps over the lazy dog. " * 90
    half = text[: len(text) // 2] + os.urandom(len(text) - len(text) // 2)
    d = hist_distance(byte_profile(text), byte_profile(half))
    assert 0.2 < d < hist_distance(byte_profile(text), byte_profile(os.urandom(len(text))))


def test_empty_value() -> None:
    empty = byte_profile(b"")
    assert empty.entropy == 0.0 and sum(empty.hist) == 0.0
    assert hist_distance(empty, empty) == 0.0
    assert hist_distance(empty, byte_profile(b"abc")) == 1.0


def test_stored_form_round_trips_within_its_precision() -> None:
    p = byte_profile(os.urandom(1000) + b"a" * 500)
    raw = encode_profile(p)
    assert len(raw) == PROFILE_BYTES
    q = decode_profile(raw)
    assert q is not None
    assert q.entropy == pytest.approx(p.entropy, abs=1 / 31.875)
    assert all(abs(a - b) <= 1 / 255 for a, b in zip(p.hist, q.hist, strict=True))
    assert decode_profile(None) is None and decode_profile(b"short") is None
