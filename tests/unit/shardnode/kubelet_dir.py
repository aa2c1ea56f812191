"""Test helper: write a keyring directory exactly as kubelet mounts a Secret (files -> ..data -> timestamped dir)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def write_keyring(directory: Path, generation: int, versions: dict[int, tuple[str, bytes]],
                  manifest_text: str | None = None) -> Path:
    """Publish a new snapshot and swap ``..data`` atomically, like kubelet's AtomicWriter."""
    directory.mkdir(parents=True, exist_ok=True)
    snap = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    snap.mkdir()
    manifest = {"format": 1, "generation": generation, "algorithm": "AES-256-GCM",
                "versions": [{"id": vid, "state": st, "created": "2026-11-21T10:00:00Z"}
                             for vid, (st, _) in sorted(versions.items())]}
    (snap / "keyring.json").write_text(manifest_text if manifest_text is not None else json.dumps(manifest))
    for vid, (_, material) in versions.items():
        (snap / f"v{vid}.key").write_bytes(material)
    names = ["keyring.json"] + [f"v{vid}.key" for vid in versions]
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
