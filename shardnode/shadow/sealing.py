"""History frames: node frames (same AEAD, same keys) over compressed plaintext, bound to table, key and LSN (pure).

Sealed payload = XXH3-128(plaintext) (16 bytes) + codec blob (codec.py). The associated data is the node's
(frames.aad_for) followed by ``history_aad(lsn)``, so a stored version opens only as the (table, key, LSN) it was
sealed for, and a node frame never opens as a history frame (or back). Layout: docs/shadow-format.md.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..keys import crypto, frames
from ..keys.crypto import IntegrityError
from ..keys.keyring import Keyring
from .codec import Compressor

__all__ = ["HISTORY_AAD_TAG", "SealedVersion", "history_aad", "open_version", "rewrap_version", "seal_version",
           "version_checksum"]

HISTORY_AAD_TAG = b"chronoshard/history/v1"
MAX_LSN = (1 << 63) - 1  # the node's LSNs are SQLite INTEGERs
_AAD_EXTRA = struct.Struct(f">H{len(HISTORY_AAD_TAG)}sQ")
CHECKSUM_SIZE = crypto.CHECKSUM_SIZE


@dataclass(frozen=True)
class SealedVersion:
    """A sealed history version: the frame to store, the key version it names and its stored size in bytes.

    ``checksum`` is the node's checksum of the plaintext (XXH3-128), so a version compares with a live block
    without decrypting; it is also sealed inside the frame, where open_version checks it.
    """

    frame: bytes
    key_version: int
    stored_size: int
    checksum: bytes


def history_aad(lsn: int) -> bytes:
    """The associated data appended to the node's: u16 tag length, the tag, u64 LSN (big-endian)."""
    if isinstance(lsn, bool) or not isinstance(lsn, int) or not 0 <= lsn <= MAX_LSN:
        raise ValueError(f"LSN must be an integer in 0..2^63-1, not {lsn!r}")
    return _AAD_EXTRA.pack(len(HISTORY_AAD_TAG), HISTORY_AAD_TAG, lsn)


def seal_version(keyring: Keyring, table: str, key: str, lsn: int, plaintext: bytes, compressor: Compressor,
                 version: int | None = None) -> SealedVersion:
    """Compress then seal ``plaintext`` as the version of (table, key) at ``lsn`` (default key: the primary)."""
    extra = history_aad(lsn)
    digest = crypto.checksum(plaintext)
    # The plaintext checksum is inside, so zstd's own 4-byte one would be redundant.
    payload = digest + compressor.compress(table, plaintext, checksum=False)
    frame, _, v = crypto.seal_block(keyring, table, key, payload, version=version, aad_extra=extra)
    return SealedVersion(frame, v, len(frame), digest)


def _open_payload(keyring: Keyring, table: str, key: str, lsn: int, frame: bytes, unwrap: bool) -> bytes:
    """The authenticated payload (checksum + codec blob) of a history frame."""
    payload = crypto.open_block(keyring, table, key, frame, None, unwrap=unwrap, aad_extra=history_aad(lsn))
    if len(payload) <= CHECKSUM_SIZE:
        # Authentic but not of our making (an empty payload cannot come from seal_version).
        raise IntegrityError("frame", "history frame payload is too short")
    return payload


def open_version(keyring: Keyring, table: str, key: str, lsn: int, frame: bytes, compressor: Compressor,
                 unwrap: bool = True) -> bytes:
    """The plaintext of a history frame; IntegrityError if tampered or moved, MissingKeyVersion if the key is gone.

    codec.CodecError if the frame is authentic but names a dictionary ``compressor`` does not hold.
    """
    payload = _open_payload(keyring, table, key, lsn, frame, unwrap)
    plaintext = compressor.decompress(table, payload[CHECKSUM_SIZE:])
    if crypto.checksum(plaintext) != payload[:CHECKSUM_SIZE]:
        # Catches a wrong dictionary registered under the right id, or a codec fault: never serve such bytes.
        raise IntegrityError("checksum", "history version does not match its plaintext checksum")
    return plaintext


def version_checksum(keyring: Keyring, table: str, key: str, lsn: int, frame: bytes, unwrap: bool = True) -> bytes:
    """The plaintext checksum sealed in a history frame, without decompressing it."""
    return _open_payload(keyring, table, key, lsn, frame, unwrap)[:CHECKSUM_SIZE]


def rewrap_version(keyring: Keyring, table: str, key: str, lsn: int, frame: bytes, target: int) -> SealedVersion:
    """Re-seal a history frame under key version ``target`` (fresh nonce); the payload is not decompressed.

    A frame already under ``target`` is returned as it is (so a resumed rewrap pass does no work twice), after
    it is authenticated like any other.
    """
    payload = _open_payload(keyring, table, key, lsn, frame, True)
    digest = payload[:CHECKSUM_SIZE]
    if frames.peek_key_version(frame) == target:
        return SealedVersion(bytes(frame), target, len(frame), digest)
    new, _, v = crypto.seal_block(keyring, table, key, payload, version=target, aad_extra=history_aad(lsn))
    return SealedVersion(new, v, len(new), digest)
