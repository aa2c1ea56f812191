"""The mirror's replication loop: follow the source node's change stream into this node's store.

A start registers the consumer slot on the source (the source records frames from then on), rewinds first when the
role names a ``divergeLsn`` this node's log is past (rewind.py), seeds from ``/v1/snapshot`` when the store was
never seeded (the snapshot is taken after the registration, so nothing between is missed), then tails
``/v1/changes?frames=true`` from the cursor with a long-poll wait. Each page is applied in one store-writer
transaction that also moves the cursor (apply.py; changes at or below the cursor are skipped), and only then
acknowledged on the source, so a crash of either side repeats at most an unacknowledged page.

A gap (the slot fell ``behind``, the source's log no longer reaches the cursor, or the source's log ends before
it), a registration the source refuses (409 start_unavailable) or a change without its frame re-seeds. Errors
back off (doubling, capped); the state names them without any body the source sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence

import aiohttp
from chronoshard.shardnode.serving.changestream import (
    ChangePage,
    ChangeStreamClient,
    ChangeStreamError,
    SnapshotBlock,
    StreamChange,
)

from . import apply
from .rewind import RewindImpossible, rewind_to
from .state import ReplicationState, StoreLike, close_stream

log = logging.getLogger(__name__)

SOURCE_ERRORS = (ChangeStreamError, aiohttp.ClientError, TimeoutError, OSError)


class Reseed(Exception):
    """The stream cannot continue from the cursor: seed again from a snapshot."""


def describe(exc: BaseException) -> str:
    """An error for status and logs: its type and status, never a body that could carry data."""
    if isinstance(exc, ChangeStreamError):
        code = exc.body.get("error") if isinstance(exc.body, dict) else None
        return f"source answered {exc.status}" + (f" ({code})" if code else "")
    if isinstance(exc, apply.FrameMissing):
        return str(exc)
    return type(exc).__name__


def held_prefix(changes: Sequence[StreamChange], through: int, hold: int | None) -> tuple[list[StreamChange], int]:
    """The part of a page that may be applied under a digest hold at ``hold`` (None: all of it)."""
    if hold is None:
        return list(changes), through
    kept = [c for c in changes if c.lsn <= hold]
    return kept, min(through, hold)


class Replicator:
    """Runs the loop for the node's mirror role until cancelled."""

    def __init__(self, state: ReplicationState, store: StoreLike, session: aiohttp.ClientSession) -> None:
        self.state, self.store, self.session = state, store, session
        self._registered = False
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Cut a backoff short (the role changed)."""
        self._wake.set()

    def client(self) -> ChangeStreamClient:
        """A client of the source named by the role in force (its URL may change in place)."""
        r = self.state.role
        assert r.source_url is not None
        return ChangeStreamClient(r.source_url, self.session, server_hostname=r.server_name,
                                  timeout=self.state.settings.timeout_seconds)

    @property
    def consumer(self) -> str:
        """The slot name on the source."""
        name = self.state.role.consumer
        assert name is not None
        return name

    async def run(self) -> None:
        """Replicate until cancelled, backing off on errors."""
        st = self.state
        backoff = st.settings.backoff_seconds
        await self._rewind_if_diverged()
        while True:
            try:
                await self._step()
                backoff = st.settings.backoff_seconds
                continue
            except Reseed as exc:
                log.warning("replicator: %s; re-seeding", exc)
                await self._seed()
                continue
            except apply.FrameMissing as exc:
                log.warning("replicator: %s; re-seeding", exc)
                st.error = describe(exc)
                await self._retry_seed()
                continue
            except SOURCE_ERRORS as exc:
                self._failed(describe(exc), exc)
            except sqlite3.Error as exc:
                self._failed(f"store: {type(exc).__name__}", exc)
            except (ValueError, KeyError, TypeError) as exc:  # an answer not as documented: retried, never fatal
                self._failed(f"bad answer from the source: {type(exc).__name__}", exc)
            await self._sleep(backoff)
            backoff = min(backoff * 2, st.settings.max_backoff_seconds)

    def _failed(self, reason: str, exc: BaseException) -> None:
        st = self.state
        st.state, st.error = "error", reason
        st.errors += 1
        if isinstance(exc, ChangeStreamError):
            st.source.reachable = exc.status != 503 or exc.body.get("error") != "node_unavailable"
            if exc.status == 404:
                self._registered = False  # the source lost the slot (a new volume): register again
        log.warning("replicator: %s", reason)

    async def _retry_seed(self) -> None:
        try:
            await self._seed()
        except SOURCE_ERRORS as exc:
            self._failed(describe(exc), exc)
            await self._sleep(self.state.settings.backoff_seconds)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    # ---- one step --------------------------------------------------------------------------------------
    async def _step(self) -> None:
        st = self.state
        if st.seeding or await self.store.read(apply.cursor) is None:
            await self._seed()
            return
        if not self._registered:
            await self._register()
        page = await self.client().changes(st.applied, limit=st.settings.batch, wait=st.settings.wait_seconds,
                                           consumer=self.consumer)
        self._contact(page.last_lsn)
        if page.gap or page.last_lsn < st.applied:
            raise Reseed("the source no longer holds the changes after the cursor" if page.gap
                         else "the source's log ends before the cursor")
        await self._apply(page)

    def _contact(self, last_lsn: int) -> None:
        s = self.state.source
        s.reachable, s.last_contact = True, time.time()
        s.last_lsn = max(last_lsn, 0)

    async def _register(self) -> None:
        """Keep the slot (created at the cursor if the source lost it); Reseed if it cannot start there."""
        st = self.state
        client = self.client()
        try:
            slot = await client.register(self.consumer, start_lsn=st.applied)
            if slot.get("state") == "behind" or int(slot.get("ackedLsn") or 0) > st.applied:
                # A slot acknowledged past the cursor no longer holds what this node still needs.
                await client.register(self.consumer, start_lsn=st.applied, reset=True)
        except ChangeStreamError as exc:
            if exc.status == 409:
                raise Reseed("the source cannot start the slot at the cursor") from None
            raise
        self._registered = True
        self._contact(self.state.source.last_lsn)
        self.state.mark_streaming()  # the slot holds the log from the cursor on

    async def _apply(self, page: ChangePage) -> None:
        st = self.state
        async with st.apply_lock:
            hold = st.hold_limit()
            if hold is not None and st.applied >= hold:
                await self._wait_hold()
                return
            changes, through = held_prefix(page.changes, page.next, hold)
            if changes or through > st.applied:
                applied = await self.store.write(lambda c: apply.apply_page(c, changes, through))
                st.applied = applied
                if changes:
                    st.source.last_applied_time = changes[-1].time
        if st.applied > 0:
            await self.client().ack(self.consumer, min(st.applied, page.last_lsn))
        st.mark_streaming()

    async def _wait_hold(self) -> None:
        event = self.state.hold_changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), 1.0)

    # ---- seeding ---------------------------------------------------------------------------------------
    async def _seed(self) -> None:
        st = self.state
        st.state = "seeding"
        client = self.client()
        # A fresh registration point: the snapshot below is taken after it, so the tail misses nothing.
        await client.register(self.consumer, reset=True)
        self._registered = True
        blocks = client.snapshot()
        async with st.apply_lock:
            try:
                first = await anext(blocks)
                if not isinstance(first, int):
                    raise ChangeStreamError(502, {"error": "bad_snapshot", "message": "no snapshot LSN first"})
                st.seeding = True
                await self._clear(first)
                await self._fill(blocks)
                await self.store.write(lambda c: apply.seed_finish(c, first))
            finally:
                await close_stream(blocks)
        st.applied, st.seeding, st.seeds = first, False, st.seeds + 1
        self._contact(first)
        await client.ack(self.consumer, first)
        st.mark_streaming()
        log.info("replicator: seeded from the source's snapshot at LSN %d", first)

    async def _clear(self, lsn: int) -> None:
        chunk = self.state.settings.seed_chunk * 4
        while await self.store.write(lambda c: apply.seed_begin(c, lsn, chunk)) > 0:
            pass

    async def _fill(self, blocks: AsyncIterator[int | SnapshotBlock]) -> None:
        chunk: list[SnapshotBlock] = []
        size = self.state.settings.seed_chunk
        async for item in blocks:
            if isinstance(item, SnapshotBlock):
                chunk.append(item)
                if len(chunk) >= size:
                    batch, chunk = chunk, []
                    await self.store.write(lambda c, b=batch: apply.seed_blocks(c, b))  # type: ignore[misc]
        if chunk:
            await self.store.write(lambda c: apply.seed_blocks(c, chunk))

    # ---- rejoin ----------------------------------------------------------------------------------------
    async def _rewind_if_diverged(self) -> None:
        """A role with ``divergeLsn`` that this node's log is past: drop what the new primary never had."""
        st = self.state
        diverge = st.role.diverge_lsn
        if diverge is None or st.seeding:
            return
        last = await self.store.read(apply.last_lsn)
        cur = await self.store.read(apply.cursor)
        if last <= diverge:
            if cur is None or cur < last:
                await self.store.write(lambda c: apply.set_meta(c, apply.CURSOR_META, last))
                st.applied = last  # an old primary's log is its applied state
            return
        st.state = "rewinding"
        while True:
            try:
                async with st.apply_lock:
                    discarded = await rewind_to(self.store, self.client(), self.consumer, diverge)
                st.applied, st.discarded = diverge, discarded
                log.warning("replicator: rewound to LSN %d, discarding %d local changes", diverge, len(discarded))
                return
            except RewindImpossible as exc:
                log.warning("replicator: %s; re-seeding from a full snapshot", exc)
                # The seed replaces everything: the local changes after divergeLsn are discarded all the same.
                discarded = exc.discarded
                await self.store.write(functools.partial(apply.forget_cursor, discarded=discarded))
                st.discarded = discarded
                return  # the loop seeds (no cursor)
            except SOURCE_ERRORS as exc:
                self._failed(describe(exc), exc)
                await self._sleep(st.settings.max_backoff_seconds)
