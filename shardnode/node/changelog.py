"""The change log: one row per committed write, delete or rewrap, appended in the same transaction.

While at least one consumer slot exists (shardnode/node/consumers.py) put and rewrap rows also carry the
block's new frame and checksum, so a consumer can copy the change without reading the block (which may have
changed again since). ``changelog_state`` holds the byte total of those frames and the LSN from which frames
have been recorded without interruption.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
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
    size INTEGER NOT NULL,
    frame BLOB,                             -- the new frame (put/rewrap) while consumers exist, else NULL
    checksum BLOB,                          -- XXH3-128 of the plaintext, with the frame
    identity TEXT,                          -- who made the change (auth/writer.py); NULL: rewrap, no auth
    origin TEXT NOT NULL DEFAULT 'write'    -- write: a client's write or our rewrap; move_in: a block moved in
        CHECK (origin IN ('write', 'move_in', 'purge'))  -- by a reshard; purge: a moved-away block deleted
);
CREATE TABLE IF NOT EXISTS changelog_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    frame_bytes INTEGER NOT NULL,           -- sum(length(frame)) over the rows held
    frames_from INTEGER                     -- every put/rewrap row with lsn >= this has a frame; NULL: none do
);
INSERT OR IGNORE INTO changelog_state (id, frame_bytes, frames_from) VALUES (1, 0, NULL);
"""

OPS = ("put", "delete", "rewrap")
ORIGINS = ("write", "move_in", "purge")  # docs/resharding.md: why a row was logged
WRITE, MOVE_IN, PURGE = ORIGINS
_COLS = "lsn, time, tbl, key, op, key_version, size, identity, origin"


@dataclass(frozen=True)
class Change:
    """One change-log entry; ``frame``/``checksum`` only when asked for and recorded; ``identity`` the effective
    writer (auth/writer.py) of a put or delete, None for a rewrap or a node without authentication."""

    lsn: int
    time: float
    table: str
    key: str
    op: str
    key_version: int | None
    size: int
    frame: bytes | None = None
    checksum: bytes | None = None
    identity: str | None = None
    origin: str = WRITE

    def to_json(self) -> dict[str, Any]:
        """JSON form used by `GET /v1/changes` (without frames)."""
        return {"lsn": self.lsn, "time": self.time, "table": self.table, "key": self.key, "op": self.op,
                "keyVersion": self.key_version, "size": self.size, "identity": self.identity, "origin": self.origin}


_ADDED_COLUMNS = (("frame", "BLOB"), ("checksum", "BLOB"), ("identity", "TEXT"),
                  ("origin", "TEXT NOT NULL DEFAULT 'write' CHECK (origin IN ('write', 'move_in', 'purge'))"))


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a database made before frames, identities or origins were logged up to SCHEMA (ADD COLUMN is instant
    in SQLite; older rows read NULL, or 'write' for the origin: every row before resharding was a write)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(changes)")}
    for column, kind in _ADDED_COLUMNS:
        if column not in have:
            conn.execute(f"ALTER TABLE changes ADD COLUMN {column} {kind}")


def append(conn: sqlite3.Connection, table: str, key: str, op: str, key_version: int | None, size: int,
           frame: bytes | None = None, checksum: bytes | None = None, identity: str | None = None,
           origin: str = WRITE) -> int:
    """Append one entry inside the caller's transaction; return its LSN."""
    cur = conn.execute(
        "INSERT INTO changes (time, tbl, key, op, key_version, size, frame, checksum, identity, origin) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (time.time(), table, key, op, key_version, size, frame, checksum, identity, origin),
    )
    if frame is not None:
        add_frame_bytes(conn, len(frame))
    return int(cur.lastrowid or 0)


def add_frame_bytes(conn: sqlite3.Connection, n: int) -> None:
    """Account ``n`` frame bytes appended (or, negative, trimmed) in the caller's transaction."""
    conn.execute("UPDATE changelog_state SET frame_bytes = frame_bytes + ? WHERE id = 1", (n,))


def frame_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of frames the log holds (sum of length(frame); row overhead is not counted)."""
    row = conn.execute("SELECT frame_bytes FROM changelog_state WHERE id = 1").fetchone()
    return int(row[0]) if row else 0


def frames_from(conn: sqlite3.Connection) -> int | None:
    """The LSN from which every put/rewrap row has its frame (None while frames are not recorded)."""
    row = conn.execute("SELECT frames_from FROM changelog_state WHERE id = 1").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def set_frames_from(conn: sqlite3.Connection, lsn: int | None) -> None:
    """Record where uninterrupted frame recording began (None: it stopped)."""
    conn.execute("UPDATE changelog_state SET frames_from = ? WHERE id = 1", (lsn,))


def read(conn: sqlite3.Connection, after: int, limit: int, tables: tuple[str, ...] | None = None) -> list[Change]:
    """Entries with LSN > ``after`` in LSN order (commits are serialised, so this never skips one)."""
    return list(iter_changes(conn, after, limit, tables=tables, frames=False))


def iter_changes(conn: sqlite3.Connection, after: int, limit: int, *, tables: tuple[str, ...] | None = None,
                 frames: bool = False) -> Iterator[Change]:
    """Like ``read`` but lazily (a caller with a byte budget stops fetching early) and with frames if asked."""
    cols = _COLS + (", frame, checksum" if frames else "")
    where, args = "lsn > ?", [after]
    if tables:
        where += f" AND tbl IN ({', '.join('?' * len(tables))})"
    cur = conn.execute(f"SELECT {cols} FROM changes WHERE {where} ORDER BY lsn LIMIT ?",
                       (*args, *(tables or ()), limit))
    for row in cur:
        lsn, t, tbl, key, op, version, size, identity, origin = row[:9]
        frame, cs = row[9:] if frames else (None, None)
        yield Change(lsn, t, tbl, key, op, version, size, None if frame is None else bytes(frame),
                     None if cs is None else bytes(cs), identity, origin)


def last_lsn(conn: sqlite3.Connection) -> int:
    """The highest LSN ever assigned (0 if none)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
    return int(row[0]) if row else 0


def first_lsn(conn: sqlite3.Connection) -> int:
    """The oldest LSN still held (0 if the log is empty)."""
    row = conn.execute("SELECT min(lsn) FROM changes").fetchone()
    return int(row[0] or 0)


def time_after(conn: sqlite3.Connection, lsn: int) -> float | None:
    """Commit time of the oldest entry held after ``lsn`` (None if there is none)."""
    row = conn.execute("SELECT time FROM changes WHERE lsn > ? ORDER BY lsn LIMIT 1", (lsn,)).fetchone()
    return None if row is None else float(row[0])


def delete_through(conn: sqlite3.Connection, cutoff: int) -> int:
    """Delete entries with LSN <= ``cutoff`` and their frame bytes from the total; returns how many went."""
    (gone_bytes,) = conn.execute("SELECT coalesce(sum(length(frame)), 0) FROM changes WHERE lsn <= ?",
                                 (cutoff,)).fetchone()
    n = conn.execute("DELETE FROM changes WHERE lsn <= ?", (cutoff,)).rowcount
    if gone_bytes:
        add_frame_bytes(conn, -int(gone_bytes))
    return int(n)


def trim(conn: sqlite3.Connection, retain: int) -> int:
    """Delete all but the newest ``retain`` entries (inside the caller's transaction); returns how many went."""
    cutoff = last_lsn(conn) - retain
    if cutoff <= 0:
        return 0
    return delete_through(conn, cutoff)
