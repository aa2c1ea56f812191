"""Queued writes (docs/tokens.md, "Enforcement in nodes and caches"): a block write made with a *temporary* tiered
token is kept in ``queue.sqlite3`` on the node that received it (sealed under the table's primary key like a block
frame: never plaintext on disk), answered 202 once durable there, and applied later by the drainer, in arrival
order, exactly once: each entry carries an ``Idempotency-Key`` that the applying store records in the block's own
transaction (node/idempotency.py), so an apply repeated after a crash is answered from the record.

``outcome_of`` (pure) says what an apply's answer means for the entry: applied, failed for good, or retried.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from chronoshard.shardnode.keys.frames import peek_key_version

from .store import connect

log = logging.getLogger(__name__)

QUEUE_DB = "queue.sqlite3"
SCHEMA = """
CREATE TABLE IF NOT EXISTS writes (
    position INTEGER PRIMARY KEY AUTOINCREMENT,   -- arrival order
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,            -- the token's subject: who may ask for the entry
    writer TEXT,                    -- recorded as the writer of the block when applied
    method TEXT NOT NULL,           -- PUT | DELETE
    tbl TEXT NOT NULL,
    key TEXT NOT NULL,
    idem TEXT NOT NULL,             -- the Idempotency-Key the apply carries
    if_lsn INTEGER,
    frame BLOB,                     -- PUT: the body sealed under the table's primary key (docs/block-format.md)
    checksum BLOB,
    state TEXT NOT NULL,            -- queued | applied | failed
    lsn INTEGER,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS writes_state ON writes (state, position);
"""
# Finished entries are kept this long for GET /v1/queue/{id}, then dropped.
DONE_RETAIN_SECONDS = 86_400.0
# Statuses that will not pass by retrying (contract): the write is marked failed with the answer's error.
PERMANENT = frozenset({400, 403, 404, 409, 412, 413, 422})

State = Literal["queued", "applied", "failed"]


@dataclass(frozen=True)
class QueuedWrite:
    """One entry as stored (``frame``/``checksum``: the sealed body of a PUT)."""

    position: int
    id: str
    owner: str
    writer: str | None
    method: str
    table: str
    key: str
    idem: str
    if_lsn: int | None
    frame: bytes | None
    checksum: bytes | None
    attempts: int


@dataclass(frozen=True)
class Applied:
    """What an apply answered: an HTTP status and its JSON body (or a connection error: status 0)."""

    status: int
    body: dict[str, Any]


Outcome = tuple[Literal["applied", "failed", "retry"], int | None, str | None]


def outcome_of(answer: Applied) -> Outcome:
    """applied (with its LSN), failed for good (403, 409, 412, 400, ...: the error), or retry (503, 421, 5xx,
    a connection error)."""
    if 200 <= answer.status < 300:
        lsn = answer.body.get("lsn")
        return "applied", int(lsn) if isinstance(lsn, int) else None, None
    error = f"{answer.status} {answer.body.get('error', 'error')}: {answer.body.get('message', '')}".strip()
    if answer.status in PERMANENT:
        return "failed", None, error
    return "retry", None, error


def _row(row: tuple[Any, ...]) -> QueuedWrite:
    pos, wid, owner, writer, method, tbl, key, idem, if_lsn, frame, cs, attempts = row
    return QueuedWrite(pos, wid, owner, writer, method, tbl, key, idem, if_lsn,
                       None if frame is None else bytes(frame), None if cs is None else bytes(cs), attempts)


_COLS = "position, id, owner, writer, method, tbl, key, idem, if_lsn, frame, checksum, attempts"


class WriteQueue:
    """``queue.sqlite3`` (WAL, synchronous=FULL: an entry answered 202 survives a crash); one connection behind a
    lock, used from worker threads."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / QUEUE_DB
        self._conn = connect(self.path)
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def _tx(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return out

    def enqueue(self, *, owner: str, writer: str | None, method: str, table: str, key: str, idem: str | None,
                if_lsn: int | None, frame: bytes | None, checksum: bytes | None) -> tuple[str, int]:
        """Keep a write durably; its id and its position among the entries still queued (1 = next)."""
        wid = uuid.uuid4().hex

        def work(c: sqlite3.Connection) -> tuple[str, int]:
            cur = c.execute(
                "INSERT INTO writes (id, owner, writer, method, tbl, key, idem, if_lsn, frame, checksum, state, "
                "created_at) VALUES (?,?,?,?,?,?,?,?,?,?, 'queued', ?)",
                (wid, owner, writer, method, table, key, idem or f"queue-{wid}", if_lsn, frame, checksum,
                 time.time()))
            ahead = c.execute("SELECT count(*) FROM writes WHERE state = 'queued' AND position <= ?",
                              (cur.lastrowid,)).fetchone()[0]
            return wid, int(ahead)

        out: tuple[str, int] = self._tx(work)
        return out

    def head(self) -> QueuedWrite | None:
        """The oldest entry still queued (the drainer's next)."""
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLS} FROM writes WHERE state = 'queued' ORDER BY position LIMIT 1"
                                     ).fetchone()
        return None if row is None else _row(row)

    def finish(self, wid: str, state: State, lsn: int | None, error: str | None) -> None:
        """Mark an entry applied or failed; its sealed body is dropped (nothing left to apply)."""
        self._tx(lambda c: c.execute("UPDATE writes SET state = ?, lsn = ?, error = ?, frame = NULL, "
                                     "checksum = NULL, done_at = ? WHERE id = ?",
                                     (state, lsn, error, time.time(), wid)))

    def version_counts(self) -> dict[int, int]:
        """Queued bodies per key version: they need their version like a block does, so ``GET /v1/keys`` counts
        them and a KeyRotation retires no version a queued write was sealed under (docs/tokens.md)."""
        with self._lock:
            frames = [bytes(f) for (f,) in self._conn.execute(
                "SELECT frame FROM writes WHERE state = 'queued' AND frame IS NOT NULL")]
        counts: dict[int, int] = {}
        for frame in frames:
            version = peek_key_version(frame)
            counts[version] = counts.get(version, 0) + 1
        return counts

    def attempted(self, wid: str, error: str | None) -> None:
        """Count a retried attempt and keep its error (shown while the entry stays queued)."""
        self._tx(lambda c: c.execute("UPDATE writes SET attempts = attempts + 1, error = ? WHERE id = ?",
                                     (error, wid)))

    def describe(self, wid: str) -> dict[str, Any] | None:
        """``GET /v1/queue/{id}``: id, state, lsn, error (plus owner for the caller check, position while queued)."""
        with self._lock:
            row = self._conn.execute("SELECT id, owner, state, lsn, error, position, method, tbl, key, attempts "
                                     "FROM writes WHERE id = ?", (wid,)).fetchone()
            if row is None:
                return None
            ahead = self._conn.execute("SELECT count(*) FROM writes WHERE state = 'queued' AND position <= ?",
                                       (row[5],)).fetchone()[0] if row[2] == "queued" else None
        return {"id": row[0], "owner": row[1], "state": row[2], "lsn": row[3], "error": row[4],
                "position": ahead, "method": row[6], "table": row[7], "key": row[8], "attempts": row[9]}

    def listing(self, limit: int = 100) -> dict[str, Any]:
        """``GET /v1/queue``: counts per state and the oldest entries still queued (no bodies)."""
        with self._lock:
            counts = dict(self._conn.execute("SELECT state, count(*) FROM writes GROUP BY state").fetchall())
            rows = self._conn.execute("SELECT id, owner, method, tbl, key, attempts, error FROM writes "
                                      "WHERE state = 'queued' ORDER BY position LIMIT ?", (limit,)).fetchall()
        return {"counts": {s: int(counts.get(s, 0)) for s in ("queued", "applied", "failed")},
                "queued": [{"id": r[0], "owner": r[1], "method": r[2], "table": r[3], "key": r[4],
                            "attempts": r[5], "error": r[6]} for r in rows]}

    def trim(self, now: float, retain: float = DONE_RETAIN_SECONDS) -> int:
        """Drop finished entries older than ``retain`` seconds."""
        return int(self._tx(lambda c: c.execute("DELETE FROM writes WHERE state != 'queued' AND done_at < ?",
                                                (now - retain,)).rowcount))


Apply = Callable[[QueuedWrite], Awaitable[Applied]]


class Drainer:
    """Applies the queue's entries one at a time in arrival order with ``apply``; an entry that must be retried
    blocks the ones behind it (order), with pauses from 0.2 s doubling to ``max_pause``. ``record_delay``: a pause
    between an apply and its record (fault-injection tests kill the node there; 0 otherwise)."""

    def __init__(self, queue: WriteQueue, apply: Apply, *, max_pause: float = 5.0,
                 record_delay: Callable[[], float] = lambda: 0.0) -> None:
        self.queue, self.apply, self.max_pause, self.record_delay = queue, apply, max_pause, record_delay
        self.wake = asyncio.Event()

    async def run(self) -> None:
        """Drain until cancelled."""
        pause = 0.2
        while True:
            entry = await asyncio.to_thread(self.queue.head)
            if entry is None:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), 1.0)
                except TimeoutError:
                    pass
                continue
            try:
                answer = await self.apply(entry)
            except Exception as exc:  # never let the drainer die: the entry stays queued
                log.exception("queued write %s: apply failed", entry.id)
                answer = Applied(0, {"error": "apply_error", "message": type(exc).__name__})
            state, lsn, error = outcome_of(answer)
            if state == "retry":
                await asyncio.to_thread(self.queue.attempted, entry.id, error)
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.max_pause)
                continue
            pause = 0.2
            delay = self.record_delay()
            if delay > 0:
                await asyncio.sleep(delay)
            await asyncio.to_thread(self.queue.finish, entry.id, state, lsn, error)
            if state == "failed":
                log.warning("queued write %s (%s %s/...) failed: %s", entry.id, entry.method, entry.table, error)
