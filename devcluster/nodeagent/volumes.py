"""Volume materialisation: Secret/ConfigMap payloads as files, written atomically the way kubelet does it.

Layout of a materialised Secret/ConfigMap volume (identical to kubelet's AtomicWriter):

    <dir>/..2026_11_22_00_01_02.123456789/<files>   one immutable snapshot per change
    <dir>/..data -> ..2026_11_22_00_01_02.123456789  swapped with one rename(2), so atomic
    <dir>/<key>  -> ..data/<key>                      stable user-visible names

A reader that resolves ``..data`` once and reads every file from that snapshot never sees a mix of
two versions; that is the contract docs/interfaces.md gives the keyring and partition-map readers.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Lookup = Callable[[str, str], Mapping[str, Any] | None]

DATA_DIR = "..data"
_DATA_TMP = "..data_tmp"


class VolumeError(Exception):
    """A volume cannot be materialised (missing object or key, bad item path)."""


def _validate_rel_path(path: str) -> None:
    # kubelet rejects these too: an item path must stay inside the volume and not shadow our names.
    parts = path.split("/")
    if not path or path.startswith("/") or ".." in parts or parts[0].startswith(".."):
        raise VolumeError(f"invalid item path {path!r}")


def project_items(
    data: Mapping[str, bytes],
    items: list[dict[str, Any]] | None,
    default_mode: int,
    optional: bool,
    source: str,
) -> dict[str, tuple[bytes, int]]:
    """Select and rename keys as a volume's ``items`` say; return {relative path: (content, mode)}."""
    if not items:
        return {key: (value, default_mode) for key, value in data.items()}
    out: dict[str, tuple[bytes, int]] = {}
    for item in items:
        key, path = item["key"], item["path"]
        _validate_rel_path(path)
        if key not in data:
            if optional:
                continue
            raise VolumeError(f"{source} has no key {key!r}")
        mode = item.get("mode")
        out[path] = (data[key], default_mode if mode is None else int(mode))
    return out


def secret_payload(secret: Mapping[str, Any] | None) -> dict[str, bytes]:
    """Decode a Secret's ``data`` (base64) and ``stringData`` into raw bytes per key."""
    if secret is None:
        return {}
    out = {k: base64.b64decode(v or "") for k, v in (secret.get("data") or {}).items()}
    out.update({k: v.encode() for k, v in (secret.get("stringData") or {}).items()})
    return out


def configmap_payload(configmap: Mapping[str, Any] | None) -> dict[str, bytes]:
    """Merge a ConfigMap's ``data`` (text) and ``binaryData`` (base64) into raw bytes per key."""
    if configmap is None:
        return {}
    out = {k: (v or "").encode() for k, v in (configmap.get("data") or {}).items()}
    out.update({k: base64.b64decode(v or "") for k, v in (configmap.get("binaryData") or {}).items()})
    return out


def _current_snapshot(target: Path) -> Path | None:
    link = target / DATA_DIR
    try:
        return target / os.readlink(link)
    except (FileNotFoundError, OSError):
        return None


def _snapshot_matches(snapshot: Path, payload: Mapping[str, tuple[bytes, int]]) -> bool:
    existing: set[str] = set()
    for root, _dirs, files in os.walk(snapshot):
        for name in files:
            existing.add(os.path.relpath(os.path.join(root, name), snapshot))
    if existing != set(payload):
        return False
    for rel, (content, mode) in payload.items():
        path = snapshot / rel
        if (path.stat().st_mode & 0o777) != mode or path.read_bytes() != content:
            return False
    return True


def write_atomic(target: Path, payload: Mapping[str, tuple[bytes, int]]) -> bool:
    """Make ``target`` show exactly ``payload``; swap ``..data`` in one rename. Return True if it changed."""
    for rel in payload:
        _validate_rel_path(rel)
    target.mkdir(parents=True, exist_ok=True)
    old = _current_snapshot(target)
    if old is not None and old.is_dir() and _snapshot_matches(old, payload):
        return False

    stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime()) + f".{time.time_ns() % 1_000_000_000:09d}"
    new = Path(tempfile.mkdtemp(prefix=f"..{stamp}.", dir=target))
    new.chmod(0o755)
    for rel, (content, mode) in payload.items():
        path = new / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
    # Make the snapshot durable before it becomes visible.
    for rel in payload:
        with open(new / rel, "rb") as fh:
            os.fsync(fh.fileno())

    tmp_link = target / _DATA_TMP
    if tmp_link.is_symlink():
        tmp_link.unlink()
    os.symlink(new.name, tmp_link)
    os.replace(tmp_link, target / DATA_DIR)

    wanted_top = {rel.split("/")[0] for rel in payload}
    for top in wanted_top:
        user_link = target / top
        if not user_link.is_symlink():
            os.symlink(f"{DATA_DIR}/{top}", user_link)
    for entry in target.iterdir():
        if entry.name.startswith(".."):
            continue
        if entry.is_symlink() and entry.name not in wanted_top:
            entry.unlink()
    if old is not None and old.is_dir() and old != new:
        shutil.rmtree(old, ignore_errors=True)
    return True


def read_snapshot(target: Path) -> dict[str, bytes]:
    """Read every file of a materialised volume from ONE ``..data`` snapshot (the reader protocol).

    Resolve ``..data``, read, then check it still names the same snapshot: if a writer swapped it
    meanwhile, the old directory may have been half removed, so read again from the new one.
    """
    while True:
        name = os.readlink(target / DATA_DIR)
        snapshot = target / name
        out: dict[str, bytes] = {}
        try:
            for root, _dirs, files in os.walk(snapshot, onerror=_raise):
                for fname in files:
                    full = os.path.join(root, fname)
                    with open(full, "rb") as fh:
                        out[os.path.relpath(full, snapshot)] = fh.read()
        except FileNotFoundError:
            continue
        if os.readlink(target / DATA_DIR) == name:
            return out


def _raise(exc: OSError) -> None:
    raise exc


def volume_payload(
    volume: Mapping[str, Any],
    lookup: Lookup,
    field: Callable[[str], str] | None = None,
    token: Callable[[str | None, int], str] | None = None,
) -> dict[str, tuple[bytes, int]] | None:
    """Files a Secret/ConfigMap/downwardAPI/projected volume should hold, or None for other volume types.

    ``lookup(kind, name)`` returns the object as a dict ("Secret" or "ConfigMap") or None if absent;
    ``field(fieldPath)`` answers downward-API fields; ``token(audience, expirationSeconds)`` returns a
    service account token (the TokenRequest API) for projected ``serviceAccountToken`` sources.
    """
    if "downwardAPI" in volume:
        src = volume["downwardAPI"] or {}
        return _downward_payload(src.get("items") or [], src.get("defaultMode"), field)
    if "secret" in volume:
        src = volume["secret"] or {}
        return _source_payload("Secret", src.get("secretName", ""), src, src.get("defaultMode"), lookup)
    if "configMap" in volume:
        src = volume["configMap"] or {}
        return _source_payload("ConfigMap", src.get("name", ""), src, src.get("defaultMode"), lookup)
    if "projected" in volume:
        proj = volume["projected"] or {}
        out: dict[str, tuple[bytes, int]] = {}
        for source in proj.get("sources") or []:
            if "secret" in source:
                src = source["secret"] or {}
                out.update(_source_payload("Secret", src.get("name", ""), src, proj.get("defaultMode"), lookup))
            elif "configMap" in source:
                src = source["configMap"] or {}
                out.update(
                    _source_payload("ConfigMap", src.get("name", ""), src, proj.get("defaultMode"), lookup)
                )
            elif "downwardAPI" in source:
                items = (source["downwardAPI"] or {}).get("items") or []
                out.update(_downward_payload(items, proj.get("defaultMode"), field))
            elif "serviceAccountToken" in source:
                src = source["serviceAccountToken"]
                if token is None:
                    raise VolumeError("service account tokens are not available")
                _validate_rel_path(src["path"])
                mode = 0o644 if proj.get("defaultMode") is None else int(proj["defaultMode"])
                out[src["path"]] = (token(src.get("audience"), int(src.get("expirationSeconds", 3607))).encode(), mode)
            else:
                raise VolumeError(f"unsupported projected source {sorted(source)}")
        return out
    return None


def _downward_payload(
    items: list[dict[str, Any]], default_mode: int | None, field: Callable[[str], str] | None
) -> dict[str, tuple[bytes, int]]:
    out: dict[str, tuple[bytes, int]] = {}
    for item in items:
        _validate_rel_path(item["path"])
        if "fieldRef" not in item or field is None:
            raise VolumeError(f"downwardAPI item {item['path']!r}: only fieldRef is supported")
        mode = item.get("mode", default_mode)
        out[item["path"]] = (field(item["fieldRef"]["fieldPath"]).encode(), 0o644 if mode is None else int(mode))
    return out


def _source_payload(
    kind: str, name: str, src: Mapping[str, Any], default_mode: int | None, lookup: Lookup
) -> dict[str, tuple[bytes, int]]:
    obj = lookup(kind, name)
    optional = bool(src.get("optional"))
    if obj is None and not optional:
        raise VolumeError(f'{kind.lower()} "{name}" not found')
    data = secret_payload(obj) if kind == "Secret" else configmap_payload(obj)
    mode = 0o644 if default_mode is None else int(default_mode)
    return project_items(data, src.get("items"), mode, optional, f'{kind.lower()} "{name}"')
