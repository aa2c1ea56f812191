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
MIN_FRAME_SIZE = HEADER_SIZE + TAG_SIZE
MAX_KEY_VERSION = 0xFFFFFFFF


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


def split(data: bytes) -> tuple[int, bytes, bytes]:
    """Validate a frame and return (key version, nonce, ciphertext+tag) with no intermediate objects (hot path)."""
    if len(data) < MIN_FRAME_SIZE:
        raise FrameError(f"frame too short ({len(data)} bytes, minimum {MIN_FRAME_SIZE})")
    magic, version, key_version, nonce = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FrameError("bad frame magic")
    if version != FORMAT_VERSION:
        raise FrameError(f"unsupported frame format version {version}")
    if key_version == 0:
        raise FrameError("key version 0 is invalid")
    # A bytes slice, not a memoryview: cryptography's decrypt is measurably slower on buffer views.
    return key_version, nonce, bytes(data[HEADER_SIZE:])


def decode(data: bytes) -> Frame:
    """Parse bytes into a Frame; FrameError if malformed."""
    key_version, nonce, ct = split(data)
    return Frame(key_version=key_version, nonce=nonce, ciphertext=ct)


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
    t = table.encode()
    k = key.encode()
    return _AAD_PREFIX.pack(MAGIC, FORMAT_VERSION, key_version, len(t)) + t + struct.pack(">I", len(k)) + k
