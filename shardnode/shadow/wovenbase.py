"""Recovery of a keyspace range's state at a point, by two paths that must agree (docs/weaving.md, "Recovery from a
woven snapshot"):

- **woven**: the newest woven snapshot in ``weave.sqlite3`` (the weaver's store, opened read-only) of a split half
  whose range equals the range asked, with its LSN ≤ the point; its rows (the full point, then each differential up
  to it, zstd pages) then the history's versions of the range in ``(point LSN, T]``;
- **snapshot**: the newest shadow snapshot ≤ T (its chain), filtered to the range, then the versions after it.

A state is ``{(table, key): version LSN}`` of the live keys. The weave package sits above the shadow (import-linter
layers), so the page format is decoded here from the schema, not imported. Missing or unreadable weave files fall
back to the snapshot path with one log line.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard
from chronoshard.shardnode.keyspace.partitioning import keyspace_id

from . import snapshots

log = logging.getLogger(__name__)

WEAVE_DB = "weave.sqlite3"
WOVEN, SNAPSHOT, NONE = "woven", "snapshot", "none"
OFFSET = 1 << 63  # the weave store keeps keyspace ids shifted into signed 64-bit, as the node does
_NONE_LEN = 0xFFFFFFFF
_U32 = struct.Struct(">I")
_HEAD = struct.Struct(">qd")  # lsn, time

Range = tuple[int, int]  # keyspace ids, both ends included
State = dict[tuple[str, str], int]  # live key -> the LSN of its version


@dataclass(frozen=True)
class Base:
    """What a recovered state started from: a woven snapshot, a shadow snapshot, or nothing (replay from 0)."""

    kind: str
    id: int | None
    time: float | None
    lsn: int

    def to_json(self) -> dict[str, Any]:
        """The plan answer's ``base``."""
        return {"kind": self.kind, "id": self.id, "time": self.time, "lsn": self.lsn}


# ---- the weave file -------------------------------------------------------------------------------------------
def open_weave(path: Path) -> sqlite3.Connection | None:
    """``weave.sqlite3`` read-only, or None when it is absent or is not a readable weave store (logged once)."""
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=30)
        conn.execute("SELECT id FROM woven LIMIT 1").fetchall()
        conn.execute("SELECT id FROM weaves LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        log.warning("weave store %s unreadable, using shadow snapshots: %s", path, exc)
        return None
    return conn


def find_woven(conn: sqlite3.Connection, rng: Range, lsn: int) -> Base | None:
    """The newest woven snapshot of a half whose range is exactly ``rng`` with LSN ≤ ``lsn`` (None: none)."""
    s, e = rng[0] - OFFSET, rng[1] - OFFSET
    row = conn.execute(
        "SELECT w.id, w.point_time, w.lsn FROM woven w JOIN weaves v ON v.id = w.weave "
        "WHERE ((w.half = 'lower' AND v.lower_start = ? AND v.lower_end = ?) OR "
        "(w.half = 'upper' AND v.upper_start = ? AND v.upper_end = ?)) AND w.lsn <= ? "
        "ORDER BY w.lsn DESC, w.id DESC LIMIT 1", (s, e, s, e, lsn)).fetchone()
    return None if row is None else Base(WOVEN, int(row[0]), float(row[1]), int(row[2]))


def _blob(buf: bytes, at: int) -> tuple[bytes | None, int]:
    (n,) = _U32.unpack_from(buf, at)
    at += 4
    return (None, at) if n == _NONE_LEN else (buf[at:at + n], at + n)


def page_rows(data: bytes) -> Iterator[tuple[str, str, int, str]]:
    """(table, key, lsn, op) of each row of a woven page (docs/weaving.md row layout); ValueError if damaged."""
    try:
        buf = zstandard.ZstdDecompressor().decompress(data)
        at = 0
        while at < len(buf):
            tbl, at = _blob(buf, at)
            key, at = _blob(buf, at)
            lsn, _ = _HEAD.unpack_from(buf, at)
            n = buf[at + _HEAD.size]
            op = buf[at + _HEAD.size + 1:at + _HEAD.size + 1 + n].decode()
            at += _HEAD.size + 1 + n + 8  # the key version is not needed for a state
            _, at = _blob(buf, at)  # checksum
            _, at = _blob(buf, at)  # frame
            if tbl is None or key is None or at > len(buf):
                raise ValueError("woven page row is cut short")
            yield tbl.decode(), key.decode(), int(lsn), op
    except (struct.error, IndexError, UnicodeDecodeError, zstandard.ZstdError) as exc:
        raise ValueError(f"woven page is damaged: {exc}") from None


def woven_state(conn: sqlite3.Connection, point_id: int) -> State:
    """A half's live keys at a woven point: its full base, then each differential in order (a delete removes)."""
    chain: list[int] = []
    at: int | None = point_id
    while at is not None:
        row = conn.execute("SELECT kind, base FROM woven WHERE id = ?", (at,)).fetchone()
        if row is None:
            raise ValueError(f"woven snapshot {point_id}'s chain is broken at {at}")
        chain.append(at)
        at = row[1] if row[0] == "differential" else None
    live: State = {}
    for pid in reversed(chain):
        for (data,) in conn.execute("SELECT data FROM woven_pages WHERE woven = ? ORDER BY page", (pid,)):
            for tbl, key, lsn, op in page_rows(bytes(data)):
                if op == "delete":
                    live.pop((tbl, key), None)
                else:
                    live[(tbl, key)] = lsn
    return live


# ---- the history ----------------------------------------------------------------------------------------------
def _tables(conn: sqlite3.Connection) -> list[str]:
    out: list[str] = []
    row = conn.execute("SELECT tbl FROM frames ORDER BY tbl LIMIT 1").fetchone()
    while row is not None:  # one seek per table
        out.append(row[0])
        row = conn.execute("SELECT tbl FROM frames WHERE tbl > ? ORDER BY tbl LIMIT 1", (row[0],)).fetchone()
    return out


def in_range(table: str, key: str, rng: Range) -> bool:
    """Whether the key's keyspace id lies in ``rng``."""
    return rng[0] <= keyspace_id(table, key) <= rng[1]


def replay(conn: sqlite3.Connection, rng: Range, after_lsn: int, upto_lsn: int, state: State) -> State:
    """Apply the newest version in ``(after_lsn, upto_lsn]`` of each key of the range to ``state`` (through the
    (tbl, lsn) index: O(m log m) in the versions replayed)."""
    if upto_lsn <= after_lsn:
        return state
    for table in _tables(conn):
        # SQLite returns the bare column (op) from the row that holds max(lsn).
        rows = conn.execute("SELECT key, max(lsn), op FROM frames WHERE tbl = ? AND lsn > ? AND lsn <= ? "
                            "GROUP BY key", (table, after_lsn, upto_lsn))
        for key, lsn, op in rows:
            if not in_range(table, key, rng):
                continue
            if op == "delete":
                state.pop((table, key), None)
            else:
                state[(table, key)] = int(lsn)
    return state


def snapshot_base(conn: sqlite3.Connection, lsn: int) -> Base:
    """The newest shadow snapshot at or before ``lsn`` (kind ``none`` at LSN 0 when there is none)."""
    row = conn.execute("SELECT id, boundary, lsn FROM snapshots WHERE lsn <= ? ORDER BY lsn DESC, boundary DESC "
                       "LIMIT 1", (lsn,)).fetchone()
    return Base(NONE, None, None, 0) if row is None else Base(SNAPSHOT, int(row[0]), float(row[1]), int(row[2]))


def standard_state(conn: sqlite3.Connection, rng: Range, lsn: int) -> tuple[Base, State]:
    """The range's state at ``lsn`` from the newest shadow snapshot ≤ it, filtered, plus the versions after."""
    base = snapshot_base(conn, lsn)
    state: State = {}
    if base.id is not None:
        state = {k: v for k, v in snapshots.state(conn, base.id).items() if in_range(k[0], k[1], rng)}
    return base, replay(conn, rng, base.lsn, lsn, state)


def woven_path_state(history: sqlite3.Connection, weave: sqlite3.Connection, base: Base, rng: Range,
                     lsn: int) -> State:
    """The range's state at ``lsn`` from a woven point (found by ``find_woven``) plus the versions after it."""
    assert base.id is not None
    return replay(history, rng, base.lsn, lsn, woven_state(weave, base.id))


def state_at(history: sqlite3.Connection, weave_path: Path | None, ranges: Sequence[Range],
             lsn: int) -> tuple[Base, State]:
    """The state of a partition (its ``ranges``) at ``lsn``: from a woven snapshot when one matches (one range,
    equal to a half's), else by the standard path. A damaged weave file falls back with one log line."""
    weave = open_weave(weave_path) if weave_path is not None and len(ranges) == 1 else None
    if weave is not None:
        try:
            found = find_woven(weave, ranges[0], lsn)
            if found is not None:
                return found, woven_path_state(history, weave, found, ranges[0], lsn)
        except (sqlite3.Error, ValueError) as exc:
            log.warning("weave store %s unreadable, using shadow snapshots: %s", weave_path, exc)
        finally:
            weave.close()
    out: State = {}
    base = Base(NONE, None, None, 0)
    for rng in ranges:
        base, part = standard_state(history, rng, lsn)
        out |= part
    return base, out


def digest(state: State) -> str:
    """sha256 of the state's (table, key, LSN) in key order: equal states, equal digests."""
    h = hashlib.sha256()
    for (tbl, key), lsn in sorted(state.items()):
        h.update(f"{tbl}\x00{key}\x00{lsn}\n".encode())
    return h.hexdigest()
