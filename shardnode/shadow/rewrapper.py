"""Rewrap the history: re-seal every stored version onto the keyring's primary, in batches whose cursor commits
with them (a crash resumes where the last batch ended). The payload is never decompressed (sealing.rewrap_version).

A pass visits the hot tier in primary-key order, then the compacted segments in id order; compaction during a
pass only moves versions into segments with higher ids, which the pass reaches later, so none is missed. A
version that does not open (tampered, or its key version is gone) is left exactly as it was and reported: it
keeps counting under its old key version in ``version_counts``, so the KeyRotation never retires a version that
is still needed.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chronoshard.shardnode.keys.crypto import IntegrityError
from chronoshard.shardnode.keys.keyring import Keyring, MissingKeyVersion

from . import segments
from .historydb import get_meta, set_meta
from .sealing import rewrap_version
from .segments import SegmentCache
from .tiers import HOT

if TYPE_CHECKING:
    from .history import HistoryStore

log = logging.getLogger(__name__)

META_KEY = "rewrap"
DEFAULT_BATCH = 128
MAX_PROBLEMS = 50
HOT_PHASE, SEGMENT_PHASE = "hot", "segments"


def idle_state() -> dict[str, Any]:
    """The state before any rewrap ran (the node's shape, with a two-phase cursor)."""
    return {"state": "idle", "target": None, "cursor": None, "rewrapped": 0, "failed": 0, "passes": 0,
            "batchSize": DEFAULT_BATCH, "pauseSeconds": None, "started": None, "finished": None,
            "lastError": None, "problems": []}


def load_state(conn: sqlite3.Connection) -> dict[str, Any]:
    """The persisted rewrap state."""
    return get_meta(conn, META_KEY) or idle_state()


def start_in_txn(conn: sqlite3.Connection, target: int, batch_size: int, pause: float | None = None) -> dict[str, Any]:
    """Start a pass to ``target``, or resume the running one to the same target (its cursor kept)."""
    st = load_state(conn)
    if st["state"] == "running" and st["target"] == target:
        st["batchSize"] = batch_size
    else:
        st = idle_state() | {"state": "running", "target": target, "batchSize": batch_size, "started": time.time(),
                             "cursor": {"phase": HOT_PHASE, "after": None}}
    st["pauseSeconds"] = pause
    set_meta(conn, META_KEY, st)
    return st


def _reseal(conn: sqlite3.Connection, keyring: Keyring, st: dict[str, Any],
            rows: list[tuple[Any, ...]]) -> int:
    """Re-seal ``rows`` (tbl, key, lsn, key_version, frame) onto the target; failures recorded, rows left."""
    updates = []
    for tbl, key, lsn, version, frame in rows:
        try:
            sealed = rewrap_version(keyring, tbl, key, int(lsn), bytes(frame), st["target"])
        except (IntegrityError, MissingKeyVersion) as exc:
            st["failed"] += 1
            st["lastError"] = f"{tbl}/{key}@{lsn}: {exc}"
            if len(st["problems"]) < MAX_PROBLEMS:
                st["problems"].append({"table": tbl, "key": key, "lsn": lsn, "keyVersion": version,
                                       "error": str(exc)})
            continue
        updates.append((sealed.frame, sealed.key_version, sealed.stored_size, tbl, key, lsn))
    conn.executemany("UPDATE frames SET frame = ?, key_version = ?, stored_size = CASE WHEN size IS NULL THEN NULL "
                     "ELSE ? END WHERE tbl = ? AND key = ? AND lsn = ?", updates)
    st["rewrapped"] += len(updates)
    return len(updates)


def _hot_batch(conn: sqlite3.Connection, keyring: Keyring, st: dict[str, Any]) -> int:
    after = st["cursor"]["after"] or ["", "", -1]
    rows = conn.execute(
        "SELECT tbl, key, lsn, key_version, frame FROM frames WHERE (tbl, key, lsn) > (?, ?, ?) AND tier = ? "
        "AND frame IS NOT NULL AND key_version != ? ORDER BY tbl, key, lsn LIMIT ?",
        (after[0], after[1], after[2], HOT, st["target"], st["batchSize"])).fetchall()
    done = _reseal(conn, keyring, st, rows)
    if len(rows) < st["batchSize"]:
        st["cursor"] = {"phase": SEGMENT_PHASE, "after": 0}
    else:
        st["cursor"] = {"phase": HOT_PHASE, "after": list(rows[-1][:3])}
    return done


def _segment_batch(conn: sqlite3.Connection, cache: SegmentCache, keyring: Keyring, st: dict[str, Any]) -> int:
    """The next segment with a version off the target (one segment per batch: it is re-encoded once)."""
    row = conn.execute("SELECT segment FROM frames WHERE segment > ? AND frame IS NOT NULL AND key_version != ? "
                       "ORDER BY segment LIMIT 1", (st["cursor"]["after"], st["target"])).fetchone()
    if row is None or row[0] is None:
        st["state"], st["finished"] = "done", time.time()
        return 0
    seg = int(row[0])
    rows = conn.execute("SELECT tbl, key, lsn, key_version, frame FROM frames WHERE segment = ? AND "
                        "frame IS NOT NULL AND key_version != ?", (seg, st["target"])).fetchall()
    done = _reseal(conn, keyring, st, rows)
    segments.refresh(conn, cache, [seg])  # the segment's key versions and stored sizes follow (new id if changed)
    st["cursor"] = {"phase": SEGMENT_PHASE, "after": seg}
    return done


def batch_in_txn(conn: sqlite3.Connection, cache: SegmentCache, keyring: Keyring, target: int, batch: int) -> int:
    """One batch of a pass to ``target`` after the persisted cursor, cursor saved in the same transaction;
    returns how many versions were re-sealed. Starts a pass if none runs to ``target``."""
    st = load_state(conn)
    if st["state"] == "done" and st["target"] == target:
        return 0
    if st["state"] != "running" or st["target"] != target:
        # Not started, or the primary moved on mid-pass (another rotation): a new pass to the new target.
        passes = st["passes"] + (1 if st["state"] == "running" else 0)
        st = start_in_txn(conn, target, batch, st.get("pauseSeconds")) | {"passes": passes}
    st["batchSize"] = batch
    if st["cursor"]["phase"] == HOT_PHASE:
        done = _hot_batch(conn, keyring, st)
    else:
        done = _segment_batch(conn, cache, keyring, st)
    set_meta(conn, META_KEY, st)
    return done


def progress_in(conn: sqlite3.Connection) -> dict[str, Any]:
    """The persisted state plus live per-version counts of history versions (the ``GET /v1/rewrap`` body)."""
    st = load_state(conn)
    counts = {int(v): int(n) for v, n in conn.execute(
        "SELECT key_version, count(*) FROM frames WHERE key_version IS NOT NULL GROUP BY key_version")}
    remaining = sum(n for v, n in counts.items() if v != st["target"]) if st["target"] else None
    return st | {"blocks": {str(v): n for v, n in sorted(counts.items())}, "remaining": remaining}


class RewrapRunner:
    """Drives batches from the event loop (each in a worker thread) so queries and capture keep flowing."""

    def __init__(self, history: HistoryStore, keyring: Callable[[], Keyring | None], pause: float = 0.0) -> None:
        self.history = history
        self._keyring = keyring
        self.pause = pause
        self._task: asyncio.Task[None] | None = None
        # A batch runs in a worker thread that cancelling the loop does not stop: ``stop`` takes this lock to wait
        # for it, and ``_stopped`` keeps a batch that had not begun yet from starting, so the caller may then
        # close the history (closing a SQLite connection under a writing thread crashes the process).
        self._stepping = threading.Lock()
        self._stopped = False

    @property
    def running(self) -> bool:
        """True while a batch loop is active in this process."""
        return self._task is not None and not self._task.done()

    def _ring(self) -> Keyring:
        ring = self._keyring()
        if ring is None:
            raise RuntimeError("no keyring is loaded")
        return ring

    def progress(self) -> dict[str, Any]:
        """Persisted progress plus per-version counts (blocking: call from a worker thread)."""
        with self.history.read() as conn:
            return progress_in(conn)

    def _start(self, batch_size: int, pause: float | None) -> dict[str, Any]:
        target = self._ring().primary
        with self.history.write() as conn:
            return start_in_txn(conn, target, batch_size, pause)

    async def start(self, batch_size: int = DEFAULT_BATCH, pause: float | None = None) -> dict[str, Any]:
        """Start a pass to the current primary (or resume the running one); ``pause`` between batches."""
        st = await asyncio.to_thread(self._start, batch_size, pause)
        self._ensure_task()
        return st

    async def resume_if_running(self) -> None:
        """At start-up: continue a pass a crash interrupted."""
        st = await asyncio.to_thread(self.progress)
        if st["state"] == "running":
            log.info("resuming interrupted history rewrap")
            self._ensure_task()

    def _ensure_task(self) -> None:
        if not self.running:
            self._task = asyncio.create_task(self._loop(), name="history-rewrap")

    def step(self) -> dict[str, Any]:
        """One batch towards the current primary (blocking); the state after it."""
        with self._stepping:
            if self._stopped:
                raise RuntimeError("the history rewrap was stopped")
            ring = self._ring()
            st = self.progress()
            self.history.rewrap_batch(ring, ring.primary, int(st.get("batchSize") or DEFAULT_BATCH))
            return self.progress()

    async def _loop(self) -> None:
        while True:
            try:
                st = await asyncio.to_thread(self.step)
            except Exception:
                log.exception("history rewrap batch failed; retrying")
                await asyncio.sleep(1.0)
                continue
            if st["state"] != "running":
                log.info("history rewrap %s: %d re-sealed, %d failed", st["state"], st["rewrapped"], st["failed"])
                return
            pause = st.get("pauseSeconds")
            await asyncio.sleep(self.pause if pause is None else pause)

    async def stop(self) -> None:
        """Cancel the loop and wait for a batch already running in its thread (the persisted cursor lets the next
        process resume); afterwards no batch touches the history."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await asyncio.to_thread(self._wait_for_batch)

    def _wait_for_batch(self) -> None:
        with self._stepping:
            pass
