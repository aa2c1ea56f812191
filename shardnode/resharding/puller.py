"""The target's move puller (docs/resharding.md, "How a move works", steps 1-2): one background task per move,
resumed at start-up for every move persisted in the store.

Copying: register the slot ``move.<name>`` on the source afresh (the source keeps its log, with frames, from
there), clear the ranges here (leftovers of an earlier discarded or interrupted copy), stream the source's
keyspace-limited snapshot (taken after the registration, so the tail misses nothing) and import it in chunks.
Catching up: tail the source's change stream from the snapshot LSN through the slot, apply the changes of the
ranges in source-LSN order with the cursor in the same transaction (exactly once), then acknowledge the slot. A
slot the source lost or let fall behind, or a log that no longer reaches the cursor, restarts the copy. Errors back
off (doubling, capped); a refusal that retrying cannot fix (400/401/403 from the source) fails the move.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from chronoshard.shardnode.replication.apply import FrameMissing
from chronoshard.shardnode.replication.replicator import describe, held_prefix
from chronoshard.shardnode.replication.state import StoreLike, close_stream
from chronoshard.shardnode.serving.changestream import ChangeStreamClient, ChangeStreamError, SnapshotBlock
from yarl import URL

from . import moves_sql as sql
from .moves import CATCHING_UP, COPYING, FAILED, MoveSpec, lag_seconds, slot_name, wanted

log = logging.getLogger(__name__)

SOURCE_ERRORS = (ChangeStreamError, aiohttp.ClientError, TimeoutError, OSError)
FATAL_STATUSES = (400, 401, 403)  # the source refuses what we ask: retrying does not help


class ImportPace(Protocol):
    """The next import chunk's size and the pause before it."""

    @property
    def batch(self) -> int:
        """Blocks in the next chunk."""

    @property
    def pause(self) -> float:
        """Seconds to wait before importing it."""


class ImportPacer(Protocol):
    """The node's pacing of background work by its clients (shardnode/node/pacing.py ``Pacer``; this package
    sits below the node, so it names only what it uses)."""

    def running(self) -> AbstractContextManager[None]:
        """Held while the import runs."""

    def next(self, prev: Any, seconds: float, units: int, max_batch: int) -> ImportPace:
        """The pace after a chunk of ``units`` blocks that took ``seconds``; ``prev``: what it returned last."""


@dataclass
class PullSettings:
    """Batching, long-poll and backoff of every move's puller (one object the node's settings update in place)."""

    chunk: int = 500  # snapshot blocks per import transaction
    batch: int = 500  # changes per page
    wait_seconds: float = 5.0  # long-poll of the change stream
    timeout_seconds: float = 30.0
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 10.0
    clear_chunk: int = 1000  # leftover blocks deleted per transaction
    # Paces the import by this node's own clients (docs/resharding.md#pacing); None: full speed.
    pacer: ImportPacer | None = None


class Recopy(Exception):
    """The stream cannot continue from the cursor: copy the ranges again from a snapshot."""


class Failed(Exception):
    """The source refuses the move for good."""


class Puller:
    """Pulls one move until cancelled; ``applied`` (the cursor), progress and the last error in memory for GET."""

    def __init__(self, name: str, spec: MoveSpec, store: StoreLike, session: aiohttp.ClientSession,
                 settings: PullSettings, row: sql.MoveRow, owns: Callable[[], bool] = lambda: False) -> None:
        self.name, self.spec, self.store, self.session, self.settings = name, spec, store, session, settings
        self.owns = owns  # True once the map in force gives this node part of the ranges (the cutover happened)
        self.phase, self.applied, self.snapshot_lsn = row.phase, row.source_lsn, row.snapshot_lsn
        self.copied, self.total, self.error = row.copied, row.total, row.error
        self.last_applied_time = row.last_applied_time
        self.source_last_lsn: int | None = None
        self.read_time: float | None = None  # the source's commit time of the newest change read (any range)
        self.registered = False
        self.copies = 0
        self.apply_lock = asyncio.Lock()
        self.holds: dict[int, int] = {}  # source LSN -> digest requests holding the apply there
        # The verification's first step: the apply stops where it is, so the source's digest LSN, taken after,
        # cannot be passed before the digest request holds there (under steady writes it always was).
        self.pre_hold: int | None = None
        self._pre_hold_timer: asyncio.TimerHandle | None = None
        self.applied_changed = asyncio.Event()
        self.hold_changed = asyncio.Event()

    # ---- what GET shows ------------------------------------------------------------------------------
    def describe(self, now: float | None = None) -> dict[str, object]:
        """The ``GET /v1/moves/{name}`` body."""
        now = time.time() if now is None else now
        caught_up = (self.applied is not None and self.source_last_lsn is not None
                     and self.applied >= self.source_last_lsn)
        lag = lag_seconds(caught_up, self.read_time, now) if self.phase == CATCHING_UP else None
        return {"name": self.name, "phase": self.phase, "snapshotLsn": self.snapshot_lsn, "sourceLsn": self.applied,
                "copiedBlocks": self.copied, "totalBlocks": self.total, "lagSeconds": lag, "error": self.error,
                "source": self.spec.to_doc()["source"], "partition": self.spec.partition,
                "ranges": self.spec.to_doc()["ranges"], "copies": self.copies}

    def client(self) -> ChangeStreamClient:
        """The source's change stream, over the node's peer session (its TLS client identity)."""
        return ChangeStreamClient(self.spec.source_url, self.session, server_hostname=self.spec.server_name,
                                  timeout=self.settings.timeout_seconds)

    @property
    def slot(self) -> str:
        """The consumer slot's name on the source."""
        return slot_name(self.name)

    # ---- holds (digest at a source LSN) ---------------------------------------------------------------
    def hold_limit(self) -> int | None:
        """The lowest source LSN a digest (or the verification's pre-hold) holds the apply at (None: no hold)."""
        limits = [*self.holds, *([self.pre_hold] if self.pre_hold is not None else [])]
        return min(limits) if limits else None

    async def hold_here(self, seconds: float) -> int | None:
        """Stop the apply at the cursor for at most ``seconds`` (until a digest takes over); returns the cursor."""
        async with self.apply_lock:  # between two pages: the cursor cannot move under the hold
            self.drop_pre_hold()
            self.pre_hold = self.applied if self.applied is not None else 0
            self._pre_hold_timer = asyncio.get_running_loop().call_later(seconds, self.drop_pre_hold)
            return self.applied

    def drop_pre_hold(self) -> None:
        """End the pre-hold (a digest now holds the apply, or its time ran out)."""
        if self._pre_hold_timer is not None:
            self._pre_hold_timer.cancel()
            self._pre_hold_timer = None
        if self.pre_hold is not None:
            self.pre_hold = None
            self.hold_changed.set()

    def add_hold(self, lsn: int) -> None:
        """Apply nothing past ``lsn`` until released."""
        self.holds[lsn] = self.holds.get(lsn, 0) + 1

    def release_hold(self, lsn: int) -> None:
        """Drop one hold at ``lsn``."""
        n = self.holds.get(lsn, 0) - 1
        if n <= 0:
            self.holds.pop(lsn, None)
        else:
            self.holds[lsn] = n
        self.hold_changed.set()

    async def wait_applied(self, lsn: int, seconds: float) -> int | None:
        """Wait (at most ``seconds``) until the cursor is at least ``lsn``; returns the cursor."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self.applied is None or self.applied < lsn:
            remaining = deadline - loop.time()
            if remaining <= 0 or self.phase == FAILED:
                break
            self.applied_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.applied_changed.wait(), min(remaining, 0.5))
        return self.applied

    def _set_applied(self, lsn: int | None) -> None:
        self.applied = lsn
        self.applied_changed.set()

    # ---- the loop ------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Pull until cancelled or failed."""
        backoff = self.settings.backoff_seconds
        while self.phase != FAILED:
            if self.phase == COPYING and self.owns():
                # A copy clears the ranges first: after the cutover that would destroy the writes taken here since.
                self.error = "this node owns the ranges now: nothing is copied again"
                await asyncio.sleep(self.settings.max_backoff_seconds)
                continue
            try:
                if self.phase == COPYING:
                    await self._copy()
                else:
                    await self._step()
                backoff = self.settings.backoff_seconds
                continue
            except (Recopy, FrameMissing) as exc:
                log.warning("move %s: %s; copying again", self.name, exc)
                self.phase = COPYING
                continue
            except Failed as exc:
                await self._fail(str(exc))
                return
            except SOURCE_ERRORS as exc:
                self._failed_attempt(exc)
            except sqlite3.Error as exc:
                self.error = f"store: {type(exc).__name__}"
            except (ValueError, KeyError, TypeError) as exc:  # an answer not as documented: retried
                self.error = f"bad answer from the source: {type(exc).__name__}"
            log.warning("move %s: %s", self.name, self.error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.max_backoff_seconds)

    def _failed_attempt(self, exc: BaseException) -> None:
        self.error = describe(exc)  # type and status, never a body the source sent
        if isinstance(exc, ChangeStreamError):
            if exc.status in FATAL_STATUSES:
                raise Failed(self.error) from None
            if exc.status == 404:
                self.registered = False  # the source lost the slot (a new volume, a deleted slot)

    async def _fail(self, error: str) -> None:
        self.phase, self.error = FAILED, error
        self.applied_changed.set()
        with contextlib.suppress(sqlite3.Error):
            await self.store.write(lambda c: sql.set_failed(c, self.name, error))
        log.warning("move %s failed: %s", self.name, error)

    # ---- copying -------------------------------------------------------------------------------------
    async def _copy(self) -> None:
        client = self.client()
        # A fresh registration point: the snapshot below is taken after it, so the catch-up misses nothing.
        await client.register(self.slot, reset=True)
        self.registered = True
        total = await self._estimate()
        async with self.apply_lock:
            await self.store.write(lambda c: sql.begin_copy(c, self.name, total))
            self._set_applied(None)
            self.phase, self.copied, self.total, self.snapshot_lsn = COPYING, 0, total, None
            self.last_applied_time, self.error = None, None
            await self._clear()
            blocks = client.snapshot(keyspace=list(self.spec.ranges))
            try:
                first = await anext(blocks)
                if not isinstance(first, int):
                    raise ChangeStreamError(502, {"error": "bad_snapshot", "message": "no snapshot LSN first"})
                await self._fill(blocks)
            finally:
                await close_stream(blocks)
            await self.store.write(lambda c: sql.finish_copy(c, self.name, first))
            self.phase, self.snapshot_lsn, self.total, self.error = CATCHING_UP, first, self.copied, None
            self.copies += 1
            self._set_applied(first)
        await client.ack(self.slot, first)
        log.info("move %s: copied %d blocks from the source's snapshot at LSN %d", self.name, self.copied, first)

    async def _estimate(self) -> int | None:
        """The source's block count of the ranges (GET /v1/ranges/stats) for progress; None if it cannot say."""
        url = URL(self.spec.source_url) / "v1" / "ranges" / "stats"
        query = {"keyspace": ",".join(f"{lo:016x}-{hi:016x}" for lo, hi in self.spec.ranges)}
        kw: dict[str, object] = {"timeout": aiohttp.ClientTimeout(total=self.settings.timeout_seconds)}
        if self.spec.server_name is not None:
            kw["server_hostname"] = self.spec.server_name
        try:
            async with self.session.get(url.with_query(query), **kw) as resp:  # type: ignore[arg-type]
                if resp.status != 200:
                    return None
                return int((await resp.json(content_type=None))["blocks"])
        except (aiohttp.ClientError, TimeoutError, KeyError, TypeError, ValueError):
            return None

    async def _clear(self) -> None:
        n = self.settings.clear_chunk
        while await self.store.write(lambda c: sql.clear_batch(c, self.spec.ranges, n)) > 0:
            pass

    async def _fill(self, blocks: AsyncIterator[int | SnapshotBlock]) -> None:
        """Import the snapshot in chunks, one transaction each, in order; the next chunk is read off the stream
        while the store writes the last one (the stream and the writer overlap instead of taking turns). With a
        pacer the chunks shrink and pause while this node's clients are active (docs/resharding.md#pacing)."""
        importer = _Importer(self)
        try:
            with self.settings.pacer.running() if self.settings.pacer is not None else contextlib.nullcontext():
                chunk: list[SnapshotBlock] = []
                async for item in blocks:
                    if isinstance(item, SnapshotBlock):
                        chunk.append(item)
                        if len(chunk) >= importer.batch():
                            await importer.start(chunk)
                            chunk = []
                if chunk:
                    await importer.start(chunk)
                await importer.settle()
        finally:
            importer.cancel()

    # ---- catching up ---------------------------------------------------------------------------------
    async def _register(self, client: ChangeStreamClient, at: int) -> None:
        """Keep the slot; Recopy if the source cannot hold the log from the cursor for it."""
        try:
            slot = await client.register(self.slot, start_lsn=at)
        except ChangeStreamError as exc:
            if exc.status == 409:
                raise Recopy("the source cannot start the slot at the cursor") from None
            raise
        if slot.get("state") == "behind" or int(slot.get("ackedLsn") or 0) > at:
            raise Recopy("the source's slot no longer holds the log from the cursor")
        self.registered = True

    async def _step(self) -> None:
        at = self.applied
        if at is None:
            raise Recopy("no cursor")
        client = self.client()
        if not self.registered:
            await self._register(client, at)
        page = await client.changes(at, limit=self.settings.batch, wait=self.settings.wait_seconds,
                                    consumer=self.slot, keyspace=self.spec.ranges)
        self.source_last_lsn = page.last_lsn
        if page.changes:
            self.read_time = page.changes[-1].time
        if page.gap or page.last_lsn < at:
            raise Recopy("the source no longer holds the changes after the cursor" if page.gap
                         else "the source's log ends before the cursor")
        async with self.apply_lock:
            hold = self.hold_limit()
            if hold is not None and at >= hold:
                self.hold_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.hold_changed.wait(), 1.0)
                return
            changes, through = held_prefix(wanted(page.changes, self.spec.ranges), page.next, hold)
            if changes or through > at:
                applied = await self.store.write(lambda c: sql.apply_changes(c, self.name, changes, through))
                if changes:
                    self.last_applied_time = changes[-1].time
                self._set_applied(applied)
        self.error = None
        if self.applied:
            await client.ack(self.slot, min(self.applied, page.last_lsn))


Starter = Callable[[Puller], None]


class _Importer:
    """One copy's import transactions: one in flight while the next chunk is read, paced by the settings' pacer."""

    def __init__(self, puller: Puller) -> None:
        self.puller = puller
        self.pace: ImportPace | None = None
        self.pending: asyncio.Task[tuple[int, float]] | None = None
        self.size = 0  # blocks in the pending chunk

    def batch(self) -> int:
        """Blocks in the next chunk: the configured chunk, or the pacer's smaller one while clients are active."""
        return self.pace.batch if self.pace is not None else self.puller.settings.chunk

    async def start(self, chunk: list[SnapshotBlock]) -> None:
        """Wait for the previous chunk (and the pause after it), then start importing ``chunk``."""
        await self.settle()
        self.size = len(chunk)
        self.pending = asyncio.create_task(self._import(chunk))

    async def settle(self) -> None:
        """Wait for the pending chunk's commit, then pause as the pacer says."""
        if self.pending is None:
            return
        p, pending = self.puller, self.pending
        self.pending = None
        p.copied, took = await pending
        pacer = p.settings.pacer
        if pacer is not None:
            self.pace = pacer.next(self.pace, took, self.size, p.settings.chunk)
            if self.pace.pause > 0:
                await asyncio.sleep(self.pace.pause)

    def cancel(self) -> None:
        """Cut short: the next copy clears whatever of the pending chunk committed."""
        if self.pending is not None and not self.pending.done():
            self.pending.cancel()

    async def _import(self, chunk: list[SnapshotBlock]) -> tuple[int, float]:
        started = time.monotonic()
        p = self.puller
        copied = await p.store.write(lambda c: sql.import_blocks(c, p.name, chunk))
        return copied, time.monotonic() - started
