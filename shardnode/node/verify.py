"""Data Integrity Verifier: decrypt-and-check scans (full or sampled) and a Merkle-style shard digest."""

from __future__ import annotations

import hashlib
import sqlite3
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from chronoshard.shardnode.keys.crypto import IntegrityError, open_block
from chronoshard.shardnode.keys.keyring import Keyring, MissingKeyVersion

from .store import KEYSPACE_OFFSET

MAX_PROBLEMS = 100
BUCKET_BITS = 8  # 256 leaves-of-the-root, each a contiguous keyspace range


def leaf_hash(table: str, key: str, checksum: bytes) -> bytes:
    """Hash of one block's identity and plaintext checksum (independent of key version and nonce)."""
    t, k = table.encode(), key.encode()
    return hashlib.sha256(struct.pack(">H", len(t)) + t + struct.pack(">I", len(k)) + k + checksum).digest()


class Digest:
    """Merkle-style digest: leaves hashed in keyspace order into 256 range buckets, buckets into a root.

    Two copies of a shard (even under different key versions) have equal roots iff they hold the same
    (table, key, plaintext checksum) set; unequal buckets name the keyspace ranges to compare further.
    """

    def __init__(self) -> None:
        self._buckets: dict[int, Any] = {}
        self.count = 0

    def add(self, keyspace_id: int, table: str, key: str, checksum: bytes) -> None:
        """Add one block; callers must add in (keyspace id, table, key) order."""
        b = keyspace_id >> (64 - BUCKET_BITS)
        h = self._buckets.get(b)
        if h is None:
            h = self._buckets[b] = hashlib.sha256()
        h.update(leaf_hash(table, key, checksum))
        self.count += 1

    def result(self) -> dict[str, Any]:
        """Root and non-empty bucket hashes as hex."""
        buckets = {f"{b:02x}": h.hexdigest() for b, h in sorted(self._buckets.items())}
        root = hashlib.sha256()
        for b in range(1 << BUCKET_BITS):
            h = self._buckets.get(b)
            root.update(h.digest() if h else b"\x00" * 32)
        return {"algorithm": "sha256-keyspace-256", "root": root.hexdigest(), "blocks": self.count,
                "buckets": buckets}


@dataclass
class VerifyReport:
    """The outcome of one verify run."""

    mode: str
    started: float
    finished: float | None = None
    scanned: int = 0
    ok: int = 0
    corrupt: int = 0
    missing_key: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)
    digest: dict[str, Any] | None = None

    def record(self, table: str, key: str, version: int, reason: str, message: str) -> None:
        """Count one failed block (message never holds key bytes)."""
        if reason == "missing-key":
            self.missing_key += 1
        else:
            self.corrupt += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append({"table": table, "key": key, "keyVersion": version, "reason": reason,
                                  "message": message})

    def to_json(self) -> dict[str, Any]:
        """JSON form for `GET /v1/verify`."""
        return {"mode": self.mode, "started": self.started, "finished": self.finished, "scanned": self.scanned,
                "ok": self.ok, "corrupt": self.corrupt, "missingKey": self.missing_key,
                "passed": self.finished is not None and self.corrupt == 0 and self.missing_key == 0,
                "problems": self.problems, "digest": self.digest}


def check_blocks(keyring: Keyring, rows: Iterable[tuple[str, str, int, bytes, bytes]], report: VerifyReport) -> None:
    """Decrypt and checksum every (table, key, version, checksum, frame) row into ``report``."""
    for table, key, version, cs, frame in rows:
        report.scanned += 1
        try:
            open_block(keyring, table, key, bytes(frame), bytes(cs))
            report.ok += 1
        except IntegrityError as exc:
            report.record(table, key, version, exc.reason, str(exc))
        except MissingKeyVersion as exc:
            report.record(table, key, version, "missing-key", str(exc))


class VerifyCancelled(RuntimeError):
    """The process is shutting down; the scan stopped early and has no result."""


def run_verify(conn: sqlite3.Connection, keyring: Keyring, sample: int | None = None,
               should_stop: Callable[[], bool] | None = None) -> VerifyReport:
    """Full scan (sample=None) or a random sample of ``sample`` blocks, plus the digest, in one read snapshot."""
    stop = should_stop or (lambda: False)

    def checked(rows: Iterable[Any]) -> Iterator[Any]:
        for i, row in enumerate(rows):
            if i % 256 == 0 and stop():
                raise VerifyCancelled("verify stopped: shutting down")
            yield row

    report = VerifyReport(mode="full" if sample is None else "sample", started=time.time())
    conn.execute("BEGIN")  # one snapshot: the digest and the checks see the same shard state
    try:
        digest = Digest()
        if sample is None:
            cur = conn.execute("SELECT keyspace, tbl, key, key_version, checksum, frame FROM blocks "
                               "ORDER BY keyspace, tbl, key")
            for ks, t, k, v, cs, frame in checked(cur):
                digest.add(ks + KEYSPACE_OFFSET, t, k, bytes(cs))
                check_blocks(keyring, [(t, k, v, cs, frame)], report)
        else:
            for ks, t, k, cs in checked(conn.execute("SELECT keyspace, tbl, key, checksum FROM blocks "
                                                     "ORDER BY keyspace, tbl, key")):
                digest.add(ks + KEYSPACE_OFFSET, t, k, bytes(cs))
            # Pick ids first (rowids only, no blobs read), then load just the sampled rows.
            ids = [r[0] for r in conn.execute("SELECT id FROM blocks ORDER BY random() LIMIT ?", (sample,))]
            rows = (conn.execute("SELECT tbl, key, key_version, checksum, frame FROM blocks WHERE id = ?",
                                 (i,)).fetchone() for i in ids)
            check_blocks(keyring, checked(rows), report)
        report.digest = digest.result()
    finally:
        conn.execute("COMMIT")
    report.finished = time.time()
    return report
