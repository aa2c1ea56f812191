"""Exactly-once block writes (docs/tokens.md): a write's ``Idempotency-Key`` is recorded in the store's
``idempotency`` table in the SAME transaction as the block and its change-log entry, with the answer it got; a
repeat of the key is answered from the table and writes nothing.

Retention: a key is kept ``RETAIN_SECONDS`` (a day) and at most ``MAX_KEYS`` keys are kept (oldest dropped first),
trimmed with the change log; a retry later than that is a new write. Keys are scoped by the writer identity, so
one caller cannot replay (or pre-empt) another caller's key.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,           -- <writer identity>\\n<Idempotency-Key>
    status INTEGER NOT NULL,        -- the HTTP status the first write answered
    body TEXT NOT NULL,             -- its JSON answer
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created_at);
"""
RETAIN_SECONDS = 86_400.0
MAX_KEYS = 1_000_000


@dataclass(frozen=True)
class Replayed:
    """The recorded answer of a write already made under this key (nothing was written again)."""

    status: int
    body: dict[str, Any]


def scoped(identity: str | None, key: str) -> str:
    """The stored key: the writer's identity and the client's key (a newline cannot occur in either)."""
    return f"{identity or ''}\n{key}"


def recorded(conn: sqlite3.Connection, key: str) -> Replayed | None:
    """The answer recorded for ``key`` (inside the writer's transaction, before any write)."""
    row = conn.execute("SELECT status, body FROM idempotency WHERE key = ?", (key,)).fetchone()
    return None if row is None else Replayed(int(row[0]), dict(json.loads(row[1])))


def record(conn: sqlite3.Connection, key: str, status: int, body: dict[str, Any], now: float) -> None:
    """Record the answer of the write just made in this transaction."""
    conn.execute("INSERT INTO idempotency (key, status, body, created_at) VALUES (?, ?, ?, ?)",
                 (key, status, json.dumps(body, separators=(",", ":")), now))


def trim(conn: sqlite3.Connection, now: float, retain: float = RETAIN_SECONDS, max_keys: int = MAX_KEYS) -> int:
    """Drop keys older than ``retain`` seconds, then the oldest beyond ``max_keys``; the number dropped."""
    dropped = conn.execute("DELETE FROM idempotency WHERE created_at < ?", (now - retain,)).rowcount
    over = int(conn.execute("SELECT count(*) FROM idempotency").fetchone()[0]) - max_keys
    if over > 0:
        dropped += conn.execute("DELETE FROM idempotency WHERE key IN (SELECT key FROM idempotency "
                                "ORDER BY created_at LIMIT ?)", (over,)).rowcount
    return int(dropped)
