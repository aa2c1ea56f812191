"""The shard's block store: SQLite (WAL, synchronous=FULL) with a single group-committing writer thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from chronoshard.shardnode.keys.crypto import CompromisedVersion, seal_block
from chronoshard.shardnode.keys.keyring import KeyNotHeld, Keyring, MissingKeyVersion
from chronoshard.shardnode.keyspace.partitioning import keyspace_id

from . import changelog, consumers, idempotency
from .idempotency import Replayed

log = logging.getLogger(__name__)

T = TypeVar("T")
DB_NAME = "blocks.sqlite3"
# Keyspace ids are unsigned 64-bit; SQLite integers are signed. Shifting by 2^63 keeps the order,
# so a keyspace range is still one contiguous index range.
KEYSPACE_OFFSET = 1 << 63
MAX_GROUP = 256  # jobs committed together; bounds the latency one commit can add

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    id INTEGER PRIMARY KEY,
    tbl TEXT NOT NULL,
    key TEXT NOT NULL,
    keyspace INTEGER NOT NULL,      -- keyspace_id(tbl, key) - 2^63
    key_version INTEGER NOT NULL,
    size INTEGER NOT NULL,          -- plaintext bytes
    checksum BLOB NOT NULL,         -- XXH3-128 of the plaintext
    frame BLOB NOT NULL,            -- docs/block-format.md
    lsn INTEGER NOT NULL,           -- change-log LSN of the last write or rewrap
    UNIQUE (tbl, key)
);
CREATE INDEX IF NOT EXISTS blocks_keyspace ON blocks (keyspace, tbl, key);
CREATE INDEX IF NOT EXISTS blocks_version ON blocks (key_version);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
""" + changelog.SCHEMA + consumers.SCHEMA + idempotency.SCHEMA


# A queued write: what to run in the transaction, the claim that decides between the writer beginning it and its
# caller cancelling it, and (for an event-loop caller) the asyncio future its outcome is handed to.
_Job = tuple[Callable[[sqlite3.Connection], Any], concurrent.futures.Future[Any], "asyncio.Future[Any] | None"]


class StoreLocked(RuntimeError):
    """Another process already serves this data directory."""


class NoKeyring(RuntimeError):
    """No keyring is loaded yet, so nothing can be encrypted."""


class PreconditionFailed(Exception):
    """A conditional write found the block at another LSN than the caller expected (0: absent)."""

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(f"block is at LSN {current}, not {expected}")
        self.expected, self.current = expected, current


@dataclass(frozen=True)
class StoredBlock:
    """A block row as stored (ciphertext frame, never plaintext)."""

    table: str
    key: str
    keyspace_id: int
    key_version: int
    size: int
    checksum: bytes
    frame: bytes
    lsn: int


@dataclass(frozen=True)
class Sealed:
    """A block encrypted before its write was queued; the writer uses it only while ``keyring`` is still the
    loaded one (keyrings are replaced, never changed), so the version is still the primary at commit time."""

    keyring: Keyring
    frame: bytes
    checksum: bytes
    version: int


@dataclass(frozen=True)
class WriteResult:
    """What an acknowledged write or delete committed."""

    lsn: int
    key_version: int | None


_BLOCK_COLS = "tbl, key, keyspace, key_version, size, checksum, frame, lsn"


def _row_to_block(row: tuple[Any, ...]) -> StoredBlock:
    t, k, ks, v, size, cs, frame, lsn = row
    return StoredBlock(t, k, ks + KEYSPACE_OFFSET, v, size, bytes(cs), bytes(frame), lsn)


def connect(path: Path) -> sqlite3.Connection:
    """Open a connection with the durability settings every connection must share."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: the WAL is fsynced at every commit, so an acknowledged write survives power loss / kill -9.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def get_meta(conn: sqlite3.Connection, name: str) -> Any:
    """Read a JSON value from the meta table (None if absent)."""
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return json.loads(row[0]) if row else None


def set_meta(conn: sqlite3.Connection, name: str, value: Any) -> None:
    """Write a JSON value to the meta table inside the caller's transaction."""
    conn.execute("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                 (name, json.dumps(value)))


def block_lsn(conn: sqlite3.Connection, table: str, key: str) -> int:
    """The LSN of a block's last write or rewrap (0 if it does not exist)."""
    row = conn.execute("SELECT lsn FROM blocks WHERE tbl = ? AND key = ?", (table, key)).fetchone()
    return int(row[0]) if row else 0


def check_lsn(conn: sqlite3.Connection, table: str, key: str, expected: int | None) -> None:
    """PreconditionFailed unless the block is at ``expected`` (None: no condition). Inside the writer's
    transaction, so no other write can come between the check and the write it guards."""
    if expected is None:
        return
    current = block_lsn(conn, table, key)
    if current != expected:
        raise PreconditionFailed(expected, current)


def put_in_txn(conn: sqlite3.Connection, keyring: Keyring, table: str, key: str, plaintext: bytes, *,
               frames: bool = False, if_lsn: int | None = None, sealed: Sealed | None = None,
               identity: str | None = None) -> WriteResult:
    """Encrypt under the primary and upsert the block plus its change-log entry (caller owns the transaction);
    ``frames``: the entry carries the new frame (consumers exist); ``if_lsn``: only if the block is at that LSN;
    ``sealed``: the block already encrypted, used if it was sealed with ``keyring`` (else sealed again here);
    ``identity``: who made the write, logged with it."""
    check_lsn(conn, table, key, if_lsn)
    if sealed is not None and sealed.keyring is keyring:
        frame, cs, version = sealed.frame, sealed.checksum, sealed.version
    else:
        frame, cs, version = seal_block(keyring, table, key, plaintext)
    lsn = changelog.append(conn, table, key, "put", version, len(plaintext),
                           frame if frames else None, cs if frames else None, identity)
    conn.execute(
        "INSERT INTO blocks (tbl, key, keyspace, key_version, size, checksum, frame, lsn) VALUES (?,?,?,?,?,?,?,?) "
        "ON CONFLICT(tbl, key) DO UPDATE SET key_version=excluded.key_version, size=excluded.size, "
        "checksum=excluded.checksum, frame=excluded.frame, lsn=excluded.lsn",
        (table, key, keyspace_id(table, key) - KEYSPACE_OFFSET, version, len(plaintext), cs, frame, lsn),
    )
    return WriteResult(lsn, version)


def delete_in_txn(conn: sqlite3.Connection, table: str, key: str, *, if_lsn: int | None = None,
                  identity: str | None = None) -> WriteResult | None:
    """Delete a block and log it (with ``identity``, who made it); None (and no log entry) if it did not exist."""
    check_lsn(conn, table, key, if_lsn)
    cur = conn.execute("DELETE FROM blocks WHERE tbl = ? AND key = ?", (table, key))
    if cur.rowcount == 0:
        return None
    return WriteResult(changelog.append(conn, table, key, "delete", None, 0, identity=identity), None)


class Store:
    """Readers use per-thread connections; every write goes through one writer thread that group-commits."""

    def __init__(self, data_dir: Path, keyring: Callable[[], Keyring | None], readers: int = 4) -> None:
        self.path = Path(data_dir) / DB_NAME
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        # One node per data directory: a second writer would only meet "database is locked" mid-request.
        # flock is released by the kernel when the holder dies, so kill -9 never leaves a stale lock.
        self._lock_fd: int | None = os.open(Path(data_dir) / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StoreLocked(f"another process holds {data_dir}") from None
        self._keyring = keyring
        self._writer_conn = connect(self.path)
        self._writer_conn.executescript(SCHEMA)
        changelog.migrate(self._writer_conn)
        # Read by the writer thread for every change it logs; slot changes (run as writer jobs) set it.
        self.frames_enabled = consumers.has_consumers(self._writer_conn)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = [self._writer_conn]
        self._conns_lock = threading.Lock()
        self.reader_pool = concurrent.futures.ThreadPoolExecutor(readers, thread_name_prefix="store-read")
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self.commit_listeners: list[Callable[[], None]] = []
        # Checks a client put/delete passes when it is queued (replication's role check): run on the caller's
        # event loop in the same step as the queueing, so a demotion's no-op job queued after a refusal began
        # comes after every write that was let through.
        self.write_guards: list[Callable[[], None]] = []
        # Committed transactions and the jobs they held (written by the writer thread only): their ratio is the
        # mean group size, which says how much group commit is saving (exported as node metrics).
        self.commits = 0
        self.committed_jobs = 0
        self._writer = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._writer.start()

    # ---- connections -------------------------------------------------------------------------
    def reader(self) -> sqlite3.Connection:
        """This thread's read connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def close(self) -> None:
        """Stop the writer after queued jobs finish, then close every connection."""
        self._jobs.put(None)
        self._writer.join(timeout=30)
        self.reader_pool.shutdown(wait=True)
        with self._conns_lock:
            for conn in self._conns:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._conns.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # ---- writer --------------------------------------------------------------------------------
    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> concurrent.futures.Future[T]:
        """Queue ``fn(conn)`` to run in the writer's next transaction; the future resolves after the commit."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, fut, None))
        return fut

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a write job and wait until it is durable."""
        # Not wrap_future(submit(fn)): that costs one wake-up of the event loop per job, while the writer hands
        # a whole group's outcomes to the loop in one call (_settle). The concurrent future is only the claim.
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        claim: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, claim, waiter))
        try:
            return await waiter
        except asyncio.CancelledError:
            # Not begun: the writer drops it (never made). Begun: it commits, as it did before the cancel.
            claim.cancel()
            raise

    def _write_loop(self) -> None:
        conn = self._writer_conn
        while True:
            first = self._jobs.get()
            if first is None:
                return
            group = [first]
            stop = False
            while len(group) < MAX_GROUP:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            self._run_group(conn, group)
            if stop:
                return

    def _run_group(self, conn: sqlite3.Connection, group: list[_Job]) -> None:
        # A job whose caller cancelled it while it was queued (its deadline passed) is dropped, never made;
        # the rest are marked running, so a late cancel can no longer take back a commit.
        group = [job for job in group if job[1].set_running_or_notify_cancel()]
        if not group:
            return
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, _, _ in group:
                # A savepoint per job: one failing job rolls back only its own changes.
                conn.execute("SAVEPOINT job")
                try:
                    outcomes.append((True, fn(conn)))
                    conn.execute("RELEASE job")
                except BaseException as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((False, exc))
            conn.execute("COMMIT")
        except Exception as exc:  # anything escaping here would kill the only writer thread
            log.error("store commit failed: %s", exc)
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._refresh_frames(conn)  # a slot job of the lost group may have flipped the flag
            _settle(group, [(False, exc)] * len(group))
            return
        self.commits += 1
        self.committed_jobs += len(group)
        _settle(group, outcomes)
        for listener in self.commit_listeners:
            listener()

    def _refresh_frames(self, conn: sqlite3.Connection) -> None:
        try:
            self.frames_enabled = consumers.has_consumers(conn)
        except sqlite3.Error:
            self.frames_enabled = True  # unknown: recording frames is the safe side

    # ---- write API -----------------------------------------------------------------------------
    def current_keyring(self) -> Keyring:
        """The loaded keyring; NoKeyring if none has loaded yet."""
        ring = self._keyring()
        if ring is None:
            raise NoKeyring("no keyring loaded")
        return ring

    def seal_ahead(self, table: str, key: str, plaintext: bytes) -> Sealed | None:
        """Encrypt in the caller's thread before the write is queued, so the writer spends its turn on inserts
        and the commit while the next group is being sealed. None leaves it to the writer, which then seals or
        fails exactly as without this: no keyring, a compromised primary, a wrapped table key not in memory
        (never unwrapped here: the caller may be the event loop), a missing version."""
        ring = self._keyring()
        if ring is None or ring.primary in ring.compromised:
            return None
        try:
            # One key lookup: a second (a probe, then the seal) would count every write twice in the key cache.
            frame, cs, version = seal_block(ring, table, key, plaintext, unwrap=False)
        except (KeyNotHeld, MissingKeyVersion, CompromisedVersion):
            return None
        return Sealed(ring, frame, cs, version)

    async def put(self, table: str, key: str, plaintext: bytes, if_lsn: int | None = None,
                  identity: str | None = None) -> WriteResult:
        """Encrypt with the keyring current at commit time (sealed ahead, resealed in the writer if the keyring
        changed meanwhile) and store durably; with ``if_lsn`` only if the block is at that LSN (0: absent), else
        PreconditionFailed; ``identity`` is logged as who made it."""
        self._check_guards()
        sealed = self.seal_ahead(table, key, plaintext)
        return await self.write(lambda c: put_in_txn(c, self.current_keyring(), table, key, plaintext,
                                                     frames=self.frames_enabled, if_lsn=if_lsn, sealed=sealed,
                                                     identity=identity))

    async def delete(self, table: str, key: str, if_lsn: int | None = None,
                     identity: str | None = None) -> WriteResult | None:
        """Delete durably; None if the block did not exist; ``if_lsn`` and ``identity`` as for ``put``."""
        self._check_guards()
        return await self.write(lambda c: delete_in_txn(c, table, key, if_lsn=if_lsn, identity=identity))

    async def put_once(self, table: str, key: str, plaintext: bytes, idempotency_key: str, if_lsn: int | None = None,
                       identity: str | None = None) -> WriteResult | Replayed:
        """``put`` exactly once per ``idempotency_key`` (scoped by the caller: idempotency.scoped): the key and the
        answer are recorded in the write's own transaction; a repeat gets the recorded answer, nothing written."""
        self._check_guards()
        sealed = self.seal_ahead(table, key, plaintext)

        def job(c: sqlite3.Connection) -> WriteResult | Replayed:
            prior = idempotency.recorded(c, idempotency_key)  # before the condition: a retry must not meet 412
            if prior is not None:
                return prior
            res = put_in_txn(c, self.current_keyring(), table, key, plaintext, frames=self.frames_enabled,
                             if_lsn=if_lsn, sealed=sealed, identity=identity)
            idempotency.record(c, idempotency_key, 200, {"table": table, "key": key, "lsn": res.lsn,
                                                         "keyVersion": res.key_version, "size": len(plaintext)},
                               time.time())
            return res

        return await self.write(job)

    async def delete_once(self, table: str, key: str, idempotency_key: str, if_lsn: int | None = None,
                          identity: str | None = None) -> WriteResult | Replayed | None:
        """``delete`` exactly once per ``idempotency_key``, as ``put_once`` (a delete of a missing block is
        recorded as its 404)."""
        self._check_guards()

        def job(c: sqlite3.Connection) -> WriteResult | Replayed | None:
            prior = idempotency.recorded(c, idempotency_key)
            if prior is not None:
                return prior
            res = delete_in_txn(c, table, key, if_lsn=if_lsn, identity=identity)
            body = ({"error": "not_found", "message": f"no block {table}/{key}"} if res is None
                    else {"table": table, "key": key, "lsn": res.lsn})
            idempotency.record(c, idempotency_key, 404 if res is None else 200, body, time.time())
            return res

        return await self.write(job)

    def _check_guards(self) -> None:
        for guard in self.write_guards:
            guard()  # raises to refuse

    # ---- read API (call from reader threads via `read`) ----------------------------------------
    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on a reader thread with its own connection."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.reader_pool, lambda: fn(self.reader()))


def _settle(group: list[_Job], outcomes: list[tuple[bool, Any]]) -> None:
    """Hand each job of a group its outcome: a thread's caller through its future, each event loop's callers
    in one call_soon_threadsafe (one wake-up of that loop per group, not per job)."""
    waiting: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for (_, fut, waiter), (ok, value) in zip(group, outcomes, strict=True):
        if waiter is not None:
            waiting.setdefault(waiter.get_loop(), []).append((waiter, ok, value))
        elif ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
    for loop, settled in waiting.items():
        try:
            loop.call_soon_threadsafe(_settle_waiters, settled)
        except RuntimeError:  # that loop is closed: nobody is left waiting there
            pass


def _settle_waiters(settled: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    # On the callers' event loop. A waiter already done was cancelled after the writer had begun its job.
    for waiter, ok, value in settled:
        if waiter.done():
            continue
        if ok:
            waiter.set_result(value)
        else:
            waiter.set_exception(value)


def get_block(conn: sqlite3.Connection, table: str, key: str) -> StoredBlock | None:
    """One stored block or None."""
    row = conn.execute(f"SELECT {_BLOCK_COLS} FROM blocks WHERE tbl = ? AND key = ?", (table, key)).fetchone()
    return _row_to_block(row) if row else None


def scan_blocks(conn: sqlite3.Connection, table: str, after: str | None, limit: int) -> list[StoredBlock]:
    """Blocks of ``table`` with key > ``after`` in key order."""
    rows = conn.execute(
        f"SELECT {_BLOCK_COLS} FROM blocks WHERE tbl = ? AND key > ? ORDER BY key LIMIT ?",
        (table, after or "", limit),
    ).fetchall()
    return [_row_to_block(r) for r in rows]


def scan_keyspace(conn: sqlite3.Connection, start: int, end: int, limit: int,
                  after: tuple[int, str, str] | None = None) -> list[StoredBlock]:
    """Blocks whose keyspace id is in [start, end] (inclusive), in keyspace order; for range moves."""
    lo = (start - KEYSPACE_OFFSET, "", "") if after is None else (after[0] - KEYSPACE_OFFSET, after[1], after[2])
    rows = conn.execute(
        f"SELECT {_BLOCK_COLS} FROM blocks WHERE (keyspace, tbl, key) > (?, ?, ?) AND keyspace <= ? "
        "ORDER BY keyspace, tbl, key LIMIT ?",
        (*lo, end - KEYSPACE_OFFSET, limit),
    ).fetchall()
    # (start, "", "") sorts before every real row at `start` because table names are never empty.
    return [_row_to_block(r) for r in rows]


def version_counts(conn: sqlite3.Connection) -> dict[int, int]:
    """Number of blocks stored under each key version."""
    return {int(v): int(n) for v, n in conn.execute("SELECT key_version, count(*) FROM blocks GROUP BY key_version")}


def block_count(conn: sqlite3.Connection) -> int:
    """Number of stored blocks."""
    return int(conn.execute("SELECT count(*) FROM blocks").fetchone()[0])
