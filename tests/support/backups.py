"""Test helper: history versions sealed as the shadow seals them, their reference state, and bootstrap.json."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from chronoshard.shardnode.keys.keyring import Keyring
from chronoshard.shardnode.shadow.backup import ExportBatch
from chronoshard.shardnode.shadow.codec import Compressor
from chronoshard.shardnode.shadow.columnar import MetaRow
from chronoshard.shardnode.shadow.config import ColdSettings
from chronoshard.shardnode.shadow.sealing import seal_version

T0 = 1_764_000_000.0
Version = tuple[MetaRow, bytes | None, bytes | None]  # metadata, sealed frame, plaintext (None for deletes)


def make_history(ring: Keyring, *, keys: int, versions: int, tables: Sequence[str] = ("orders", "users"),
                 delete_share: float = 0.15, seed: int = 1, compressor: Compressor | None = None,
                 start_lsn: int = 1, step: float = 1.0) -> list[Version]:
    """``versions`` random puts and deletes over ``keys`` keys, ``step`` s apart from T0, sealed under ``ring``."""
    rnd = random.Random(seed)
    comp = compressor or Compressor()
    out: list[Version] = []
    for lsn in range(start_lsn, start_lsn + versions):
        table, key = rnd.choice(tables), f"k{rnd.randrange(keys):07d}"
        t = T0 + lsn * step
        if rnd.random() < delete_share:
            out.append((MetaRow(lsn, t, table, key, "delete", None, 0, 0), None, None))
            continue
        plain = json.dumps({"key": key, "lsn": lsn, "pad": rnd.randbytes(rnd.randrange(0, 200)).hex()}).encode()
        sealed = seal_version(ring, table, key, lsn, plain, comp)
        out.append((MetaRow(lsn, t, table, key, "put", sealed.key_version, len(plain), sealed.stored_size),
                    sealed.frame, plain))
    return out


def state_at(versions: Sequence[Version], *, time: float | None = None,
             before: float | None = None) -> dict[tuple[str, str], bytes]:
    """Every live key's plaintext at ``time`` (inclusive) / ``before`` (exclusive) by replaying in LSN order."""
    state: dict[tuple[str, str], bytes] = {}
    for row, _, plain in sorted(versions, key=lambda v: v[0].lsn):
        if (time is not None and row.time > time) or (before is not None and row.time >= before):
            continue
        if plain is None:
            state.pop((row.table, row.key), None)
        else:
            state[(row.table, row.key)] = plain
    return state


def batch_of(versions: Sequence[Version]) -> ExportBatch:
    """An export batch of these versions."""
    return ExportBatch([v[0] for v in versions], [v[1] for v in versions])


def rfc3339(t: float) -> str:
    """Unix seconds as RFC 3339 in UTC."""
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def write_bootstrap_json(path: Path, cold: ColdSettings, *, shard: int | None = 0, point: float | None = None,
                         source: tuple[str, str] = ("prod", "orders"), tables: list[str] | None = None) -> Path:
    """bootstrap.json as the operator writes it (``cold`` shaped like shadow.json's)."""
    doc: dict[str, object] = {
        "cold": {"endpoint": cold.endpoint, "bucket": cold.bucket, "prefix": cold.prefix, "region": cold.region,
                 "forcePathStyle": cold.force_path_style, "credentialsDir": cold.credentials_dir},
        "source": {"namespace": source[0], "name": source[1]},
        "pointInTime": rfc3339(point) if point is not None else None,
        "tables": tables,
    }
    if shard is not None:
        doc["shards"] = {"index": shard}
    path.write_text(json.dumps(doc))
    return path
