"""Pure encode/decode of the stored block frame (layout documented in docs/block-format.md)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"CS"
FORMAT_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
# magic (2) | format version (u8) | key version id (u32, big-endian) | nonce (12)
_HEADER = struct.Struct(">2sBI12s")
HEADER_SIZE = _HEADER.size
_AAD_PREFIX = struct.Struct(">2sBIH")  # the header without the nonce, then the table name length
_U32 = struct.Struct(">I")
# The hot path's view of the header: magic and format version as one 3-byte field, checked in one compare
# (crypto.open_block parses the header inline with these: a split() call costs as much as the checksum at 4 KiB).
LEAD_HEADER = struct.Struct(">3sI12s")
LEAD = MAGIC + bytes([FORMAT_VERSION])
MIN_FRAME_SIZE = HEADER_SIZE + TAG_SIZE
MAX_KEY_VERSION = 0xFFFFFFFF
# Above this ciphertext size split() hands out a view, below it a copy: making the view (two memoryview objects)
# costs as much as copying 4 KiB and more than copying a small value, while copying 64 KiB costs a third as much
# as decrypting it (tests/bench/bench_node_crypto.py); cryptography 50 decrypts either at the same speed.
VIEW_FROM = 16384


class FrameError(ValueError):
    """The bytes are not a well-formed block frame (wrong magic, version or length)."""


@dataclass(frozen=True)
class Frame:
    """A decoded frame: which key version sealed it, its nonce and the ciphertext with the GCM tag."""

    key_version: int
    nonce: bytes
    ciphertext: bytes  # includes the 16-byte GCM tag at the end
    format_version: int = FORMAT_VERSION

    def header(self) -> bytes:
        """The frame's fixed header bytes (also the start of the associated data)."""
        return _HEADER.pack(MAGIC, self.format_version, self.key_version, self.nonce)


def encode(frame: Frame) -> bytes:
    """Serialise a frame to bytes."""
    if not 0 < frame.key_version <= MAX_KEY_VERSION:
        raise FrameError(f"key version {frame.key_version} out of range")
    if len(frame.nonce) != NONCE_SIZE:
        raise FrameError("nonce must be 12 bytes")
    if len(frame.ciphertext) < TAG_SIZE:
        raise FrameError("ciphertext shorter than the GCM tag")
    return frame.header() + frame.ciphertext


def split(data: bytes) -> tuple[int, bytes, bytes | memoryview]:
    """Validate a frame and return (key version, nonce, ciphertext+tag) with no intermediate objects (hot path).

    The ciphertext is a view into ``data`` when it is larger than VIEW_FROM bytes, else a copy.
    """
    size = len(data)
    if size < MIN_FRAME_SIZE:
        raise FrameError(f"frame too short ({size} bytes, minimum {MIN_FRAME_SIZE})")
    lead, key_version, nonce = LEAD_HEADER.unpack_from(data)
    if lead != LEAD or key_version == 0:
        raise FrameError(problem(data))
    if size > VIEW_FROM:
        return key_version, nonce, memoryview(data)[HEADER_SIZE:]
    return key_version, nonce, bytes(data[HEADER_SIZE:])


def problem(data: bytes) -> str:
    """Why split() refuses ``data`` (the slow path: the fast one checks the header in one compare)."""
    if len(data) < MIN_FRAME_SIZE:
        return f"frame too short ({len(data)} bytes, minimum {MIN_FRAME_SIZE})"
    magic, version, _, _ = _HEADER.unpack_from(data)
    if magic != MAGIC:
        return "bad frame magic"
    if version != FORMAT_VERSION:
        return f"unsupported frame format version {version}"
    return "key version 0 is invalid"


def decode(data: bytes) -> Frame:
    """Parse bytes into a Frame; FrameError if malformed."""
    key_version, nonce, ct = split(data)
    return Frame(key_version=key_version, nonce=nonce, ciphertext=bytes(ct))


def peek_key_version(data: bytes) -> int:
    """Return the key version a frame names without copying the ciphertext."""
    if len(data) < HEADER_SIZE:
        raise FrameError("frame too short")
    return int(_HEADER.unpack_from(data)[2])


def associated_data(frame: Frame, table: str, key: str) -> bytes:
    """AAD binding the frame to its header, table and key (length-prefixed so no two pairs collide)."""
    return aad_for(frame.key_version, table, key)


def aad_for(key_version: int, table: str, key: str) -> bytes:
    """The AAD for a frame of ``key_version`` holding (table, key): header[0:7] + u16 len + table + u32 len + key."""
    return aad_prefix(key_version, table) + aad_suffix(key)


def aad_prefix(key_version: int, table: str) -> bytes:
    """The part of the AAD fixed by (key version, table): header[0:7] + u16 len + table (kept with the table's AEAD)."""
    t = table.encode()
    return _AAD_PREFIX.pack(MAGIC, FORMAT_VERSION, key_version, len(t)) + t


def aad_suffix(key: str) -> bytes:
    """The part of the AAD naming the block key: u32 len + key."""
    k = key.encode()
    return _U32.pack(len(k)) + k
