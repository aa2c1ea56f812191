"""``health.sqlite3`` beside ``blocks.sqlite3``: the node's health samples and its start counter
(docs/mirroring.md, "GET /v1/health").

Its own file with its own connection, never a job of the block store's writer: a sample must not wait behind
client writes, and a full history must not slow them. Blocking: the node calls it in a worker thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

DB_NAME = "health.sqlite3"
RETAIN_SECONDS = 7 * 86400
RETAIN_ROWS = 200_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (id INTEGER PRIMARY KEY, time REAL NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS samples_time ON samples (time);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class HealthStore:
    """The samples kept on the volume (7 days or 200,000, whichever is less) and the count of process starts."""

    def __init__(self, data_dir: Path, retain_seconds: float = RETAIN_SECONDS, retain_rows: int = RETAIN_ROWS
                 ) -> None:
        self.path = Path(data_dir) / DB_NAME
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        self.retain_seconds, self.retain_rows = retain_seconds, retain_rows
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()  # one connection, used by whichever worker thread runs a call

    def record_start(self) -> int:
        """Count this process start; returns the restarts before it (0 on a fresh volume)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                row = self._conn.execute("SELECT value FROM meta WHERE name = 'starts'").fetchone()
                starts = (int(row[0]) if row else 0) + 1
                self._conn.execute("INSERT INTO meta (name, value) VALUES ('starts', ?) "
                                   "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (str(starts),))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return starts - 1

    def add(self, sample: dict[str, Any]) -> None:
        """Store one sample (its ``time`` is the key) and drop what falls out of the retention, in one commit."""
        now = float(sample["time"])
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("INSERT INTO samples (time, doc) VALUES (?, ?)", (now, json.dumps(sample)))
                self._conn.execute("DELETE FROM samples WHERE time < ?", (now - self.retain_seconds,))
                self._conn.execute("DELETE FROM samples WHERE id <= (SELECT MAX(id) FROM samples) - ?",
                                   (self.retain_rows,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def history(self, since: float, limit: int) -> list[dict[str, Any]]:
        """Samples taken after ``since`` (unix seconds, exclusive), oldest first, at most ``limit``."""
        with self._lock:
            rows = self._conn.execute("SELECT doc FROM samples WHERE time > ? ORDER BY time, id LIMIT ?",
                                      (since, limit)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def count(self) -> int:
        """Samples held."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()
