"""Consumer slots on the change log (replication-slot semantics) and the pure trim decision.

A slot names a consumer and the LSN it has acknowledged; the trim keeps every entry after the lowest
acknowledgement of the active slots, within the hard bounds ``changeLogMaxRetain`` (entries) and
``changeLogMaxRetainBytes`` (frame bytes). When a bound forces trimming past a slot's acknowledgement the slot
becomes ``behind``: it no longer holds the log, and its consumer must re-seed from ``/v1/snapshot``.
The SQL functions run inside the store writer's transaction; ``plan_trim`` is pure.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import changelog

SCHEMA = """
CREATE TABLE IF NOT EXISTS consumers (
    name TEXT PRIMARY KEY,
    acked_lsn INTEGER NOT NULL,        -- everything up to here is consumed; the log keeps what follows
    registered_lsn INTEGER NOT NULL,   -- where the slot's stream began (frames recorded for every later entry)
    created REAL NOT NULL,
    updated REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'behind'))
);
"""

ACTIVE, BEHIND = "active", "behind"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_COLS = "name, acked_lsn, registered_lsn, created, updated, state"


class StartUnavailable(Exception):
    """The requested start LSN is older than what the log still holds with frames."""

    def __init__(self, requested: int, earliest: int) -> None:
        super().__init__(f"startLsn {requested} is older than the earliest available start {earliest}")
        self.requested, self.earliest = requested, earliest


class BeyondLog(Exception):
    """An LSN after the last one assigned (a start or an acknowledgement of something never written)."""

    def __init__(self, lsn: int, last: int) -> None:
        super().__init__(f"LSN {lsn} is after the last LSN {last}")
        self.lsn, self.last = lsn, last


class UnknownConsumer(Exception):
    """No slot of that name."""


@dataclass(frozen=True)
class Slot:
    """One consumer slot as stored."""

    name: str
    acked_lsn: int
    registered_lsn: int
    created: float
    updated: float
    state: str

    def to_json(self, last_lsn: int, oldest_unacked: float | None, now: float) -> dict[str, Any]:
        """The API form; ``oldest_unacked`` is the commit time of the first entry after the ack (if any)."""
        lag = max(0, last_lsn - self.acked_lsn)
        seconds = 0.0 if lag == 0 or oldest_unacked is None else max(0.0, now - oldest_unacked)
        return {"name": self.name, "ackedLsn": self.acked_lsn, "registeredLsn": self.registered_lsn,
                "state": self.state, "lagLsn": lag, "lagSeconds": seconds, "created": self.created,
                "updated": self.updated}


# ---- the pure trim decision ------------------------------------------------------------------------
@dataclass(frozen=True)
class TrimBounds:
    """``retain``: entries kept regardless of consumers (changeLogRetain); the hard bounds no slot overrides."""

    retain: int
    max_entries: int
    max_bytes: int


@dataclass(frozen=True)
class TrimPlan:
    """Delete every entry with LSN <= ``cutoff`` (0: none); ``behind``: active slots that lose entries they need."""

    cutoff: int
    behind: tuple[str, ...]


def _byte_cutoff(first_lsn: int, held: int, held_bytes: int, max_bytes: int) -> int:
    """The cutoff that brings the frame bytes under ``max_bytes``, taking every held entry as the average size
    (only the total is kept; the next trim pass corrects what the average got wrong)."""
    if held == 0 or held_bytes <= max_bytes:
        return 0
    drop = math.ceil((held_bytes - max_bytes) * held / held_bytes)
    return first_lsn - 1 + drop


def plan_trim(last_lsn: int, first_lsn: int, slots: Sequence[Slot], bounds: TrimBounds, held_bytes: int) -> TrimPlan:
    """What one trim pass deletes and which slots it puts behind.

    Entries are kept for ``retain`` and after the lowest ack of the active slots (slots only extend retention,
    so plain change-log readers such as the cache see what they saw before), but never more than the bounds allow.
    """
    held = 0 if first_lsn == 0 else last_lsn - first_lsn + 1
    keep = last_lsn - bounds.retain
    acks = [s.acked_lsn for s in slots if s.state == ACTIVE]
    if acks:
        keep = min(keep, min(acks))
    forced = max(last_lsn - bounds.max_entries, _byte_cutoff(first_lsn, held, held_bytes, bounds.max_bytes))
    cutoff = min(max(keep, forced), last_lsn)
    if held == 0 or cutoff < first_lsn:
        cutoff = 0
    # Everything up to `lost` is gone after this pass (an empty log has lost all it ever held).
    lost = max(cutoff, first_lsn - 1 if first_lsn else last_lsn)
    behind = tuple(s.name for s in slots if s.state == ACTIVE and s.acked_lsn < lost)
    return TrimPlan(cutoff, behind)


@dataclass(frozen=True)
class TrimResult:
    """What one trim transaction did; ``more``: the plan's cutoff is not reached yet (chunked)."""

    deleted: int
    behind: tuple[str, ...]
    more: bool


def trim_in_txn(conn: sqlite3.Connection, bounds: TrimBounds, chunk: int, now: float) -> TrimResult:
    """Plan and apply one trim step of at most ``chunk`` entries (bounded writer time per transaction)."""
    last, first = changelog.last_lsn(conn), changelog.first_lsn(conn)
    plan = plan_trim(last, first, list_slots(conn), bounds, changelog.frame_bytes(conn))
    if plan.behind:
        conn.executemany("UPDATE consumers SET state = ?, updated = ? WHERE name = ?",
                         [(BEHIND, now, n) for n in plan.behind])
    if plan.cutoff == 0:
        return TrimResult(0, plan.behind, False)
    upto = min(plan.cutoff, first - 1 + chunk)
    return TrimResult(changelog.delete_through(conn, upto), plan.behind, upto < plan.cutoff)


# ---- the slot table (inside the writer's transaction, or a reader's) ------------------------------------
def has_consumers(conn: sqlite3.Connection) -> bool:
    """True while any slot exists (frames are recorded then)."""
    return conn.execute("SELECT EXISTS (SELECT 1 FROM consumers)").fetchone()[0] == 1


def get(conn: sqlite3.Connection, name: str) -> Slot | None:
    """One slot or None."""
    row = conn.execute(f"SELECT {_COLS} FROM consumers WHERE name = ?", (name,)).fetchone()
    return Slot(*row) if row else None


def list_slots(conn: sqlite3.Connection) -> list[Slot]:
    """Every slot, by name."""
    return [Slot(*row) for row in conn.execute(f"SELECT {_COLS} FROM consumers ORDER BY name")]


def earliest_start(conn: sqlite3.Connection) -> int:
    """The oldest start LSN a slot may be given now: entries after it are all held, each with its frame."""
    last, first = changelog.last_lsn(conn), changelog.first_lsn(conn)
    since = changelog.frames_from(conn) if has_consumers(conn) else None
    with_frames = last if since is None else since - 1  # no slot yet: frames begin with the next entry
    held = first - 1 if first else last
    return max(with_frames, held)


def register(conn: sqlite3.Connection, name: str, start: int | None, reset: bool, now: float) -> tuple[Slot, bool]:
    """Create (or with ``reset`` re-create) a slot at ``start`` (default: the last LSN); an existing slot is
    returned unchanged otherwise. Returns (slot, whether it was written)."""
    existing = get(conn, name)
    if existing is not None and not reset:
        return existing, False
    last = changelog.last_lsn(conn)
    start = last if start is None else start
    if start > last:
        raise BeyondLog(start, last)
    earliest = earliest_start(conn)
    if start < earliest:
        raise StartUnavailable(start, earliest)
    if not has_consumers(conn):
        changelog.set_frames_from(conn, last + 1)
    slot = Slot(name, start, start, existing.created if existing else now, now, ACTIVE)
    conn.execute(f"INSERT OR REPLACE INTO consumers ({_COLS}) VALUES (?, ?, ?, ?, ?, ?)",
                 (slot.name, slot.acked_lsn, slot.registered_lsn, slot.created, slot.updated, slot.state))
    return slot, True


def unregister(conn: sqlite3.Connection, name: str) -> Slot:
    """Drop a slot; the last one gone stops frame recording (frames already logged age out with the log)."""
    slot = get(conn, name)
    if slot is None:
        raise UnknownConsumer(name)
    conn.execute("DELETE FROM consumers WHERE name = ?", (name,))
    if not has_consumers(conn):
        changelog.set_frames_from(conn, None)
    return slot


def ack(conn: sqlite3.Connection, name: str, lsn: int, now: float) -> Slot:
    """Advance a slot's acknowledgement to ``lsn`` (never backwards); a behind slot stays behind."""
    slot = get(conn, name)
    if slot is None:
        raise UnknownConsumer(name)
    last = changelog.last_lsn(conn)
    if lsn > last:
        raise BeyondLog(lsn, last)
    acked = max(slot.acked_lsn, lsn)
    conn.execute("UPDATE consumers SET acked_lsn = ?, updated = ? WHERE name = ?", (acked, now, name))
    return Slot(name, acked, slot.registered_lsn, slot.created, now, slot.state)


def describe(conn: sqlite3.Connection, slot: Slot, now: float, last_lsn: int | None = None) -> dict[str, Any]:
    """A slot's API form with its lag read from the log."""
    last = changelog.last_lsn(conn) if last_lsn is None else last_lsn
    return slot.to_json(last, changelog.time_after(conn, slot.acked_lsn), now)
