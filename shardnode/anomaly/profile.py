"""Byte profiles of values: entropy and a coarse byte histogram, their distance, and a compact stored form.

An encrypting attacker turns text or structured values into bytes spread evenly over all 256 values: entropy goes
up towards 8 bits per byte and the histogram flattens. Entropy alone misses a value encrypted only in part (the
mean moves little), so the histogram distance between the new and the previous version is kept beside it.
"""

from __future__ import annotations

import math

import numpy as np

from .types import HIST_BINS, ByteProfile

PROFILE_BYTES = 1 + HIST_BINS  # the stored form: entropy, then each bin, one byte each
_EMPTY = ByteProfile(0.0, (0.0,) * HIST_BINS)


def byte_profile(data: bytes) -> ByteProfile:
    """The profile of ``data`` (an empty value has entropy 0 and an all-zero histogram)."""
    if not data:
        return _EMPTY
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    p = counts[counts > 0] / len(data)
    entropy = float(-(p * np.log2(p)).sum())
    bins = counts.reshape(HIST_BINS, 256 // HIST_BINS).sum(axis=1) / len(data)
    return ByteProfile(max(0.0, entropy), tuple(float(b) for b in bins))


def hist_distance(a: ByteProfile, b: ByteProfile) -> float:
    """Jensen-Shannon distance between two histograms, in [0, 1] (0: same shape; 1: no bin in common).
    An empty value's histogram is far from every non-empty one."""
    if not any(a.hist) or not any(b.hist):
        return 0.0 if not any(a.hist) and not any(b.hist) else 1.0
    js = 0.0
    for p, q in zip(a.hist, b.hist, strict=True):
        m = (p + q) / 2
        if p > 0:
            js += 0.5 * p * math.log2(p / m)
        if q > 0:
            js += 0.5 * q * math.log2(q / m)
    return math.sqrt(max(0.0, min(1.0, js)))


def encode_profile(profile: ByteProfile) -> bytes:
    """``PROFILE_BYTES`` bytes: entropy in 1/32 bit steps, then each bin's share in 1/255 steps."""
    head = round(min(8.0, max(0.0, profile.entropy)) * 31.875)
    return bytes([head, *(round(min(1.0, max(0.0, h)) * 255) for h in profile.hist)])


def decode_profile(raw: bytes | None) -> ByteProfile | None:
    """The profile stored by ``encode_profile`` (None for None or a blob of another length)."""
    if raw is None or len(raw) != PROFILE_BYTES:
        return None
    return ByteProfile(raw[0] / 31.875, tuple(b / 255 for b in raw[1:]))
