"""The keyring Secret's content: the manifest and the key versions (pure; keys never leave this module's
return values except into the Secret).

Each listed version has exactly one material file: ``v<N>.key`` (32 raw bytes) or ``v<N>.wrapped`` (the key
wrapped under the ShardSet's key-encryption key by ``chronoshard.shardnode.keys.provider.wrap_key``). The KEK
itself lives in its own Secret (``kek.key``); the functions that need it take its bytes as an argument.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from chronoshard.shardnode.keys.provider import KEK_FILE, KeyUnavailable, unwrap_key, wrap_key

from .conditions import now_rfc3339

MANIFEST_FILE = "keyring.json"
KEY_BYTES = 32


@dataclass(frozen=True)
class KeyVersionInfo:
    """A key version's public facts (never the key itself)."""

    id: int
    state: str
    created: str
    compromised: bool = False


@dataclass(frozen=True)
class KeyringManifest:
    """The safe-to-show part of the keyring Secret (``keyring.json``)."""

    generation: int
    algorithm: str
    versions: tuple[KeyVersionInfo, ...]

    @property
    def primary(self) -> int | None:
        """The id of the version new writes use."""
        for v in self.versions:
            if v.state == "primary":
                return v.id
        return None

    def to_json(self) -> str:
        """The manifest as stored in the Secret."""
        return json.dumps(
            {
                "format": 1,
                "generation": self.generation,
                "algorithm": self.algorithm,
                "versions": [_version_doc(v) for v in self.versions],
            },
            sort_keys=True,
        )


def _version_doc(v: KeyVersionInfo) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": v.id, "state": v.state, "created": v.created}
    if v.compromised:
        doc["compromised"] = True
    return doc


def key_file(version: int) -> str:
    """The Secret key (file name) holding key version ``version`` unwrapped (32 raw bytes)."""
    return f"v{version}.key"


def wrapped_file(version: int) -> str:
    """The Secret key (file name) holding key version ``version`` wrapped under the KEK."""
    return f"v{version}.wrapped"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _material(version: int, kek: bytes | None) -> tuple[str, str]:
    """(file name, base64 value) of a fresh random key version: wrapped when a KEK is given, raw otherwise."""
    key = os.urandom(KEY_BYTES)
    if kek is None:
        return key_file(version), _b64(key)
    return wrapped_file(version), _b64(wrap_key(kek, key, version))


def initial_keyring_data(algorithm: str, now: str | None = None, kek: bytes | None = None) -> dict[str, str]:
    """Secret ``data`` (base64 values) for a new keyring: version 1, primary, 32 random bytes (wrapped under
    ``kek`` when given)."""
    manifest = KeyringManifest(
        generation=1,
        algorithm=algorithm,
        versions=(KeyVersionInfo(id=1, state="primary", created=now or now_rfc3339()),),
    )
    name, value = _material(1, kek)
    return {MANIFEST_FILE: _encode(manifest), name: value}


def is_wrapped(secret_data: Mapping[str, Any], version: int) -> bool:
    """True when ``version``'s material in the Secret data is the wrapped form."""
    return wrapped_file(version) in secret_data


def wrapped_versions(secret_data: Mapping[str, Any]) -> tuple[int, ...]:
    """Ids of the listed versions stored wrapped (sorted)."""
    return tuple(sorted(v.id for v in parse_manifest(secret_data).versions if is_wrapped(secret_data, v.id)))


def new_kek_data() -> dict[str, str]:
    """Secret ``data`` for a new key-encryption key: ``kek.key``, 32 random bytes."""
    return {KEK_FILE: _b64(os.urandom(KEY_BYTES))}


def parse_kek(secret_data: Mapping[str, Any] | None, secret_name: str) -> bytes:
    """The KEK bytes from a Secret's base64 ``data``; ValueError (never with key bytes) if absent or not 32 bytes."""
    raw = (secret_data or {}).get(KEK_FILE)
    if not raw:
        raise ValueError(f"Secret {secret_name} has no {KEK_FILE}")
    try:
        kek = base64.b64decode(raw, validate=True)
    except (ValueError, TypeError):
        raise ValueError(f"Secret {secret_name}: {KEK_FILE} is not valid base64") from None
    if len(kek) != KEY_BYTES:
        raise ValueError(f"Secret {secret_name}: {KEK_FILE} holds {len(kek)} bytes, expected {KEY_BYTES}")
    return kek


def versions_not_unwrapping(secret_data: Mapping[str, Any], kek: bytes) -> list[int]:
    """Wrapped versions whose blob does not unwrap under ``kek`` (a KEK that does not belong to this keyring)."""
    bad = []
    for version in wrapped_versions(secret_data):
        try:
            unwrap_key(kek, base64.b64decode(secret_data[wrapped_file(version)]), version)
        except (KeyUnavailable, ValueError):
            bad.append(version)
    return bad


def parse_manifest(secret_data: Mapping[str, Any] | None) -> KeyringManifest:
    """Read the manifest from a Secret's base64 ``data``; raises ValueError (without key bytes) if malformed."""
    if not secret_data or MANIFEST_FILE not in secret_data:
        raise ValueError(f"keyring Secret has no {MANIFEST_FILE}")
    try:
        doc = json.loads(base64.b64decode(secret_data[MANIFEST_FILE]))
        versions = tuple(
            KeyVersionInfo(id=int(v["id"]), state=str(v["state"]), created=str(v.get("created", "")),
                           compromised=bool(v.get("compromised", False)))
            for v in doc["versions"]
        )
        manifest = KeyringManifest(int(doc["generation"]), str(doc["algorithm"]), versions)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"keyring manifest is malformed: {type(exc).__name__}") from None
    missing = [v.id for v in versions if key_file(v.id) not in secret_data and wrapped_file(v.id) not in secret_data]
    if missing:
        raise ValueError(f"keyring manifest lists versions without key material: {missing}")
    both = [v.id for v in versions if key_file(v.id) in secret_data and wrapped_file(v.id) in secret_data]
    if both:
        raise ValueError(f"keyring versions {both} have both a raw (.key) and a wrapped (.wrapped) key file")
    if sum(1 for v in versions if v.state == "primary") != 1:
        raise ValueError("keyring manifest must have exactly one primary version")
    return manifest


def _encode(manifest: KeyringManifest) -> str:
    return base64.b64encode(manifest.to_json().encode()).decode()


def add_version(data: Mapping[str, str], new_id: int, now: str | None = None,
                compromised: tuple[int, ...] = (), kek: bytes | None = None) -> dict[str, str]:
    """Secret data with version ``new_id`` added as decrypt-only (fresh random key), generation + 1.

    The new version takes the form of the current primary: wrapped under ``kek`` (required then) when the
    primary is wrapped, raw otherwise, so a keyring keeps the form it was created with. Versions listed in
    ``compromised`` are marked so nodes stop writing with them at once. Idempotent: if ``new_id`` is already
    present only the compromised marks are (re)applied.
    """
    manifest = parse_manifest(data)
    out = dict(data)
    versions = [replace(v, compromised=v.compromised or v.id in compromised) for v in manifest.versions]
    if not any(v.id == new_id for v in versions):
        if key_file(new_id) in out or wrapped_file(new_id) in out:
            raise ValueError(f"key material for unlisted version {new_id} already exists")
        wrapped = manifest.primary is not None and is_wrapped(data, manifest.primary)
        if wrapped and kek is None:
            raise ValueError(f"the keyring's primary version {manifest.primary} is wrapped: adding version "
                             f"{new_id} needs the key-encryption key")
        versions.append(KeyVersionInfo(id=new_id, state="decrypt-only", created=now or now_rfc3339()))
        name, value = _material(new_id, kek if wrapped else None)
        out[name] = value
    new = KeyringManifest(manifest.generation + 1, manifest.algorithm, tuple(versions))
    if new.versions == manifest.versions:
        return dict(data)
    out[MANIFEST_FILE] = _encode(new)
    return out


def promote(data: Mapping[str, str], new_id: int) -> dict[str, str]:
    """Secret data with ``new_id`` primary and every other version decrypt-only (no-op if already so)."""
    manifest = parse_manifest(data)
    if not any(v.id == new_id for v in manifest.versions):
        raise ValueError(f"cannot promote version {new_id}: it is not in the keyring")
    if manifest.primary == new_id:
        return dict(data)
    versions = tuple(replace(v, state="primary" if v.id == new_id else "decrypt-only") for v in manifest.versions)
    out = dict(data)
    out[MANIFEST_FILE] = _encode(KeyringManifest(manifest.generation + 1, manifest.algorithm, versions))
    return out


def retire(data: Mapping[str, str], version: int) -> dict[str, str]:
    """Secret data without ``version`` (manifest entry and key material, raw or wrapped); refuses to drop the
    primary."""
    manifest = parse_manifest(data)
    if manifest.primary == version:
        raise ValueError(f"cannot retire version {version}: it is the primary")
    files = (key_file(version), wrapped_file(version))
    if not any(v.id == version for v in manifest.versions):
        return {k: v for k, v in data.items() if k not in files}
    versions = tuple(v for v in manifest.versions if v.id != version)
    out = {k: v for k, v in data.items() if k not in files}
    out[MANIFEST_FILE] = _encode(KeyringManifest(manifest.generation + 1, manifest.algorithm, versions))
    return out
