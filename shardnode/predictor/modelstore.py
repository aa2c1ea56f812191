"""Model state on the shard's volume: a checksummed file, so a torn or tampered file is refused."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

from .features import FEATURE_NAMES

MAGIC = b"CHRONOSHARD-PREDICTOR-MODEL 1\n"
MODEL_FILE = "model.bin"
KEY_MODEL_FILE = "keymodel.bin"  # the table-key pipeline's model, beside the block model


class ModelLoadError(Exception):
    """The model file is missing, torn, corrupt or from another feature layout."""


def save_model(directory: Path, scorer: Any, meta: dict[str, Any], name: str = MODEL_FILE) -> Path:
    """Write the scorer atomically (temp file + fsync + rename) with a SHA-256 over the payload."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = pickle.dumps(scorer, protocol=pickle.HIGHEST_PROTOCOL)
    header = {
        "sha256": hashlib.sha256(payload).hexdigest(),
        "features": list(FEATURE_NAMES),
        "kind": getattr(scorer, "kind", "?"),
        "saved": time.time(),
        **meta,
    }
    path = directory / name
    tmp = directory / (name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + json.dumps(header).encode() + b"\n" + payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_model(directory: Path, name: str = MODEL_FILE) -> tuple[Any, dict[str, Any]]:
    """Read and verify the model; raise ModelLoadError saying why it cannot be used."""
    path = directory / name
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelLoadError(f"no model file at {path}") from exc
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc.strerror}") from exc
    if not data.startswith(MAGIC):
        raise ModelLoadError(f"model file {path} is corrupt: bad magic")
    rest = data[len(MAGIC):]
    nl = rest.find(b"\n")
    try:
        header = json.loads(rest[:nl]) if nl >= 0 else None
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise ModelLoadError(f"model file {path} is corrupt: unreadable header")
    payload = rest[nl + 1:]
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise ModelLoadError(f"model file {path} is corrupt: checksum mismatch")
    if header.get("features") != list(FEATURE_NAMES):
        raise ModelLoadError(f"model file {path} was trained on another feature layout")
    try:
        # Only our own checksummed file on the shard's private volume is ever unpickled.
        scorer = pickle.loads(payload)
    except Exception as exc:  # unpickling can raise nearly anything on bad bytes
        raise ModelLoadError(f"model file {path} is corrupt: {type(exc).__name__}") from exc
    if not hasattr(scorer, "predict"):
        raise ModelLoadError(f"model file {path} holds no scorer")
    return scorer, header
