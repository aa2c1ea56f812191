"""The keyring Secret's content: the manifest and the key versions (pure; keys never leave this module's
return values except into the Secret)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

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
    """The Secret key (file name) holding key version ``version``."""
    return f"v{version}.key"


def initial_keyring_data(algorithm: str, now: str | None = None) -> dict[str, str]:
    """Secret ``data`` (base64 values) for a new keyring: version 1, primary, 32 random bytes."""
    manifest = KeyringManifest(
        generation=1,
        algorithm=algorithm,
        versions=(KeyVersionInfo(id=1, state="primary", created=now or now_rfc3339()),),
    )
    return {
        MANIFEST_FILE: base64.b64encode(manifest.to_json().encode()).decode(),
        key_file(1): base64.b64encode(os.urandom(KEY_BYTES)).decode(),
    }


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
    missing = [v.id for v in versions if key_file(v.id) not in secret_data]
    if missing:
        raise ValueError(f"keyring manifest lists versions without key material: {missing}")
    if sum(1 for v in versions if v.state == "primary") != 1:
        raise ValueError("keyring manifest must have exactly one primary version")
    return manifest


def _encode(manifest: KeyringManifest) -> str:
    return base64.b64encode(manifest.to_json().encode()).decode()


def add_version(data: Mapping[str, str], new_id: int, now: str | None = None,
                compromised: tuple[int, ...] = ()) -> dict[str, str]:
    """Secret data with version ``new_id`` added as decrypt-only (fresh random key), generation + 1.

    Versions listed in ``compromised`` are marked so nodes stop writing with them at once. Idempotent: if
    ``new_id`` is already present only the compromised marks are (re)applied.
    """
    manifest = parse_manifest(data)
    out = dict(data)
    versions = [replace(v, compromised=v.compromised or v.id in compromised) for v in manifest.versions]
    if not any(v.id == new_id for v in versions):
        if key_file(new_id) in out:
            raise ValueError(f"key material for unlisted version {new_id} already exists")
        versions.append(KeyVersionInfo(id=new_id, state="decrypt-only", created=now or now_rfc3339()))
        out[key_file(new_id)] = base64.b64encode(os.urandom(KEY_BYTES)).decode()
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
    """Secret data without ``version`` (manifest entry and key material); refuses to drop the primary."""
    manifest = parse_manifest(data)
    if manifest.primary == version:
        raise ValueError(f"cannot retire version {version}: it is the primary")
    if not any(v.id == version for v in manifest.versions):
        out = dict(data)
        out.pop(key_file(version), None)
        return out
    versions = tuple(v for v in manifest.versions if v.id != version)
    out = {k: v for k, v in data.items() if k != key_file(version)}
    out[MANIFEST_FILE] = _encode(KeyringManifest(manifest.generation + 1, manifest.algorithm, versions))
    return out
