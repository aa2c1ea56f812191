"""One audit line per guarded request (logger ``chronoshard.audit``): who, what, which table, the status.

The request path only takes the time and the fields and appends them to a bounded in-memory queue; the
``AuditWriter`` thread builds the log records (the JSON is made when a handler formats one) and hands them to
the audit logger's handlers off the event loop. No line is ever dropped: when the queue is full, or no writer
runs (an app not started, a process stopping), the request writes its line itself, as before, and a full queue
is counted (``chronoshard_audit_queue_full_total``) and reported once per process.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .identity import Identity

audit_log = logging.getLogger("chronoshard.audit")
log = logging.getLogger("chronoshard.auth")

QUEUE_LINES = 10_000  # seconds of lines at the servers' rates; full only when the log sink is stuck
FLUSH_SECONDS = 0.02  # how long a line may wait in the queue
BATCH_LINES = 512  # lines per write
FIELDS = ("user", "via", "method", "route", "table", "key", "status", "reason")
Fields = tuple[str | None, str | None, str, str, str | None, str | None, int, str]


class AuditLine:
    """The fields of one line; the JSON text is made only when a handler formats the record."""

    __slots__ = ("fields",)

    def __init__(self, fields: Fields) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return json.dumps(dict(zip(FIELDS, self.fields, strict=True)), ensure_ascii=True)


def make_record(fields: Fields, created: float) -> logging.LogRecord:
    """The audit logger's record of one line, stamped with the time of the request (not of the write)."""
    record = audit_log.makeRecord(audit_log.name, logging.INFO, __file__, 0, AuditLine(fields), (), None)
    record.created, record.msecs = created, (created - int(created)) * 1000
    return record


def _fast_record(template: dict[str, object], fields: Fields, created: float) -> logging.LogRecord:
    """make_record's record, copied from ``template`` (one make_record's attributes) instead of built again:
    LogRecord.__init__ costs several times more (paths, thread, process) and would hold the GIL the loop needs."""
    record = logging.LogRecord.__new__(logging.LogRecord)
    record.__dict__.update(template)
    record.msg, record.created, record.msecs = AuditLine(fields), created, (created - int(created)) * 1000
    return record


def _handlers() -> list[logging.Handler]:
    """The handlers a record of the audit logger reaches (as Logger.callHandlers walks them)."""
    found: list[logging.Handler] = []
    logger: logging.Logger | None = audit_log
    while logger is not None:
        found.extend(logger.handlers)
        logger = logger.parent if logger.propagate else None
    if not found and logging.lastResort is not None:
        found.append(logging.lastResort)
    return found


def _plain_stream(handler: logging.Handler) -> bool:
    """A StreamHandler whose emit is the standard one (write the line, flush): its lines can be written as one."""
    return isinstance(handler, logging.StreamHandler) and type(handler).emit is logging.StreamHandler.emit


def _write_batch(handler: logging.StreamHandler[Any], records: list[logging.LogRecord]) -> None:
    """What emit would write for each record, written with one write and one flush (identical output)."""
    chosen = [r for r in records if r.levelno >= handler.level and handler.filter(r)]
    if not chosen:
        return
    try:
        text = "".join(handler.format(r) + handler.terminator for r in chosen)
        with handler.lock or contextlib.nullcontext():
            handler.stream.write(text)
            handler.flush()
    except Exception:  # as Handler.emit does: report, never raise into the writer
        handler.handleError(chosen[0])


def write_records(records: list[logging.LogRecord]) -> None:
    """Hand ``records`` to the audit logger's handlers: plain stream handlers get them in one write, the others
    one by one (so filters, levels and custom handlers behave as with Logger.handle)."""
    if audit_log.disabled:
        return
    records = [r for r in records if audit_log.filter(r)]
    for handler in _handlers():
        if _plain_stream(handler):
            _write_batch(handler, records)  # type: ignore[arg-type]
        else:
            for r in records:
                if r.levelno >= handler.level:
                    handler.handle(r)


class AuditWriter:
    """The process's audit thread: a bounded queue of (time, fields), drained every ``interval`` seconds into
    the audit logger. Started and stopped by each secured app (counted: the last stop drains and ends it)."""

    def __init__(self, size: int = QUEUE_LINES, interval: float = FLUSH_SECONDS) -> None:
        self.size, self.interval = size, interval
        # deque append/popleft are atomic: the event loop appends, the writer thread pops.
        self._queue: deque[tuple[float, Fields]] = deque()
        self._lock = threading.Lock()
        self._users = 0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.full_reported = False

    def offer(self, created: float, fields: Fields) -> bool:
        """Queue one line; False when the queue is full or no writer runs (the caller writes it itself)."""
        if self._thread is None or len(self._queue) >= self.size:
            return False
        self._queue.append((created, fields))
        return True

    @property
    def running(self) -> bool:
        """Whether a writer thread drains the queue."""
        return self._thread is not None

    def start(self) -> None:
        """One more user; the first one starts the thread."""
        with self._lock:
            self._users += 1
            if self._thread is None:
                self._stopping.clear()
                self._thread = threading.Thread(target=self._run, name="chronoshard-audit", daemon=True)
                self._thread.start()

    def stop(self, *, everyone: bool = False) -> None:
        """One user fewer (``everyone``: all of them, at exit); the last one ends the thread after it has
        written every queued line. Call it on the thread that offers (the event loop), so no offer races it."""
        with self._lock:
            self._users = 0 if everyone else max(0, self._users - 1)
            thread = self._thread if self._users == 0 else None
            if thread is None:
                return
            self._stopping.set()
            thread.join()
            # Offers made while stopping went to their callers; nothing is left behind.
            self._thread = None
            self._drain()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        queue = self._queue
        template: dict[str, object] | None = None
        while queue:
            batch: list[logging.LogRecord] = []
            while queue and len(batch) < BATCH_LINES:
                created, fields = queue.popleft()
                if template is None:
                    template = make_record(fields, created).__dict__
                batch.append(_fast_record(template, fields, created))
            write_records(batch)


WRITER = AuditWriter()
atexit.register(lambda: WRITER.stop(everyone=True))


def audit(identity: Identity | None, method: str, route: str, table: str | None, key: str | None,
          status: int, reason: str, *, on_full: Callable[[], None] | None = None) -> None:
    """Log one request as a JSON object (never a credential, never block contents), through the writer thread
    when one runs; ``on_full`` counts a line the full queue sent back to be written here."""
    if not audit_log.isEnabledFor(logging.INFO):
        return
    now = time.time()
    fields: Fields = (identity.user if identity is not None else None,
                      identity.via if identity is not None else None, method, route, table, key, status, reason)
    if WRITER.offer(now, fields):
        return
    if WRITER.running:
        if on_full is not None:
            on_full()
        if not WRITER.full_reported:
            WRITER.full_reported = True
            log.warning("audit queue full (%d lines): audit lines are written on the request path until it drains "
                        "(none is dropped; counted in chronoshard_audit_queue_full_total)", WRITER.size)
    audit_log.handle(make_record(fields, now))
