"""Test helper: a ShardSet's TLS files (``tls.crt``, ``tls.key``, ``ca.crt``) made with the operator's own
certificate code and published exactly as kubelet mounts the ``<shardset>-tls`` Secret."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from chronoshard.operator import certs

NAMESPACE, NAME = "shop", "orders"


def now() -> datetime:
    """The current time, timezone-aware (what ``certs`` takes)."""
    return datetime.now(UTC)


def new_ca(name: str = NAME) -> certs.KeyPair:
    """A fresh CA for ShardSet ``shop/<name>``."""
    return certs.new_ca(NAMESPACE, name, now())


def shard_pair(ca: certs.KeyPair, shards: int = 2, lifetime: timedelta = certs.SERVING_LIFETIME,
               name: str = NAME) -> certs.KeyPair:
    """The pods' serving + client certificate for ``shop/<name>`` (SANs include localhost and 127.0.0.1)."""
    return certs.issue_shard_certificate(ca, NAMESPACE, name, shards, [], now(), lifetime)


def publish(directory: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` as a new snapshot and swap ``..data`` atomically, like kubelet's AtomicWriter."""
    directory.mkdir(parents=True, exist_ok=True)
    snap = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    snap.mkdir()
    for name, content in files.items():
        (snap / name).write_bytes(content)
    tmp = directory / "..data_tmp"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(snap.name, tmp)
    os.rename(tmp, directory / "..data")
    for name in files:
        link = directory / name
        if not link.is_symlink():
            os.symlink(f"..data/{name}", link)
    return snap


def write_tls_dir(directory: Path, pair: certs.KeyPair, ca: certs.KeyPair) -> Path:
    """Publish a ``<shardset>-tls`` Secret's files: the pair and the CA's certificate."""
    return publish(directory, {"tls.crt": pair.cert, "tls.key": pair.key, "ca.crt": ca.cert})
