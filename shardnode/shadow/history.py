"""The history store: every captured change of the node as a sealed version in one SQLite file, with time travel.

``apply`` opens each node frame with the keyring (plaintext exists only in memory here), compresses and reseals
it as a history frame bound to (table, key, LSN) (sealing.py), and stores it with the capture cursor in the same
transaction, so a batch is applied exactly once whatever crashes. Deletes, rewraps and seeds are versions too.

Every query walks the primary key (tbl, key, lsn) of ``frames``; none reads the whole history:

- ``value_at``: one index seek, O(log N) for N stored versions.
- ``history``: O(log N + limit).
- ``state_at``: per key of the range one seek for the next key and one for its version: O((limit + d) log N),
  d the keys of the range that are absent at that point (deleted earlier) and are skipped.
- ``diff``: the changes between the two points through the (tbl, lsn) index, sorted by key: O(m log m) for m
  versions between them, plus O(log N) per reported key.
- ``time_to_lsn``: one seek on the (time, lsn) index.

Tiers: compaction.py carries out tiers.py's decisions (``compact``); snapshots.py (``take_snapshot``); segments.py
holds the compacted metadata; rewrapper.py re-seals versions onto a new key (``rewrap_batch``).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time as _time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from chronoshard.shardnode.anomaly.types import ChangeObservation
from chronoshard.shardnode.keys.crypto import IntegrityError, open_block
from chronoshard.shardnode.keys.keyring import Keyring, MissingKeyVersion

from . import compaction, historydb, rewrapper, snapshots, tiers, timetravel
from .codec import Compressor, dictionary_id
from .columnar import MetaRow
from .dictionaries import DictionaryTrainer
from .historydb import get_meta, set_meta
from .observations import PrevVersion, observation, prev_version, profile_of, stored_profile
from .sealing import open_version, seal_version
from .segments import SegmentCache
from .tiers import COLD, DELETE, DIFFERENTIAL, HOT, PUT, REWRAP, SEED, TIER_NAMES, Retention, SnapshotRef
from .timetravel import DiffEntry, Exactness, Point, Version

__all__ = ["ApplyError", "ColdSegment", "DiffEntry", "HistoryStore", "NoKeyring", "Observer", "Point", "SnapshotRef",
           "Version"]

log = logging.getLogger(__name__)

SEED_CHUNK = 512  # snapshot blocks sealed between inserts (the whole seed is still one transaction)
_ROW = "lsn, time, op, tier, segment, key_version, size, frame, checksum, identity, profile, origin"
# Called with each committed apply batch's observations, in LSN order, on the thread that applied it.
Observer = Callable[[list[ChangeObservation]], None]


class ChangeLike(Protocol):
    """What apply reads of a change (changestream.StreamChange; its ``identity``, when it has one, is read with
    getattr, so a change without the attribute is one without an identity)."""

    @property
    def lsn(self) -> int: ...
    @property
    def time(self) -> float: ...
    @property
    def table(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def op(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def frame(self) -> bytes | None: ...
    @property
    def checksum(self) -> bytes | None: ...


class BlockLike(Protocol):
    """What seed reads of a snapshot block (changestream.SnapshotBlock)."""

    @property
    def table(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def lsn(self) -> int: ...
    @property
    def frame(self) -> bytes: ...
    @property
    def checksum(self) -> bytes: ...


class NoKeyring(RuntimeError):
    """No keyring is loaded, so nothing can be opened or sealed."""


class ApplyError(RuntimeError):
    """A change could not be applied (its frame does not open, or it is malformed); nothing of the batch is."""

    def __init__(self, lsn: int, message: str) -> None:
        super().__init__(f"change {lsn}: {message}")
        self.lsn = lsn


@dataclass(frozen=True)
class _NewVersion:
    table: str
    key: str
    lsn: int
    time: float
    op: str
    key_version: int | None
    size: int
    stored_size: int | None
    frame: bytes | None
    checksum: bytes | None = None
    identity: str | None = None
    profile: bytes | None = None  # encode_profile of the plaintext (None for a delete)
    origin: str | None = None  # timetravel.MOVED_IN / MOVED_AWAY for a reshard's change, else None

    def params(self) -> tuple[Any, ...]:
        return (self.table, self.key, self.lsn, self.time, self.op, HOT, self.key_version, self.size,
                self.stored_size, self.checksum, self.frame, self.identity, self.profile, self.origin)


@dataclass(frozen=True)
class _Sealed:
    frame: bytes
    key_version: int
    size: int
    stored_size: int
    checksum: bytes
    profile: bytes


_INSERT = ("INSERT OR IGNORE INTO frames (tbl, key, lsn, time, op, tier, key_version, size, stored_size, checksum, "
           "frame, identity, profile, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


class HistoryStore:
    """The shadow's history file. Thread-safe: one writer at a time (a lock), readers on their own connections.

    Methods do blocking I/O and crypto: call them from a worker thread, not the event loop.
    """

    def __init__(self, path: Path, keyring: Callable[[], Keyring | None], compressor: Compressor,
                 trainer: DictionaryTrainer | None = None) -> None:
        path = Path(path)
        self.path = path / historydb.DB_NAME if path.is_dir() else path
        self._keyring = keyring
        self.compressor = compressor
        self.trainer = trainer or DictionaryTrainer(False)
        self._lock = threading.RLock()
        self._conn = historydb.connect(self.path)
        historydb.init_schema(self._conn)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self.segments = SegmentCache()
        self._observers: list[Observer] = []
        self._failed_observers: set[int] = set()  # id() of observers that raised once (logged once each)
        for table, dict_bytes in self.dictionaries():  # oldest first: the newest of a table compresses
            self.compressor.add_dictionary(table, dict_bytes)
        self.trainer.have(table for table, _ in self.dictionaries())

    # --- connections and transactions ---------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection (the store is unusable afterwards)."""
        with self._readers_lock:
            for c in self._readers:
                c.close()
            self._readers.clear()
        self._conn.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error), one writer at a time."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction on this thread's connection: every statement inside sees the same state."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = historydb.connect(self.path)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def current_keyring(self) -> Keyring:
        """The keyring in force; NoKeyring if none is loaded."""
        ring = self._keyring()
        if ring is None:
            raise NoKeyring("no keyring is loaded")
        return ring

    # --- capture -------------------------------------------------------------------------------------------

    def cursor(self) -> int:
        """The highest node LSN applied (0 before the first seed or change)."""
        with self.read() as conn:
            return int(get_meta(conn, "cursor", 0))

    def add_observer(self, fn: Observer) -> None:
        """Call ``fn`` after every committed ``apply`` with the batch's observations (LSN order), on the applying
        thread. An observer that raises is logged (once) and skipped for that batch; the apply stands."""
        with self._lock:
            self._observers = [*self._observers, fn]

    def remove_observer(self, fn: Observer) -> None:
        """Stop calling ``fn`` (no-op if it was not added)."""
        with self._lock:
            self._observers = [o for o in self._observers if o != fn]  # ==: a bound method is new each time

    def _notify(self, observers: Sequence[Observer], batch: list[ChangeObservation]) -> None:
        for fn in observers:
            try:
                fn(batch)
            except Exception:
                # Once per observer: a detector that fails on every batch must not flood the log or stop capture.
                if id(fn) not in self._failed_observers:
                    self._failed_observers.add(id(fn))
                    log.exception("history observer %r failed; the batch is applied, the observer skipped it", fn)

    def _seal(self, ring: Keyring, table: str, key: str, lsn: int, node_frame: bytes | None,
              checksum: bytes | None) -> _Sealed:
        """Open a node frame and reseal it as history, with the plaintext's byte profile."""
        if node_frame is None:
            raise ApplyError(lsn, "a put or rewrap came without its frame (is the stream read with frames?)")
        try:
            plaintext = open_block(ring, table, key, node_frame, checksum)
        except (IntegrityError, MissingKeyVersion) as exc:
            raise ApplyError(lsn, f"the node frame of {table}/{key} does not open: {exc}") from None
        self.trainer.offer(table, plaintext)
        sealed = seal_version(ring, table, key, lsn, plaintext, self.compressor)
        return _Sealed(sealed.frame, sealed.key_version, len(plaintext), sealed.stored_size, sealed.checksum,
                       stored_profile(plaintext))

    # --- dictionaries ----------------------------------------------------------------------------------------

    def dictionaries(self) -> list[tuple[str, bytes]]:
        """Every stored (table, zstd dictionary), oldest first: what a frame of this history may name."""
        with self.read() as conn:
            return [(str(t), bytes(d)) for t, d in conn.execute(
                "SELECT tbl, dict FROM dictionaries ORDER BY created, tbl, id")]

    def train_due_dictionaries(self) -> list[str]:
        """Train the dictionaries whose samples are complete; each is committed to the file before the compressor
        uses it (a crash can never leave a frame naming a lost dictionary). Returns the tables trained."""
        done = []
        for table in self.trainer.due():
            dict_bytes = self.trainer.train(table)
            if dict_bytes is None:
                continue
            with self.write() as conn:
                conn.execute("INSERT OR IGNORE INTO dictionaries (tbl, id, dict, created) VALUES (?, ?, ?, ?)",
                             (table, dictionary_id(dict_bytes), dict_bytes, _time.time()))
            self.compressor.add_dictionary(table, dict_bytes)
            self.trainer.trained(table)
            done.append(table)
        return done

    def _prepare(self, ring: Keyring | None, c: ChangeLike) -> _NewVersion:
        identity = getattr(c, "identity", None)
        # A reshard's change (the node's origin move_in or purge): kept as such, never scored as a client's.
        moved = timetravel.STORED_ORIGIN.get(getattr(c, "origin", None) or "")
        if c.op == DELETE:
            return _NewVersion(c.table, c.key, c.lsn, c.time, DELETE, None, 0, None, None, None, identity,
                               origin=moved)
        if c.op not in (PUT, REWRAP):
            raise ApplyError(c.lsn, f"unknown op {c.op!r}")
        if ring is None:
            raise NoKeyring("no keyring is loaded")
        s = self._seal(ring, c.table, c.key, c.lsn, c.frame, c.checksum)
        return _NewVersion(c.table, c.key, c.lsn, c.time, c.op, s.key_version, s.size, s.stored_size, s.frame,
                           s.checksum, identity, s.profile, moved)

    def _observations(self, conn: sqlite3.Connection, rows: Sequence[_NewVersion]) -> list[ChangeObservation]:
        """Each row's observation over the key's previous version: an earlier row of the batch, else the last
        stored one below it (one primary-key seek per key of the batch)."""
        latest: dict[tuple[str, str], PrevVersion | None] = {}
        out = []
        for r in rows:
            k = (r.table, r.key)
            prev = latest[k] if k in latest else _prev_version(conn, self.segments, r.table, r.key, r.lsn)
            profile = profile_of(r.profile)  # once: the next change of the key in the batch reuses it
            out.append(observation(r.lsn, r.time, r.table, r.key, r.op, r.size, r.identity, profile, prev, r.origin))
            latest[k] = PrevVersion(r.lsn, r.op, r.size, profile)
        return out

    def key_count(self, table: str) -> int:
        """How many keys of ``table`` the history holds a version of (deleted ones too: an upper bound of its live
        keys). One scan of the table's part of the primary key: callers cache it."""
        with self.read() as conn:
            return int(conn.execute("SELECT count(DISTINCT key) FROM frames WHERE tbl = ?", (table,)).fetchone()[0])

    def observations_after(self, after_lsn: int, limit: int) -> list[ChangeObservation]:
        """The observations of the stored changes after ``after_lsn`` (LSN order, at most ``limit``), as observers
        were given them: what a restarted detector replays for the windows it had not closed."""
        with self.read() as conn:
            rows: list[tuple[Any, ...]] = []
            for table in self.tables(conn):
                rows += conn.execute("SELECT tbl, key, lsn, time, op, size, identity, profile, origin FROM frames "
                                     "WHERE tbl = ? AND lsn > ? AND op != ? ORDER BY lsn LIMIT ?",
                                     (table, after_lsn, SEED, limit)).fetchall()
            rows.sort(key=lambda r: r[2])
            out = []
            for tbl, key, lsn, t, op, size, identity, profile, moved in rows[:limit]:
                prev = _prev_version(conn, self.segments, tbl, key, lsn)
                out.append(observation(lsn, t, tbl, key, op, 0 if size is None else int(size), identity,
                                       profile_of(None if profile is None else bytes(profile)), prev, moved))
            return out

    def apply(self, changes: Sequence[ChangeLike], through: int | None = None) -> int:
        """Store every change after the cursor and move the cursor, in one transaction; returns the new cursor.

        Changes at or below the cursor are skipped (a repeated page is a no-op). ``through``: also move the
        cursor up to this LSN when the page ended after its last change (e.g. changes of other tables). A change
        whose frame does not open fails the whole batch (ApplyError): nothing is stored, the cursor stays.
        """
        try:
            return self._apply(changes, through)
        finally:
            self.train_due_dictionaries()

    def _apply(self, changes: Sequence[ChangeLike], through: int | None) -> int:
        ring = self._keyring()
        observers = self._observers  # replaced, never mutated: this batch notifies the ones present now
        batch: list[ChangeObservation] = []
        with self.write() as conn:
            cursor = int(get_meta(conn, "cursor", 0))
            todo = sorted({c.lsn: c for c in changes if c.lsn > cursor}.values(), key=lambda c: c.lsn)
            rows = [self._prepare(ring, c) for c in todo]
            new_cursor = max([cursor, *(r.lsn for r in rows), *([through] if through is not None else [])])
            if new_cursor == cursor:
                return cursor
            if observers and rows:
                # Before the insert, in the same transaction: the previous versions are the ones this batch follows.
                batch = self._observations(conn, rows)
            conn.executemany(_INSERT, [r.params() for r in rows])
            set_meta(conn, "cursor", new_cursor)
            if rows and get_meta(conn, "origin") is None:
                # History that starts with a change, not a seed, is exact from the cursor before it on.
                set_meta(conn, "origin", {"lsn": cursor, "time": rows[0].time})
        if batch:
            self._notify(observers, batch)  # after COMMIT: an observer never sees a batch that could roll back
        return new_cursor

    def seed(self, snapshot_lsn: int, blocks: Iterable[BlockLike], *, tables: Sequence[str] | None = None,
             now: float | None = None) -> int:
        """Take the node's state at ``snapshot_lsn`` as the base: each block becomes a ``seed`` version at its own
        LSN (time: now, the real one is unknown) unless already stored; cursor = snapshot_lsn; one transaction.

        On a history that already has a cursor (a re-seed after a gap), keys live at the old cursor that the
        snapshot no longer holds get a delete at ``snapshot_lsn`` (only in ``tables`` when given), and the range
        between is recorded as a gap: state inside it is not exact. A snapshot at the cursor itself (tables were
        added and nothing was written since) only adds the blocks not stored yet: no deletes, no gap. Returns the
        new cursor.
        """
        try:
            return self._seed(snapshot_lsn, blocks, tables, now)
        finally:
            self.train_due_dictionaries()

    def _seed(self, snapshot_lsn: int, blocks: Iterable[BlockLike], tables: Sequence[str] | None,
              now: float | None) -> int:
        now = _time.time() if now is None else now
        ring = self.current_keyring()
        with self.write() as conn:
            cursor = int(get_meta(conn, "cursor", 0))
            if snapshot_lsn < cursor and get_meta(conn, "origin") is not None:
                return cursor  # older than what the history already holds: nothing to learn from it
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS seen (tbl TEXT, key TEXT, PRIMARY KEY (tbl, key))")
            conn.execute("DELETE FROM seen")
            chunk: list[BlockLike] = []
            for block in blocks:
                chunk.append(block)
                if len(chunk) >= SEED_CHUNK:
                    self._seed_chunk(conn, ring, chunk, now)
                    chunk = []
            self._seed_chunk(conn, ring, chunk, now)
            had_history = get_meta(conn, "origin") is not None
            if had_history and snapshot_lsn > cursor:
                self._seed_deletes(conn, cursor, snapshot_lsn, tables, now)
                conn.execute("INSERT OR IGNORE INTO gaps (after_lsn, upto_lsn, time) VALUES (?, ?, ?)",
                             (cursor, snapshot_lsn, now))
            elif not had_history:
                set_meta(conn, "origin", {"lsn": snapshot_lsn, "time": now})
            conn.execute("DELETE FROM seen")
            set_meta(conn, "cursor", max(cursor, snapshot_lsn))
            return max(cursor, snapshot_lsn)

    def _seed_chunk(self, conn: sqlite3.Connection, ring: Keyring, chunk: Sequence[BlockLike], now: float) -> None:
        conn.executemany("INSERT OR IGNORE INTO seen (tbl, key) VALUES (?, ?)", [(b.table, b.key) for b in chunk])
        rows = []
        for b in chunk:
            if conn.execute("SELECT 1 FROM frames WHERE tbl = ? AND key = ? AND lsn = ?",
                            (b.table, b.key, b.lsn)).fetchone():
                continue  # this very version is already in the history
            s = self._seal(ring, b.table, b.key, b.lsn, b.frame, b.checksum)
            rows.append(_NewVersion(b.table, b.key, b.lsn, now, SEED, s.key_version, s.size, s.stored_size, s.frame,
                                    s.checksum, None, s.profile).params())
        conn.executemany(_INSERT, rows)

    def _seed_deletes(self, conn: sqlite3.Connection, cursor: int, snapshot_lsn: int,
                      tables: Sequence[str] | None, now: float) -> None:
        """Deletes at ``snapshot_lsn`` for keys live at ``cursor`` that the snapshot does not hold."""
        for tbl in tables if tables is not None else self.tables(conn):
            key: str | None = ""
            while key is not None:
                key = _next_key(conn, tbl, key, inclusive=False)
                if key is None:
                    break
                row = _latest(conn, tbl, key, cursor)
                if row is None or row[2] == DELETE:
                    continue
                if not conn.execute("SELECT 1 FROM seen WHERE tbl = ? AND key = ?", (tbl, key)).fetchone():
                    conn.execute(_INSERT, _NewVersion(tbl, key, snapshot_lsn, now, DELETE, None, 0, None,
                                                      None).params())

    # --- points --------------------------------------------------------------------------------------------

    def exactness(self, conn: sqlite3.Connection) -> Exactness:
        """Where the history is complete (origin, cursor, gaps, last compaction horizons)."""
        origin = get_meta(conn, "origin") or {"lsn": 0}
        hz = get_meta(conn, "horizons") or {}
        gaps = tuple((int(a), int(b)) for a, b in conn.execute("SELECT after_lsn, upto_lsn FROM gaps"))
        return Exactness(exact_from=max(int(origin["lsn"]), int(hz.get("exactFromLsn", 0))),
                         cursor=int(get_meta(conn, "cursor", 0)), gaps=gaps, warm_before=hz.get("warmBefore"),
                         cold_before=hz.get("coldBefore"), interval=hz.get("interval"))

    def _time_to_lsn(self, conn: sqlite3.Connection, t: float, inclusive: bool = True) -> int:
        op = "<=" if inclusive else "<"
        row = conn.execute(f"SELECT lsn FROM frames WHERE time {op} ? ORDER BY time DESC, lsn DESC LIMIT 1",
                           (t,)).fetchone()
        return int(row[0]) if row else 0

    def time_to_lsn(self, t: float) -> int:
        """The LSN of the last stored change at or before time ``t`` (0 if none): one index seek."""
        with self.read() as conn:
            return self._time_to_lsn(conn, t)

    def _resolve(self, conn: sqlite3.Connection, lsn: int | None, time: float | None) -> Point:
        ex = self.exactness(conn)
        if lsn is not None and time is not None:
            raise ValueError("give an LSN or a time, not both")
        if time is not None:
            t, inclusive = timetravel.lookup_time(time, ex)
            resolved = self._time_to_lsn(conn, t, inclusive)
            return Point(resolved, t, inclusive and timetravel.is_exact(resolved, ex))
        resolved = ex.cursor if lsn is None else lsn
        return Point(resolved, None, timetravel.is_exact(resolved, ex))

    def resolve(self, *, lsn: int | None = None, time: float | None = None) -> Point:
        """The point a query at ``lsn`` or ``time`` reads at (default: the cursor), and whether it is exact."""
        with self.read() as conn:
            return self._resolve(conn, lsn, time)

    # --- queries -------------------------------------------------------------------------------------------

    def tables(self, conn: sqlite3.Connection | None = None) -> list[str]:
        """The tables the history holds versions of (skip scan over the primary key)."""
        if conn is None:
            with self.read() as c:
                return self.tables(c)
        out: list[str] = []
        row = conn.execute("SELECT tbl FROM frames ORDER BY tbl LIMIT 1").fetchone()
        while row is not None:
            out.append(row[0])
            row = conn.execute("SELECT tbl FROM frames WHERE tbl > ? ORDER BY tbl LIMIT 1", (row[0],)).fetchone()
        return out

    def _version(self, conn: sqlite3.Connection, table: str, key: str, row: tuple[Any, ...], values: bool,
                 exact: bool | None) -> Version:
        """A stored row as a Version; ``exact`` None: exact when nothing around it was compacted away (hot)."""
        lsn, t, op, tier, segment, kv, size, frame, cs, identity, profile, moved = row
        if size is None:  # a compacted row: its metadata is in its segment
            size = self.segments.row(conn, int(segment), table, key, int(lsn)).size
        value = None
        if values and frame is not None:
            value = open_version(self.current_keyring(), table, key, int(lsn), bytes(frame), self.compressor)
        exact = tier == HOT if exact is None else exact
        return Version(table, key, int(lsn), float(t), op, int(size), kv, value, exact,
                       None if cs is None else bytes(cs), identity, None if profile is None else bytes(profile),
                       moved)

    def value_at(self, table: str, key: str, *, lsn: int | None = None, time: float | None = None,
                 values: bool = True) -> Version | None:
        """The key's version at that point (default: now), or None if absent there: O(log N)."""
        with self.read() as conn:
            point = self._resolve(conn, lsn, time)
            row = _latest(conn, table, key, point.lsn)
            if row is None or row[2] == DELETE:
                return None
            return self._version(conn, table, key, row, values, point.exact)

    def moved_away_at(self, table: str, key: str, *, lsn: int | None = None, time: float | None = None) -> int | None:
        """The LSN at which a reshard moved the key off this shard when that is its last version at the point
        (default: now), else None (docs/resharding.md: absent here, not deleted)."""
        with self.read() as conn:
            point = self._resolve(conn, lsn, time)
            row = _latest(conn, table, key, point.lsn)
            return int(row[0]) if row is not None and row[-1] == timetravel.MOVED_AWAY else None

    def history(self, table: str, key: str, *, after_lsn: int = 0, limit: int = 100,
                values: bool = True) -> list[Version]:
        """The key's versions after ``after_lsn`` in LSN order (deletes included): O(log N + limit)."""
        with self.read() as conn:
            rows = conn.execute(f"SELECT {_ROW} FROM frames WHERE tbl = ? AND key = ? AND lsn > ? ORDER BY lsn "
                                "LIMIT ?", (table, key, after_lsn, limit)).fetchall()
            return [self._version(conn, table, key, r, values, None) for r in rows]

    def state_at(self, table: str, *, lsn: int | None = None, time: float | None = None, start: str | None = None,
                 end: str | None = None, after: str | None = None, limit: int = 100,
                 values: bool = True) -> list[Version]:
        """The live keys at that point in key order, from ``start`` (inclusive) to ``end`` (exclusive), after
        ``after``, at most ``limit``: two index seeks per key visited, O((limit + d) log N) (see module doc)."""
        with self.read() as conn:
            point = self._resolve(conn, lsn, time)
            return self._state(conn, table, point, start, end, after, limit, values)

    def _state(self, conn: sqlite3.Connection, table: str, point: Point, start: str | None, end: str | None,
               after: str | None, limit: int, values: bool) -> list[Version]:
        out: list[Version] = []
        key, inclusive = (after, False) if after is not None and (start is None or after >= start) else \
            (start or "", True)
        while len(out) < limit:
            nxt = _next_key(conn, table, key, inclusive)
            if nxt is None or (end is not None and nxt >= end):
                break
            key, inclusive = nxt, False
            row = _latest(conn, table, nxt, point.lsn)
            if row is not None and row[2] != DELETE:
                out.append(self._version(conn, table, nxt, row, values, point.exact))
        return out

    def diff(self, table: str, *, from_lsn: int | None = None, from_time: float | None = None,
             to_lsn: int | None = None, to_time: float | None = None, after: str | None = None,
             limit: int = 100) -> list[DiffEntry]:
        """Keys whose state differs between two points (to: default now), in key order after ``after``.

        Candidates are the keys with a version between the points (the (tbl, lsn) index); content is compared
        by plaintext checksum, so a rewrap or a rewrite of the same bytes is no change. O(m log m) for the m
        versions between the points, plus O(log N) per key reported.
        """
        with self.read() as conn:
            a = self._resolve(conn, from_lsn, from_time).lsn
            b = self._resolve(conn, to_lsn, to_time).lsn
            if a > b:
                raise ValueError("the 'from' point is after the 'to' point")
            out: list[DiffEntry] = []
            cursor = after
            while len(out) < limit:
                keys = [r[0] for r in conn.execute(
                    "SELECT DISTINCT key FROM frames WHERE tbl = ? AND lsn > ? AND lsn <= ? AND key > ? "
                    "ORDER BY key LIMIT ?", (table, a, b, cursor or "", limit))]
                for key in keys:
                    entry = self._diff_key(conn, table, key, a, b)
                    if entry is not None:
                        out.append(entry)
                        if len(out) >= limit:
                            break
                if len(keys) < limit or len(out) >= limit:
                    break
                cursor = keys[-1]
            return out

    def _diff_key(self, conn: sqlite3.Connection, table: str, key: str, a: int, b: int) -> DiffEntry | None:
        rb, ra = _latest(conn, table, key, a), _latest(conn, table, key, b)
        before = self._version(conn, table, key, rb, False, True) if rb is not None else None
        after = self._version(conn, table, key, ra, False, True) if ra is not None else None
        change = timetravel.classify(before, after)
        return None if change is None else timetravel.diff_entry(key, before, after, change)

    # --- keys ----------------------------------------------------------------------------------------------

    def version_counts(self) -> dict[int, int]:
        """Stored history versions per key version (deletes hold none)."""
        with self.read() as conn:
            return {int(v): int(n) for v, n in conn.execute(
                "SELECT key_version, count(*) FROM frames WHERE key_version IS NOT NULL GROUP BY key_version")}


    def rewrap_batch(self, keyring: Keyring, target: int, batch: int) -> int:
        """Re-seal up to ``batch`` versions not on ``target`` after the persisted cursor (cursor in the same
        transaction); returns how many were re-sealed. Progress and problems: rewrapper.progress."""
        with self.write() as conn:
            return rewrapper.batch_in_txn(conn, self.segments, keyring, target, batch)

    # --- tiers and snapshots -------------------------------------------------------------------------------

    def compact(self, now: float, retention: Retention, interval: float,
                chunk: int = compaction.DEFAULT_CHUNK) -> dict[str, int]:
        """Move hot versions past ``retention.hot`` into warm (last per key per ``interval``), warm past
        ``retention.warm`` into cold (last per key per hour), expire cold past ``retention.cold`` (the base
        state stays). Chunked transactions; counts of what moved and what was dropped."""
        h = tiers.horizons(now, retention, interval)
        with self.write() as conn:
            prev = get_meta(conn, "horizons") or {}
            h = tiers.Horizons(max(h.warm_before, prev.get("warmBefore", h.warm_before)),
                               max(h.cold_before, prev.get("coldBefore", h.cold_before)),
                               max(h.expire_before, prev.get("expireBefore", h.expire_before)), interval)
            # Recorded before anything moves, so no crash in between can make a compacted point look exact.
            set_meta(conn, "horizons", {"warmBefore": h.warm_before, "coldBefore": h.cold_before,
                                        "expireBefore": h.expire_before, "interval": interval,
                                        "exactFromLsn": max(int(prev.get("exactFromLsn", 0)),
                                                            compaction.exact_from_lsn(conn, h.warm_before))})
            out = {"snapshotsDropped": compaction.drop_snapshots(conn, h)}
        steps = (("warm", "warmDropped", lambda c: compaction.move_chunk(c, self.segments, HOT, h, chunk)),
                 ("cold", "coldDropped", lambda c: compaction.move_chunk(c, self.segments, tiers.WARM, h, chunk)),
                 (None, "expired", lambda c: compaction.expire_chunk(c, self.segments, h, chunk)))
        for kept_name, dropped_name, step in steps:
            while True:
                with self.write() as conn:
                    kept, dropped = step(conn)
                if kept_name is not None:
                    out[kept_name] = out.get(kept_name, 0) + kept
                out[dropped_name] = out.get(dropped_name, 0) + dropped
                if kept + dropped == 0:
                    break
        return out

    def take_snapshot(self, interval: float, full_every: int, granularity: str = DIFFERENTIAL,
                      now: float | None = None) -> SnapshotRef | None:
        """Take the snapshot due at the last interval boundary the capture passed (None if none is due)."""
        with self.write() as conn:
            return snapshots.take(conn, interval, full_every, granularity, now)

    def snapshots(self) -> list[SnapshotRef]:
        """The stored snapshots, oldest first."""
        with self.read() as conn:
            return snapshots.listing(conn)

    def snapshot_state(self, snapshot_id: int) -> dict[tuple[str, str], int]:
        """The live (table, key) -> version LSN at a snapshot, read through its chain."""
        with self.read() as conn:
            return snapshots.state(conn, snapshot_id)

    def stats(self) -> dict[str, Any]:
        """Per tier: versions, stored and raw bytes, oldest time and LSN; the compression ratio; the oldest
        restorable time. O(hot versions) for the hot tier, O(segments) for the others."""
        with self.read() as conn:
            hot = conn.execute("SELECT count(*), coalesce(sum(stored_size), 0), coalesce(sum(size), 0), min(time), "
                               "min(lsn) FROM frames WHERE tier = ?", (HOT,)).fetchone()
            rows = {HOT: hot}
            for tier in (tiers.WARM, COLD):
                rows[tier] = conn.execute(
                    "SELECT coalesce(sum(rows), 0), coalesce(sum(stored_bytes), 0), coalesce(sum(raw_bytes), 0), "
                    "min(min_time), min(min_lsn) FROM segments WHERE tier = ?", (tier,)).fetchone()
            origin = get_meta(conn, "origin") or {}
            hz = get_meta(conn, "horizons") or {}
            n_snaps = conn.execute("SELECT count(*) FROM snapshots").fetchone()[0]
            cursor = int(get_meta(conn, "cursor", 0))
        out: dict[str, Any] = {"tiers": {TIER_NAMES[t]: {"versions": r[0], "storedBytes": r[1], "rawBytes": r[2],
                                                         "oldestTime": r[3], "oldestLsn": r[4]}
                                         for t, r in rows.items()}}
        stored, raw = sum(r[1] for r in rows.values()), sum(r[2] for r in rows.values())
        oldest = [t for t in (origin.get("time"), hz.get("expireBefore")) if t is not None]
        out |= {"compressionRatio": raw / stored if stored else None, "cursor": cursor, "snapshots": n_snaps,
                "oldestRestorableTime": max(oldest) if oldest else None}
        return out

    def cold_segments(self, after: int = 0, limit: int = 10) -> list[ColdSegment]:
        """Cold segments with id > ``after`` (oldest first), each with its metadata rows and sealed frames, for
        export to object storage (backup.ExportBatch takes rows and frames as they are)."""
        with self.read() as conn:
            ids = [int(r[0]) for r in conn.execute("SELECT id FROM segments WHERE tier = ? AND id > ? ORDER BY id "
                                                   "LIMIT ?", (COLD, after, limit))]
            out = []
            for seg in ids:
                index = self.segments.rows(conn, seg)
                frames = {(t, k, lsn): None if f is None else bytes(f) for t, k, lsn, f in conn.execute(
                    "SELECT tbl, key, lsn, frame FROM frames WHERE segment = ?", (seg,))}
                rows = sorted(index.values(), key=lambda r: r.lsn)
                out.append(ColdSegment(seg, rows, [frames[(r.table, r.key, r.lsn)] for r in rows]))
            return out


@dataclass(frozen=True)
class ColdSegment:
    """One cold segment for export: its id, metadata rows (LSN order) and the frame of each (None: a delete)."""

    id: int
    rows: list[MetaRow]
    frames: list[bytes | None]


def _next_key(conn: sqlite3.Connection, table: str, key: str, inclusive: bool) -> str | None:
    """The first key of ``table`` at or after (``inclusive``) or after ``key``: one seek on the primary key."""
    op = ">=" if inclusive else ">"
    row = conn.execute(f"SELECT key FROM frames WHERE tbl = ? AND key {op} ? ORDER BY key LIMIT 1",
                       (table, key)).fetchone()
    return None if row is None else str(row[0])


def _prev_version(conn: sqlite3.Connection, segments: SegmentCache, table: str, key: str,
                  lsn: int) -> PrevVersion | None:
    """The key's last stored version below ``lsn`` (a compacted row's size read from its segment)."""
    row = conn.execute("SELECT lsn, op, size, segment, profile FROM frames WHERE tbl = ? AND key = ? AND lsn < ? "
                       "ORDER BY lsn DESC LIMIT 1", (table, key, lsn)).fetchone()
    if row is None:
        return None
    prev_lsn, op, size, segment, profile = row
    if size is None and segment is not None:
        size = segments.row(conn, int(segment), table, key, int(prev_lsn)).size
    return prev_version(int(prev_lsn), str(op), None if size is None else int(size),
                        None if profile is None else bytes(profile))


def _latest(conn: sqlite3.Connection, table: str, key: str, lsn: int) -> tuple[Any, ...] | None:
    """The key's last stored version at or before ``lsn``: one seek on the primary key."""
    row = conn.execute(f"SELECT {_ROW} FROM frames WHERE tbl = ? AND key = ? AND lsn <= ? ORDER BY lsn DESC LIMIT 1",
                       (table, key, lsn)).fetchone()
    return None if row is None else tuple(row)
