"""Data Integrity Verifier: decrypt-and-check scans (full or sampled), a Merkle-style shard digest, and the
runner that does one scan at a time beside the serving event loop."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chronoshard.shardnode.keys.crypto import IntegrityError, open_block
from chronoshard.shardnode.keys.keyring import Keyring, MissingKeyVersion

from .store import KEYSPACE_OFFSET, connect

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


class VerifyRunning(RuntimeError):
    """A verify run is already in progress (one at a time)."""


class VerifyRunner:
    """Runs one verify scan at a time in a worker thread, keeps the last report or error, and tells
    ``on_report`` callbacks about each finished scan."""

    def __init__(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        self._should_stop = should_stop
        self._stopping = False
        self._task: asyncio.Task[VerifyReport] | None = None
        self.last: VerifyReport | None = None
        self.error: str | None = None
        self.on_report: list[Callable[[VerifyReport], None]] = []

    @property
    def running(self) -> bool:
        """True while a scan is in progress."""
        return self._task is not None and not self._task.done()

    def start(self, db_path: Path, keyring: Keyring, sample: int | None) -> None:
        """Start a full scan (sample=None) or a sampled one of the store at ``db_path``; VerifyRunning if one runs."""
        if self.running:
            raise VerifyRunning("a verify run is already in progress")
        self._task = asyncio.create_task(self._run(db_path, keyring, sample), name="verify")

    def _stop_requested(self) -> bool:
        return self._stopping or self._should_stop()

    def _scan(self, db_path: Path, keyring: Keyring, sample: int | None) -> VerifyReport:
        conn = connect(db_path)  # its own connection: a long read snapshot must not occupy a reader slot
        try:
            return run_verify(conn, keyring, sample, should_stop=self._stop_requested)
        finally:
            conn.close()

    async def _run(self, db_path: Path, keyring: Keyring, sample: int | None) -> VerifyReport:
        try:
            report = await asyncio.to_thread(self._scan, db_path, keyring, sample)
        except Exception as exc:
            self.error = f"verify failed: {exc}"
            raise
        self.error = None
        self.last = report
        for cb in self.on_report:
            cb(report)
        return report

    def status(self) -> dict[str, Any]:
        """The `GET /v1/verify` body: state, the last error and the last report."""
        state = "running" if self.running else ("failed" if self.error else ("done" if self.last else "idle"))
        return {"state": state, "error": self.error, "last": self.last.to_json() if self.last else None}

    async def stop(self) -> None:
        """Stop a running scan (the thread checks between blocks; its result is dropped)."""
        self._stopping = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
