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


def decode(data: bytes) -> Frame:
    """Parse bytes into a Frame; FrameError if malformed."""
    if len(data) < MIN_FRAME_SIZE:
        raise FrameError(f"frame too short ({len(data)} bytes, minimum {MIN_FRAME_SIZE})")
    magic, version, key_version, nonce = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FrameError("bad frame magic")
    if version != FORMAT_VERSION:
        raise FrameError(f"unsupported frame format version {version}")
    if key_version == 0:
        raise FrameError("key version 0 is invalid")
    return Frame(key_version=key_version, nonce=nonce, ciphertext=bytes(data[HEADER_SIZE:]), format_version=version)


def peek_key_version(data: bytes) -> int:
    """Return the key version a frame names without copying the ciphertext."""
    if len(data) < HEADER_SIZE:
        raise FrameError("frame too short")
    return int(_HEADER.unpack_from(data)[2])


def associated_data(frame: Frame, table: str, key: str) -> bytes:
    """AAD binding the frame to its header, table and key (length-prefixed so no two pairs collide)."""
    t = table.encode()
    k = key.encode()
    return frame.header()[:7] + struct.pack(">H", len(t)) + t + struct.pack(">I", len(k)) + k
