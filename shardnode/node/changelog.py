"""The change log: one row per committed write, delete or rewrap, appended in the same transaction."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS changes (
    lsn INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: an LSN is never reused, even after trimming
    time REAL NOT NULL,
    tbl TEXT NOT NULL,
    key TEXT NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('put', 'delete', 'rewrap')),
    key_version INTEGER,
    size INTEGER NOT NULL
);
"""

OPS = ("put", "delete", "rewrap")


@dataclass(frozen=True)
class Change:
    """One change-log entry (no block content; readers fetch the block by key if they need it)."""

    lsn: int
    time: float
    table: str
    key: str
    op: str
    key_version: int | None
    size: int

    def to_json(self) -> dict[str, Any]:
        """JSON form used by `GET /v1/changes`."""
        return {"lsn": self.lsn, "time": self.time, "table": self.table, "key": self.key, "op": self.op,
                "keyVersion": self.key_version, "size": self.size}


def append(conn: sqlite3.Connection, table: str, key: str, op: str, key_version: int | None, size: int) -> int:
    """Append one entry inside the caller's transaction; return its LSN."""
    cur = conn.execute(
        "INSERT INTO changes (time, tbl, key, op, key_version, size) VALUES (?, ?, ?, ?, ?, ?)",
        (time.time(), table, key, op, key_version, size),
    )
    return int(cur.lastrowid or 0)


def read(conn: sqlite3.Connection, after: int, limit: int) -> list[Change]:
    """Entries with LSN > ``after`` in LSN order (commits are serialised, so this never skips one)."""
    rows = conn.execute(
        "SELECT lsn, time, tbl, key, op, key_version, size FROM changes WHERE lsn > ? ORDER BY lsn LIMIT ?",
        (after, limit),
    ).fetchall()
    return [Change(*row) for row in rows]


def last_lsn(conn: sqlite3.Connection) -> int:
    """The highest LSN ever assigned (0 if none)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
    return int(row[0]) if row else 0


def first_lsn(conn: sqlite3.Connection) -> int:
    """The oldest LSN still held (0 if the log is empty)."""
    row = conn.execute("SELECT min(lsn) FROM changes").fetchone()
    return int(row[0] or 0)


def trim(conn: sqlite3.Connection, retain: int) -> int:
    """Delete all but the newest ``retain`` entries (inside the caller's transaction); returns how many went."""
    cutoff = last_lsn(conn) - retain
    if cutoff <= 0:
        return 0
    return conn.execute("DELETE FROM changes WHERE lsn <= ?", (cutoff,)).rowcount
