"""Rewrap: re-encrypt every block not on the primary version, in batches whose cursor commits with them."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from chronoshard.shardnode.keys.crypto import IntegrityError, open_block, seal_block
from chronoshard.shardnode.keys.keyring import Keyring, MissingKeyVersion

from . import changelog
from .pacing import ForegroundGauge, Pace, next_pace
from .store import Store, get_meta, set_meta, version_counts

log = logging.getLogger(__name__)

META_KEY = "rewrap"
DEFAULT_BATCH = 128
MAX_PROBLEMS = 50
YIELD_EVERY = 16  # blocks between two offers of the GIL inside a batch (about 0.1-0.3 ms of crypto at 4 KiB)


def idle_state() -> dict[str, Any]:
    """The state before any rewrap ran."""
    return {"state": "idle", "target": None, "cursor": None, "rewrapped": 0, "failed": 0, "passes": 0,
            "batchSize": DEFAULT_BATCH, "pauseSeconds": None, "started": None, "finished": None,
            "lastError": None, "problems": []}


def load_state(conn: sqlite3.Connection) -> dict[str, Any]:
    """The persisted rewrap state."""
    return get_meta(conn, META_KEY) or idle_state()


def start_in_txn(conn: sqlite3.Connection, keyring: Keyring, batch_size: int,
                 pause: float | None = None) -> dict[str, Any]:
    """Start a rewrap to the current primary, or resume the running one (keeping its cursor)."""
    st = load_state(conn)
    if st["state"] == "running" and st["target"] == keyring.primary:
        st["batchSize"] = batch_size
    else:
        st = idle_state() | {"state": "running", "target": keyring.primary, "batchSize": batch_size,
                             "started": time.time()}
    st["pauseSeconds"] = pause
    set_meta(conn, META_KEY, st)
    return st


def batch_in_txn(conn: sqlite3.Connection, keyring: Keyring, frames: bool = False,
                 limit: int | None = None) -> dict[str, Any]:
    """Rewrap one batch after the cursor and persist the new cursor in the same transaction; ``frames``: each
    change entry carries the block's new frame (consumers exist); ``limit``: this batch's size (default: the
    run's ``batchSize``; adaptive pacing passes smaller ones while clients are active)."""
    st = load_state(conn)
    if st["state"] != "running":
        return st
    if st["target"] != keyring.primary:
        # The primary moved on mid-run (another rotation): start over towards the new primary.
        st |= {"target": keyring.primary, "cursor": None, "passes": st["passes"] + 1}
    cur = st["cursor"] or ["", ""]
    batch_size = limit or st["batchSize"]
    rows = conn.execute(
        "SELECT id, tbl, key, key_version, size, checksum, frame FROM blocks "
        "WHERE (tbl, key) > (?, ?) AND key_version != ? ORDER BY tbl, key LIMIT ?",
        (cur[0], cur[1], st["target"], batch_size),
    ).fetchall()
    changes: list[tuple[float, str, str, str, int, int, bytes | None, bytes | None]] = []
    updates: list[tuple[bytes, int, int]] = []
    for n, (row_id, tbl, key, version, size, cs, frame) in enumerate(rows, 1):
        if n % YIELD_EVERY == 0:
            # Let a waiting thread (the event loop, a reader) take the GIL now rather than at the end of the
            # interpreter's 5 ms switch interval: a batch's crypto would otherwise add up to that to a read.
            time.sleep(0)
        try:
            plaintext = open_block(keyring, tbl, key, bytes(frame), bytes(cs))
        except (IntegrityError, MissingKeyVersion) as exc:
            # Leave the block exactly as it was: it stays counted under its old version, so no key is retired.
            st["failed"] += 1
            st["lastError"] = f"{tbl}/{key}: {exc}"
            if len(st["problems"]) < MAX_PROBLEMS:
                st["problems"].append({"table": tbl, "key": key, "keyVersion": version, "error": str(exc)})
            continue
        new_frame, _, new_version = seal_block(keyring, tbl, key, plaintext, version=st["target"])
        logged = (new_frame, bytes(cs)) if frames else (None, None)
        changes.append((time.time(), tbl, key, "rewrap", new_version, size, *logged))
        updates.append((new_frame, new_version, row_id))
    if changes:
        # One executemany per table instead of two statements per block. The writer thread is the only
        # writer and AUTOINCREMENT hands out consecutive LSNs inside one transaction, which is checked.
        base = changelog.last_lsn(conn)
        conn.executemany("INSERT INTO changes (time, tbl, key, op, key_version, size, frame, checksum) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", changes)
        if changelog.last_lsn(conn) != base + len(changes):
            raise RuntimeError("change-log LSNs were not consecutive; rewrap batch rolled back")
        conn.executemany("UPDATE blocks SET frame = ?, key_version = ?, lsn = ? WHERE id = ?",
                         [(f, v, base + i + 1, rid) for i, (f, v, rid) in enumerate(updates)])
        if frames:
            changelog.add_frame_bytes(conn, sum(len(f) for f, _, _ in updates))
        st["rewrapped"] += len(updates)
    if rows:
        st["cursor"] = [rows[-1][1], rows[-1][2]]
    if len(rows) < batch_size:
        st["state"] = "done"
        st["finished"] = time.time()
    set_meta(conn, META_KEY, st)
    return st


def progress(conn: sqlite3.Connection) -> dict[str, Any]:
    """The persisted state plus live per-version block counts (the `GET /v1/rewrap` body)."""
    st = load_state(conn)
    counts = version_counts(conn)
    remaining = sum(n for v, n in counts.items() if v != st["target"]) if st["target"] else None
    return st | {"blocks": {str(v): n for v, n in sorted(counts.items())}, "remaining": remaining}


class RewrapRunner:
    """Drives batches from the event loop so reads and writes keep flowing between them.

    The pause between batches is the run's ``pauseSeconds`` if the request gave one (a threat rotation: 0), else
    the node's configured ``pause``; if that is None too, the pace adapts to the foreground (pacing.py).
    """

    def __init__(self, store: Store, pause: float | None = 0.0, gauge: ForegroundGauge | None = None) -> None:
        self.store = store
        self.pause = pause
        self.gauge = gauge
        self.pace: Pace | None = None  # the adaptive pace of the batch in progress (GET /v1/rewrap shows it)
        self._task: asyncio.Task[None] | None = None
        self.on_batch: list[Any] = []

    @property
    def running(self) -> bool:
        """True while a batch loop is active in this process."""
        return self._task is not None and not self._task.done()

    async def start(self, batch_size: int = DEFAULT_BATCH, pause: float | None = None) -> dict[str, Any]:
        """Start or resume; ``pause`` (seconds between batches, persisted) overrides the configured one."""
        ring = self.store.current_keyring()
        st = await self.store.write(lambda c: start_in_txn(c, ring, batch_size, pause))
        self._ensure_task()
        return st

    async def resume_if_running(self) -> None:
        """At start-up: continue a rewrap a crash interrupted."""
        st = await self.store.read(load_state)
        if st["state"] == "running":
            log.info("resuming interrupted rewrap at cursor %s", st["cursor"])
            self._ensure_task()

    def _ensure_task(self) -> None:
        if not self.running:
            self._task = asyncio.create_task(self._loop(), name="rewrap")

    async def _loop(self) -> None:
        if self.gauge is not None:
            self.gauge.rewrap_running = True
        try:
            await self._batches()
        finally:
            self.pace = None
            if self.gauge is not None:
                self.gauge.rewrap_running = False

    async def _batches(self) -> None:
        while True:
            limit = self.pace.batch if self.pace is not None else None
            try:
                ring = self.store.current_keyring()
                st, took, blocks = await self.store.write(self._batch_job(ring, limit))
            except Exception:
                log.exception("rewrap batch failed; retrying")
                await asyncio.sleep(1.0)
                continue
            for cb in self.on_batch:
                cb(st)
            if st["state"] != "running":
                log.info("rewrap %s: %d rewrapped, %d failed", st["state"], st["rewrapped"], st["failed"])
                return
            await asyncio.sleep(self._pause_after(st, took, blocks))

    def _pause_after(self, st: dict[str, Any], took: float, blocks: int) -> float:
        pause = st.get("pauseSeconds")
        if pause is None:
            pause = self.pause
        if pause is not None or self.gauge is None:
            self.pace = None
            return pause or 0.0
        prev = self.pace or Pace(st["batchSize"], 0.0, 1.0, False)
        self.pace = next_pace(prev, self.gauge.sample(), took, blocks, st["batchSize"], self.gauge.settings)
        return self.pace.pause

    def _batch_job(self, ring: Keyring, limit: int | None
                   ) -> Callable[[sqlite3.Connection], tuple[dict[str, Any], float, int]]:
        # The frames flag is read when the job runs in the writer, so a slot registered meanwhile is honoured.
        # The batch times itself inside the writer: queueing behind client writes is not the batch's cost.
        def job(conn: sqlite3.Connection) -> tuple[dict[str, Any], float, int]:
            t0 = time.perf_counter()
            before = load_state(conn)
            st = batch_in_txn(conn, ring, self.store.frames_enabled, limit)
            blocks = st["rewrapped"] + st["failed"] - before["rewrapped"] - before["failed"]
            return st, time.perf_counter() - t0, blocks
        return job

    def describe_pace(self) -> dict[str, Any] | None:
        """The adaptive pace now (None when the run is not adaptive or not running)."""
        p = self.pace
        if p is None or not self.running:
            return None
        return {"batch": p.batch, "pauseSeconds": round(p.pause, 4), "duty": round(p.duty, 3), "busy": p.busy}

    async def stop(self) -> None:
        """Cancel the loop (the persisted cursor lets the next start resume)."""
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
