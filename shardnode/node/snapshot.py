"""The consistent snapshot for seeding a consumer: every block from ONE SQLite read transaction, as NDJSON.

A dedicated thread (with its own connection, so the reader pool stays free) runs the transaction and hands
chunks of lines to the event loop through a small bounded queue: the table is never held in memory whole and a
slow client slows the reader instead of filling memory. In WAL mode the open read transaction pins its
snapshot, so writes go on meanwhile (they just cannot be checkpointed past it until the stream ends).
With a ``Pacer`` (a move's keyspace-limited snapshot) the thread asks it after every chunk for a pause: none
while the node's clients are idle, a duty cycle steered by their latency while they are not (pacing.py).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncGenerator, Coroutine, Generator
from pathlib import Path
from typing import Any

from . import changelog
from .pacing import Pace, Pacer
from .store import KEYSPACE_OFFSET, connect

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 << 10  # lines handed over together
QUEUE_CHUNKS = 8  # chunks in flight between the thread and the response
_DONE = object()
_GONE = object()  # what _call returns once the consumer went away


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
                 queue: asyncio.Queue[Any], cancel: threading.Event, ranges: Ranges | None = None,
                 pacer: Pacer | None = None) -> None:
        super().__init__(name="snapshot-reader", daemon=True)
        self.path, self.tables, self.loop, self.queue, self.cancel = path, tables, loop, queue, cancel
        self.ranges, self.pacer = ranges, pacer
        self.pace: Pace | None = None
        self.pauses = 0  # pauses taken (the pacing's effect, for tests and logs)

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
            started = time.monotonic()
            for line in lines:
                buf.append(line)
                size += len(line)
                if size >= CHUNK_BYTES:
                    took = time.monotonic() - started  # reading and encoding only: not the wait for the client
                    if not self._put(b"".join(buf)) or not self._rest(took):
                        return
                    buf, size = [], 0
                    started = time.monotonic()
            if buf and not self._put(b"".join(buf)):
                return
            self._put(_DONE)
        finally:
            lines.close()  # ends the read transaction even when the client went away

    def _rest(self, took: float) -> bool:
        """Pause as the pacer says after a chunk that took ``took`` seconds; False once the consumer is gone."""
        if self.pacer is None:
            return True
        pacer, prev = self.pacer, self.pace

        async def ask() -> Pace:  # the gauge lives on the event loop
            return pacer.next(prev, took, 1, 1)

        pace = self._call(ask())
        if pace is _GONE:
            return False
        self.pace = pace
        if pace.pause > 0:
            self.pauses += 1
            return not self.cancel.wait(pace.pause)
        return True

    def _put(self, item: Any) -> bool:
        """Block until the queue takes ``item``; False once the consumer is gone."""
        return self._call(self.queue.put(item)) is not _GONE

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the loop and return its result; _GONE once the consumer is gone."""
        try:
            fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the loop is closed
            coro.close()
            return _GONE
        while True:
            try:
                return fut.result(timeout=0.25)
            except concurrent.futures.TimeoutError:
                if self.cancel.is_set():
                    fut.cancel()
                    return _GONE
            except concurrent.futures.CancelledError:
                return _GONE


async def snapshot_chunks(path: Path, tables: tuple[str, ...] | None, ranges: Ranges | None = None,
                          pacer: Pacer | None = None) -> AsyncGenerator[bytes, None]:
    """The snapshot's NDJSON in chunks; SnapshotFailed if the read transaction fails. Closing the iterator early
    (the client hung up) stops the thread and ends its transaction. ``pacer``: pause between chunks as it says."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=QUEUE_CHUNKS)
    cancel = threading.Event()
    producer = _Producer(path, tables, asyncio.get_running_loop(), queue, cancel, ranges, pacer)
    producer.start()
    running = pacer.running() if pacer is not None else contextlib.nullcontext()
    try:
        with running:
            while True:
                item = await queue.get()
                if item is _DONE:
                    return
                if isinstance(item, SnapshotFailed):
                    raise item
                yield item
    finally:
        cancel.set()
