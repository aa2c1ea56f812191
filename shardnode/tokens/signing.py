"""The signing keys from the mounted Secret ``<mirrorset>-token-signing`` (``signing.pem``, ``previous.pem``).

The private keys stay in this object: never logged, never in status or errors. ``kid`` is
shardnode/auth/tokenformat.key_id (first 8 hex of sha256 of the raw public key).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from chronoshard.shardnode.auth import tokenformat
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, load_pem_private_key

log = logging.getLogger("chronoshard.tokens")

SIGNING, PREVIOUS = "signing.pem", "previous.pem"


class SigningKeyError(ValueError):
    """The Secret holds no usable Ed25519 signing key (the message names the file, never its content)."""


@dataclass(frozen=True)
class KeySet:
    """The key that signs and every key still published (the signing one first)."""

    kid: str
    private: Ed25519PrivateKey
    public: dict[str, Ed25519PublicKey]

    def published(self) -> list[dict[str, str]]:
        """``GET /v1/keys``: ``[{"kid", "publicKey"}]`` as tokens.json carries them."""
        return [{"kid": kid, "publicKey": tokenformat.public_key_b64(key)} for kid, key in self.public.items()]

    def model_key(self) -> bytes:
        """The HMAC key of the saved model: derived from the signing key, so the raw key is used for nothing else."""
        raw = self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return hmac.new(raw, b"chronoshard-tokens model.bin", hashlib.sha256).digest()


def load_private(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file (PKCS#8)."""
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path.name}: not a readable PEM private key ({type(exc).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path.name}: not an Ed25519 key")
    return key


def pem(key: Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM of a key (what the operator's Secret holds; tests write it)."""
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def load_keys(directory: Path) -> KeySet:
    """Read ``signing.pem`` and, if present, ``previous.pem``."""
    current = load_private(directory / SIGNING)
    public = {tokenformat.key_id(current.public_key()): current.public_key()}
    if (directory / PREVIOUS).exists():
        try:
            prev = load_private(directory / PREVIOUS).public_key()
            public.setdefault(tokenformat.key_id(prev), prev)
        except SigningKeyError as exc:
            log.warning("previous signing key not published: %s", exc)
    return KeySet(tokenformat.key_id(current.public_key()), current, public)


class SigningDir:
    """The mounted Secret, re-read by ``poll()`` when kubelet swaps it; the last good keys stay in force."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.keys = load_keys(directory)
        self._stamp = self._read_stamp()

    def _read_stamp(self) -> tuple[tuple[int, int], ...]:
        out = []
        for name in (SIGNING, PREVIOUS):
            try:
                st = os.stat(self.directory / name)
                out.append((st.st_ino, st.st_mtime_ns))
            except OSError:
                out.append((0, 0))
        return tuple(out)

    def poll(self) -> bool:
        """Reload the keys if the files changed; True when new keys are in force."""
        stamp = self._read_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            keys = load_keys(self.directory)
        except SigningKeyError as exc:
            log.error("signing keys not reloaded, keeping the last good ones: %s", exc)
            return False
        changed = keys.kid != self.keys.kid or keys.public.keys() != self.keys.public.keys()
        self.keys = keys
        if changed:
            log.info("signing keys reloaded: signing with kid %s, publishing %s", keys.kid, sorted(keys.public))
        return changed
