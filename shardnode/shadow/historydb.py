"""The history file's schema and connections: one SQLite file (WAL, synchronous=FULL), versioned in ``meta``.

Layout (docs/shadow-store.md, "Storage"):

- ``frames``: one row per stored version in every tier, keyed by (tbl, key, lsn) - the index every time-travel
  query walks. ``op`` put|delete|rewrap|seed, ``tier`` 0 hot / 1 warm / 2 cold, ``frame`` the sealed history frame
  (NULL for a delete), ``checksum`` the plaintext's XXH3-128 (diffs compare content without decrypting),
  ``size``/``stored_size`` only for hot rows (a compacted row's are in its segment), ``identity`` the user the node
  recorded for the change (NULL for seeds, rewraps and changes from nodes that record none), ``profile`` the
  plaintext's 17-byte byte profile (anomaly/profile.py, ``encode_profile``; NULL for a delete), ``origin`` why a
  reshard logged it (docs/resharding.md): ``move`` a put of a block moved in, ``moved_away`` a delete of one moved
  to another shard (NULL: an ordinary change).
- ``segments``: the metadata of every compacted (warm/cold) version, B1's columnar encoding, one blob per segment;
  each frames row of a compacted tier names its segment.
- ``snapshots`` + ``snapshot_entries``: per snapshot (boundary, LSN, kind, base) the per-key pointers to versions.
- ``gaps``: LSN ranges a re-seed jumped over.
- ``dictionaries``: every zstd dictionary a frame may name, per table (the newest compresses), written before use.
- ``meta``: schema version, capture cursor, rewrap state, horizons of the last compaction.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

DB_NAME = "shadow.sqlite3"
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS frames (
    tbl TEXT NOT NULL,
    key TEXT NOT NULL,
    lsn INTEGER NOT NULL,
    time REAL NOT NULL,
    op TEXT NOT NULL,
    tier INTEGER NOT NULL,
    segment INTEGER,
    key_version INTEGER,
    size INTEGER,
    stored_size INTEGER,
    checksum BLOB,
    frame BLOB,
    identity TEXT,
    profile BLOB,
    origin TEXT,
    PRIMARY KEY (tbl, key, lsn)
);
CREATE INDEX IF NOT EXISTS frames_time ON frames (time, lsn);
CREATE INDEX IF NOT EXISTS frames_tier ON frames (tier, time);
CREATE INDEX IF NOT EXISTS frames_table_lsn ON frames (tbl, lsn);
CREATE INDEX IF NOT EXISTS frames_version ON frames (key_version);
CREATE INDEX IF NOT EXISTS frames_segment ON frames (segment) WHERE segment IS NOT NULL;
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    tier INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    min_lsn INTEGER NOT NULL,
    max_lsn INTEGER NOT NULL,
    min_time REAL NOT NULL,
    max_time REAL NOT NULL,
    raw_bytes INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL,
    meta BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS segments_tier ON segments (tier, min_time);
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY,
    boundary REAL NOT NULL UNIQUE,
    lsn INTEGER NOT NULL,
    kind TEXT NOT NULL,
    base INTEGER,
    keys INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot_entries (
    snapshot INTEGER NOT NULL,
    tbl TEXT NOT NULL,
    key TEXT NOT NULL,
    lsn INTEGER NOT NULL,
    PRIMARY KEY (snapshot, tbl, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS snapshot_entries_version ON snapshot_entries (tbl, key, lsn);
CREATE TABLE IF NOT EXISTS dictionaries (tbl TEXT NOT NULL, id INTEGER NOT NULL, dict BLOB NOT NULL,
                                         created REAL NOT NULL, PRIMARY KEY (tbl, id));
CREATE TABLE IF NOT EXISTS gaps (after_lsn INTEGER NOT NULL, upto_lsn INTEGER NOT NULL, time REAL NOT NULL,
                                 PRIMARY KEY (after_lsn, upto_lsn));
"""


class SchemaError(RuntimeError):
    """The history file was written by a newer version of this code (or is not a history file)."""


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the durability settings every connection shares (autocommit; callers BEGIN)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: the WAL is fsynced at every commit, so an applied batch and its cursor survive kill -9 together.
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def get_meta(conn: sqlite3.Connection, name: str, default: Any = None) -> Any:
    """A JSON value from ``meta`` (``default`` if absent)."""
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return json.loads(row[0]) if row else default


def set_meta(conn: sqlite3.Connection, name: str, value: Any) -> None:
    """Write a JSON value to ``meta`` inside the caller's transaction."""
    conn.execute("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                 (name, json.dumps(value)))


# Columns added after the first release: (name, type). ADD COLUMN on an existing file, so the schema version stays 1
# (older code names its columns in every statement and never sees these).
ADDED_FRAME_COLUMNS = (("identity", "TEXT"), ("profile", "BLOB"), ("origin", "TEXT"))


def migrate(conn: sqlite3.Connection) -> None:
    """Add the columns an older history file lacks (inside the caller's transaction; instant in SQLite)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(frames)")}
    for name, kind in ADDED_FRAME_COLUMNS:
        if name not in have:
            conn.execute(f"ALTER TABLE frames ADD COLUMN {name} {kind}")


def init_schema(conn: sqlite3.Connection) -> None:
    """Create the tables of an empty file, or check the version of an existing one (SchemaError if newer) and
    add the columns it lacks."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        version = get_meta(conn, "schema") if has_meta else None
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaError(f"history file has schema version {version}; this code knows up to {SCHEMA_VERSION}")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        migrate(conn)
        if version is None:
            set_meta(conn, "schema", SCHEMA_VERSION)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
