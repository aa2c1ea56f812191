"""The token service's Ed25519 signing keys: generated here, kept in the Secret ``<mirrorset>-token-signing``
(``signing.pem``, and ``previous.pem`` during a rotation). Only public keys and key ids ever leave this module's
callers in a status, an event, a log line or a ConfigMap.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNING_FILE = "signing.pem"
PREVIOUS_FILE = "previous.pem"


def new_signing_key() -> bytes:
    """A fresh Ed25519 private key as unencrypted PKCS#8 PEM."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def public_raw(private_pem: bytes) -> bytes | None:
    """The raw 32-byte public key of a PEM Ed25519 private key; None when it is not one."""
    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError):
        return None
    if not isinstance(key, Ed25519PrivateKey):
        return None
    pub: Ed25519PublicKey = key.public_key()
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: bytes) -> str:
    """The key id (``kid``) of a raw public key, as the service and the nodes derive it
    (shardnode/auth/tokenformat.key_id: the first 8 hex digits of its sha256), so no state names a key."""
    return hashlib.sha256(public).hexdigest()[:8]


def public_entry(public: bytes) -> dict[str, str]:
    """A ``tokens.json`` ``keys`` entry: ``{"kid", "publicKey"}`` (base64 of the raw 32 bytes)."""
    return {"kid": key_id(public), "publicKey": base64.b64encode(public).decode()}
