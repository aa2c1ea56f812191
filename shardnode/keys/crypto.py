"""Seal and open blocks: AES-256-GCM per-table keys, AAD binding table+key+key version, plaintext checksum."""

from __future__ import annotations

import os
import struct

import xxhash
from cryptography.exceptions import InvalidTag

from . import frames
from .keyring import Keyring, MissingKeyVersion

__all__ = ["IntegrityError", "MissingKeyVersion", "checksum", "open_block", "seal_block"]

CHECKSUM_SIZE = 16
_U32 = struct.Struct(">I")
_xxh3_128 = xxhash.xxh3_128_digest  # checksum() without its Python frame, for open_block
_LEAD_HEADER, _LEAD, _BODY = frames.LEAD_HEADER, frames.LEAD, frames.HEADER_SIZE
_MIN_FRAME, _VIEW_FROM = frames.MIN_FRAME_SIZE, frames.VIEW_FROM


class IntegrityError(ValueError):
    """A stored block failed authentication or its checksum: it must never be served."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # "frame", "tag" or "checksum": a metrics label


def checksum(plaintext: bytes) -> bytes:
    """XXH3-128 of the plaintext: fast, well kept, and 128 bits make accidental matches negligible."""
    return xxhash.xxh3_128_digest(plaintext)


class CompromisedVersion(RuntimeError):
    """Refusal to encrypt with a key version a threat rotation marked compromised."""

    def __init__(self, version: int) -> None:
        super().__init__(f"key version {version} is marked compromised; it may decrypt but never encrypt")
        self.version = version


def seal_block(keyring: Keyring, table: str, key: str, plaintext: bytes, version: int | None = None,
               nonce: bytes | None = None, aad_extra: bytes = b"", unwrap: bool = True) -> tuple[bytes, bytes, int]:
    """Encrypt under ``version`` (default: the primary); return (frame, checksum, key version).

    ``aad_extra`` is authenticated after the frame's own AAD (the shadow binds a history version's LSN with it);
    empty for the node's blocks, whose bytes it leaves unchanged. ``unwrap=False``: KeyNotHeld instead of
    unwrapping a wrapped version's table key that is not in memory.
    """
    v = keyring.primary if version is None else version
    if v in keyring.compromised:
        raise CompromisedVersion(v)
    aead = keyring.aead(v, table, unwrap=unwrap)
    # Random 96-bit nonces: per-table keys keep each key's message count far below the 2^32 bound.
    nonce = nonce or os.urandom(frames.NONCE_SIZE)
    ct = aead.encrypt(nonce, plaintext, frames.aad_for(v, table, key) + aad_extra)
    return frames.encode(frames.Frame(v, nonce, ct)), checksum(plaintext), v


def open_block(keyring: Keyring, table: str, key: str, data: bytes, expected_checksum: bytes | None,
               unwrap: bool = True, aad_extra: bytes = b"") -> bytes:
    """Decrypt and verify a stored frame; IntegrityError if tampered, MissingKeyVersion if the version is gone.

    ``unwrap=False``: KeyNotHeld instead of unwrapping a wrapped version's table key that is not in memory.
    ``aad_extra``: the same bytes the frame was sealed with (seal_block).
    """
    # The hot path of every cache miss. At 4 KiB each Python call here costs about 5% of the decrypt itself, so
    # the header is parsed inline (frames.split's checks, one compare), the AEAD and the AAD prefix come from one
    # lookup and the AAD's key part is built inline (tests/bench/bench_node_crypto.py, docs/data-plane.md).
    size = len(data)
    if size < _MIN_FRAME:
        raise IntegrityError("frame", f"stored frame is malformed: {frames.problem(data)}")
    lead, version, nonce = _LEAD_HEADER.unpack_from(data)
    if lead != _LEAD or version == 0:
        raise IntegrityError("frame", f"stored frame is malformed: {frames.problem(data)}")
    # Small frames: one slice (a copy as cheap as making a view); large ones: a view, no copy of the ciphertext.
    ciphertext = data[_BODY:] if size <= _VIEW_FROM else memoryview(data)[_BODY:]
    aead, aad = keyring.opener(version, table, unwrap)
    k = key.encode()
    aad += _U32.pack(len(k)) + k  # frames.aad_suffix(key)
    if aad_extra:
        aad += aad_extra
    try:
        plaintext = aead.decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise IntegrityError("tag", "block failed authentication (tampered, or stored under another key)") from None
    if expected_checksum is not None and _xxh3_128(plaintext) != expected_checksum:
        raise IntegrityError("checksum", "block plaintext does not match its stored checksum")
    return plaintext
