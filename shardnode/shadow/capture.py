"""The capture loop: every change of the node's selected tables into the history, in LSN order, exactly once.

Order of a start: register the consumer slot (the node records frames from then on), seed from ``/v1/snapshot``
when the history is empty (the snapshot is taken after registration, so nothing between is missed), then tail
``/v1/changes?frames=true`` from the history's cursor. Each page is applied in one history transaction that also
moves the cursor (``HistoryStore.apply`` skips LSNs at or below it), and only then acknowledged to the node, so a
crash of either side repeats at most an unacknowledged page, which the cursor makes a no-op.

A gap (the slot fell ``behind`` and the node trimmed what it had not acknowledged, or the node's log no longer
reaches the cursor) re-seeds: the slot is reset, a fresh snapshot replaces the base state, and the history records
that the state before that point is not exact. Node errors back off (doubling, capped) and are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

import aiohttp
from chronoshard.shardnode.serving.changestream import (
    ChangePage,
    ChangeStreamClient,
    ChangeStreamError,
    SnapshotBlock,
    StreamChange,
)

from .config import ShadowConfig, ShadowSettings
from .history import HistoryStore
from .metrics import ShadowMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")
SEED_CHUNK = 256  # snapshot blocks handed to the seeding thread at once
SEED_STALL_SECONDS = 120.0
_END = object()

NODE_ERRORS = (ChangeStreamError, aiohttp.ClientError, TimeoutError, OSError)


class NodeWentBack(Exception):
    """The node's log ends before the history's cursor (a node restored or replaced): the history re-seeds."""


def describe(exc: BaseException) -> str:
    """A node error for status and logs: its type and status, never a body that could carry data."""
    if isinstance(exc, ChangeStreamError):
        code = exc.body.get("error") if isinstance(exc.body, dict) else None
        return f"node answered {exc.status}" + (f" ({code})" if code else "")
    return type(exc).__name__


def lag_seconds(last_applied_time: float | None, lag_lsn: int, now: float) -> float:
    """How old the oldest unapplied change may be: 0 when caught up, else the time since the last one applied."""
    if lag_lsn <= 0 or last_applied_time is None:
        return 0.0
    return max(0.0, now - last_applied_time)


async def _feed(blocks: AsyncIterator[int | SnapshotBlock], chunks: queue.Queue[Any]) -> None:
    chunk: list[SnapshotBlock] = []
    async for item in blocks:
        if isinstance(item, SnapshotBlock):
            chunk.append(item)
            if len(chunk) >= SEED_CHUNK:
                await asyncio.to_thread(chunks.put, chunk)
                chunk = []
    if chunk:
        await asyncio.to_thread(chunks.put, chunk)


def _drain(chunks: queue.Queue[Any]) -> Iterator[SnapshotBlock]:
    while True:
        try:
            chunk = chunks.get(timeout=SEED_STALL_SECONDS)
        except queue.Empty:  # the feeding side is gone (cancelled twice at shutdown): give the thread back
            raise TimeoutError("the snapshot stream stalled while seeding") from None
        if chunk is _END:
            return
        if isinstance(chunk, BaseException):
            raise chunk  # the stream broke: the seed's transaction rolls back
        yield from chunk


class Capture:
    """Runs the loop for one process; ``status()`` is the capture part of ``GET /v1/status``."""

    def __init__(self, cfg: ShadowConfig, history: HistoryStore, stream: ChangeStreamClient, metrics: ShadowMetrics,
                 *, on_applied: Sequence[Callable[[Sequence[StreamChange]], None]] = (),
                 executor: Executor | None = None) -> None:
        self.cfg, self.history, self.stream, self.metrics = cfg, history, stream, metrics
        # History writes run here (None: the loop's default executor); the owner waits for it before closing.
        self.executor = executor
        self.on_applied = list(on_applied)  # run in the applying thread, after the page committed
        self.state = "starting"
        self.position = 0  # the node LSN read up to: the cursor, or further when filtered pages held nothing
        self.node_last_lsn = 0
        self.last_applied_time: float | None = None
        self.error: str | None = None
        self.seeds = 0
        self.gaps = 0
        self._tables: tuple[str, ...] | None = None
        self._registered = False
        self._seeded = False
        # The slot's name is fixed for the life of the process (a renamed consumer is a new slot: restart).
        self.consumer = cfg.settings.consumer
        self._progress = asyncio.Condition()

    @property
    def settings(self) -> ShadowSettings:
        """The settings in force (shadow.json, re-read on change)."""
        return self.cfg.settings

    def status(self) -> dict[str, Any]:
        """The capture's state as ``GET /v1/status`` reports it."""
        lag = max(0, self.node_last_lsn - self.position)
        return {"state": self.state, "consumer": self.consumer, "cursor": self.position,
                "nodeLastLsn": self.node_last_lsn, "lagLsn": lag,
                "lagSeconds": lag_seconds(self.last_applied_time, lag, time.time()),
                "tables": list(self._tables) if self._tables is not None else None,
                "seeds": self.seeds, "gaps": self.gaps, "error": self.error}

    async def wait_position(self, lsn: int, timeout: float) -> bool:
        """Wait until the history has applied the node's log up to ``lsn``; False on timeout."""
        async with self._progress:
            try:
                await asyncio.wait_for(self._progress.wait_for(lambda: self.position >= lsn), timeout)
            except TimeoutError:
                return False
        return True

    async def run(self) -> None:
        """Capture until cancelled."""
        backoff = self.cfg.backoff_seconds
        self.position = await self._blocking(self.history.cursor)
        while True:
            try:
                await self._step()
                backoff = self.cfg.backoff_seconds
            except NODE_ERRORS as exc:
                self.state, self.error = "error", describe(exc)
                self.metrics.node_errors.inc()
                if isinstance(exc, ChangeStreamError) and exc.status == 404:
                    self._registered = False  # the node lost the slot (a new volume): register again
                log.warning("capture: %s; retrying in %.1fs", self.error, backoff)
            except Exception as exc:  # e.g. a frame whose key version is not loaded yet: retried
                self.state, self.error = "error", f"{type(exc).__name__}: {exc}"
                log.error("capture: applying failed (%s); retrying in %.1fs", self.error, backoff)
            else:
                continue
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.cfg.max_backoff_seconds)

    async def _step(self) -> None:
        if not self._registered:
            await self._register()
        if self.position == 0 and not self._seeded:
            await self._seed("first start")
            return
        if self._tables_grew():
            await self._seed("tables added")
            return
        page = await self.stream.changes(self.position, limit=self.cfg.batch_size, wait=self.cfg.wait_seconds,
                                         tables=self._tables, consumer=self.consumer)
        if page.gap or page.last_lsn < self.position:
            await self._gap(page)
            return
        await self._apply(page)

    def _tables_grew(self) -> bool:
        wanted = self.settings.tables
        if self._tables is None:
            return False
        return wanted is None or not set(wanted) <= set(self._tables)

    async def _register(self) -> None:
        if self.position == 0:
            await self.stream.register(self.consumer)
            self._registered = True
            return
        self._tables = self.settings.tables  # the history holds what this process is told to capture
        try:
            # A lost slot is re-created at the cursor when the node still holds the frames from there.
            slot = await self.stream.register(self.consumer, start_lsn=self.position)
        except ChangeStreamError as exc:
            if exc.status != 409:
                raise
            slot = {"state": "behind"}
        self._registered = True
        if slot.get("state") == "behind" or int(slot.get("registeredLsn") or 0) > self.position:
            await self._gap(None)

    async def _seed(self, reason: str) -> None:
        self.state = "seeding"
        # A fresh registration point: the snapshot below is taken after it, so the tail misses nothing.
        await self.stream.register(self.consumer, reset=True)
        tables = self.settings.tables
        chunks: queue.Queue[Any] = queue.Queue(maxsize=8)
        blocks = self.stream.snapshot(tables)
        first = await blocks.__anext__()
        if not isinstance(first, int):
            raise ChangeStreamError(502, {"error": "bad_snapshot", "message": "snapshot did not start with its LSN"})
        seeding = asyncio.ensure_future(self._blocking(self.history.seed, first, _drain(chunks), tables=tables))
        try:
            await _feed(blocks, chunks)
            await asyncio.to_thread(chunks.put, _END)
        except BaseException as exc:
            await asyncio.to_thread(chunks.put, exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
            with contextlib.suppress(Exception):
                await seeding
            raise
        await seeding
        self._tables, self._seeded = tables, True
        self.seeds += 1
        self.state, self.error = "running", None
        self.metrics.seeds.labels("first" if reason == "first start" else "gap").inc()
        await self._advance(first, time.time())
        await self.stream.ack(self.consumer, first)
        log.info("capture: seeded from the node's snapshot at LSN %d (%s)", first, reason)

    async def _gap(self, page: ChangePage | None) -> None:
        self.state = "behind"
        self.gaps += 1
        log.warning("capture: the node no longer holds the changes after LSN %d (%s); re-seeding",
                    self.position, "slot behind" if page is None or page.gap else "node log ends earlier")
        await self._seed("gap")

    async def _apply(self, page: ChangePage) -> None:
        self.node_last_lsn = max(page.last_lsn, page.next)
        if page.changes or page.next > self.position:
            await self._blocking(self._apply_in_thread, page.changes, page.next)
            if page.changes:
                self.last_applied_time = page.changes[-1].time
            for change in page.changes:
                self.metrics.applied.labels(change.op).inc()
        target = max(self.position, page.next)
        if target > self.position:
            await self.stream.ack(self.consumer, target)
            await self._advance(target, self.last_applied_time)
        self.state, self.error = "running", None
        self._observe()

    def _blocking(self, fn: Callable[..., T], *args: Any, **kw: Any) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args, **kw))

    def _apply_in_thread(self, changes: Sequence[StreamChange], through: int) -> None:
        # ``through``: a page of other tables' changes still moves the cursor past them.
        self.history.apply(changes, through=through)
        for hook in self.on_applied:
            try:
                hook(changes)
            except Exception:  # a hook (the plans' conflict marks) must not stop the capture
                log.exception("capture: a hook after applying failed")

    async def _advance(self, lsn: int, applied_time: float | None) -> None:
        async with self._progress:
            self.position = max(self.position, lsn)
            self.node_last_lsn = max(self.node_last_lsn, lsn)
            self.last_applied_time = applied_time
            self._progress.notify_all()
        self._observe()

    def _observe(self) -> None:
        st = self.status()
        self.metrics.lag_lsn.set(st["lagLsn"])
        self.metrics.lag_seconds.set(st["lagSeconds"])
        self.metrics.cursor.set(self.position)
