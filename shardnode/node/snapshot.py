"""The consistent snapshot for seeding a consumer: every block from ONE SQLite read transaction, as NDJSON.

A dedicated thread (with its own connection, so the reader pool stays free) runs the transaction and hands
chunks of lines to the event loop through a small bounded queue: the table is never held in memory whole and a
slow client slows the reader instead of filling memory. In WAL mode the open read transaction pins its
snapshot, so writes go on meanwhile (they just cannot be checkpointed past it until the stream ends).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import logging
import sqlite3
import threading
from collections.abc import AsyncGenerator, Generator
from pathlib import Path
from typing import Any

from . import changelog
from .store import KEYSPACE_OFFSET, connect

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 << 10  # lines handed over together
QUEUE_CHUNKS = 8  # chunks in flight between the thread and the response
_DONE = object()


class SnapshotFailed(Exception):
    """The read transaction failed (the stream is cut short; the missing end line tells the client)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


Ranges = tuple[tuple[int, int], ...]  # keyspace id ranges, inclusive


def _where(tables: tuple[str, ...] | None, ranges: Ranges | None) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause of a snapshot limited to ``tables`` and (stored, shifted) keyspace ``ranges``."""
    clauses: list[str] = []
    args: list[Any] = []
    if tables:
        clauses.append(f"tbl IN ({', '.join('?' * len(tables))})")
        args += tables
    if ranges:
        clauses.append("(" + " OR ".join("keyspace BETWEEN ? AND ?" for _ in ranges) + ")")
        for lo, hi in ranges:
            args += (lo - KEYSPACE_OFFSET, hi - KEYSPACE_OFFSET)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)


def snapshot_lines(conn: sqlite3.Connection, tables: tuple[str, ...] | None,
                   ranges: Ranges | None = None) -> Generator[bytes, None, None]:
    """The NDJSON lines of one snapshot: ``{"lsn": S}``, one line per block (table, key order), the end line;
    ``ranges``: only blocks whose keyspace id is in one of them (a mirror's repair, a move), in keyspace order."""
    where, args = _where(tables, ranges)
    conn.execute("BEGIN")
    try:
        # The first read fixes the transaction's snapshot: S and the blocks below are the same state.
        yield json.dumps({"lsn": changelog.last_lsn(conn)}).encode() + b"\n"
        n = 0
        # A keyspace-limited snapshot (a move, a repair) follows the keyspace index: ordered by table and key,
        # SQLite would sort every frame of the ranges in a temporary B-tree before the first line.
        order = "keyspace, tbl, key" if ranges else "tbl, key"
        rows = conn.execute(f"SELECT tbl, key, key_version, size, checksum, frame, lsn FROM blocks {where} "
                            f"ORDER BY {order}", args)
        for tbl, key, version, size, cs, frame, lsn in rows:
            n += 1
            yield json.dumps({"table": tbl, "key": key, "keyVersion": version, "size": size,
                              "checksum": _b64(bytes(cs)), "frame": _b64(bytes(frame)), "lsn": lsn}).encode() + b"\n"
        yield json.dumps({"end": True, "blocks": n}).encode() + b"\n"
    finally:
        conn.execute("COMMIT")


class _Producer(threading.Thread):
    """Runs the read transaction and puts chunks (then _DONE, or the exception) on the loop's queue."""

    def __init__(self, path: Path, tables: tuple[str, ...] | None, loop: asyncio.AbstractEventLoop,
                 queue: asyncio.Queue[Any], cancel: threading.Event, ranges: Ranges | None = None) -> None:
        super().__init__(name="snapshot-reader", daemon=True)
        self.path, self.tables, self.loop, self.queue, self.cancel = path, tables, loop, queue, cancel
        self.ranges = ranges

    def run(self) -> None:
        try:
            conn = connect(self.path)
        except sqlite3.Error as exc:
            self._put(SnapshotFailed(str(exc)))
            return
        try:
            self._stream(conn)
        except Exception as exc:  # reported to the handler, which ends the stream without the end line
            log.error("snapshot read failed: %s", exc)
            self._put(SnapshotFailed(str(exc)))
        finally:
            conn.close()

    def _stream(self, conn: sqlite3.Connection) -> None:
        lines = snapshot_lines(conn, self.tables, self.ranges)
        try:
            buf: list[bytes] = []
            size = 0
            for line in lines:
                buf.append(line)
                size += len(line)
                if size >= CHUNK_BYTES:
                    if not self._put(b"".join(buf)):
                        return
                    buf, size = [], 0
            if buf and not self._put(b"".join(buf)):
                return
            self._put(_DONE)
        finally:
            lines.close()  # ends the read transaction even when the client went away

    def _put(self, item: Any) -> bool:
        """Block until the queue takes ``item``; False once the consumer is gone."""
        try:
            fut = asyncio.run_coroutine_threadsafe(self.queue.put(item), self.loop)
        except RuntimeError:  # the loop is closed
            return False
        while True:
            try:
                fut.result(timeout=0.25)
                return True
            except concurrent.futures.TimeoutError:
                if self.cancel.is_set():
                    fut.cancel()
                    return False
            except concurrent.futures.CancelledError:
                return False


async def snapshot_chunks(path: Path, tables: tuple[str, ...] | None,
                          ranges: Ranges | None = None) -> AsyncGenerator[bytes, None]:
    """The snapshot's NDJSON in chunks; SnapshotFailed if the read transaction fails. Closing the iterator early
    (the client hung up) stops the thread and ends its transaction."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=QUEUE_CHUNKS)
    cancel = threading.Event()
    producer = _Producer(path, tables, asyncio.get_running_loop(), queue, cancel, ranges)
    producer.start()
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                return
            if isinstance(item, SnapshotFailed):
                raise item
            yield item
    finally:
        cancel.set()
