"""Test helper: write a keyring directory exactly as kubelet mounts a Secret (files -> ..data -> timestamped dir)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Collection
from pathlib import Path

from chronoshard.shardnode.keys.provider import wrap_key


def write_keyring(directory: Path, generation: int, versions: dict[int, tuple[str, bytes]],
                  manifest_text: str | None = None, kek: bytes | None = None,
                  wrapped: Collection[int] = ()) -> Path:
    """Publish a new snapshot and swap ``..data`` atomically, like kubelet's AtomicWriter.

    Versions in ``wrapped`` are stored as ``v<id>.wrapped`` under ``kek`` (as the operator does with a KEK).
    """
    directory.mkdir(parents=True, exist_ok=True)
    snap = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    snap.mkdir()
    manifest = {"format": 1, "generation": generation, "algorithm": "AES-256-GCM",
                "versions": [{"id": vid, "state": st, "created": "2026-11-21T10:00:00Z"}
                             for vid, (st, _) in sorted(versions.items())]}
    (snap / "keyring.json").write_text(manifest_text if manifest_text is not None else json.dumps(manifest))
    names = ["keyring.json"]
    for vid, (_, material) in versions.items():
        if vid in wrapped:
            assert kek is not None, "wrapped versions need a KEK"
            names.append(f"v{vid}.wrapped")
            (snap / names[-1]).write_bytes(wrap_key(kek, material, vid))
        else:
            names.append(f"v{vid}.key")
            (snap / names[-1]).write_bytes(material)
    tmp = directory / "..data_tmp"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(snap.name, tmp)
    os.rename(tmp, directory / "..data")  # the atomic swap readers must cope with
    for name in names:
        link = directory / name
        if not link.is_symlink():
            os.symlink(f"..data/{name}", link)
    return snap


def write_kek(directory: Path, kek: bytes) -> Path:
    """Publish the KEK Secret (``kek.key``) in the same kubelet layout."""
    directory.mkdir(parents=True, exist_ok=True)
    snap = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    snap.mkdir()
    (snap / "kek.key").write_bytes(kek)
    tmp = directory / "..data_tmp"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(snap.name, tmp)
    os.rename(tmp, directory / "..data")
    if not (directory / "kek.key").is_symlink():
        os.symlink("..data/kek.key", directory / "kek.key")
    return snap
