"""The node's replication state: the role document in force (persisted in the store's ``meta`` table as
``replication``), what the replicator reports, the write and read checks the block handlers call, and the role
transitions of ``PUT /v1/replication`` (docs/mirroring.md, "The node's replication contract").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from chronoshard.shardnode.serving.http_common import ApiError

from . import apply
from .role import DEFAULT, FENCED, MAX_LSN, MIRROR, PRIMARY, Change, Role, transition, write_refusal

if TYPE_CHECKING:
    import aiohttp

    from .replicator import Replicator

log = logging.getLogger(__name__)

T = TypeVar("T")
MIN_LSN_HEADER = "X-Chronoshard-Min-Lsn"
MIN_TERM_HEADER = "X-Chronoshard-Min-Term"
WAIT_MS_HEADER = "X-Chronoshard-Wait-Ms"
DEFAULT_WAIT_MS, MAX_WAIT_MS = 2000, 10000
_DIGITS = re.compile(r"[0-9]+")


class StoreLike(Protocol):
    """What replication needs of the node's store (shardnode/node/store.py ``Store``)."""

    path: Path
    frames_enabled: bool

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in the single writer's transaction; returns after the commit."""

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on a reader connection."""


class DigestLike(Protocol):
    """shardnode/node/verify.py ``Digest``: leaves added in keyspace order, then the root and buckets."""

    def add(self, keyspace_id: int, table: str, key: str, checksum: bytes) -> None:
        """Add one block."""

    def result(self) -> dict[str, Any]:
        """Root and bucket hashes."""


@dataclass
class SourceInfo:
    """What the replicator last learned about its source."""

    last_lsn: int = 0
    reachable: bool = False
    last_contact: float | None = None
    last_applied_time: float | None = None  # commit time (on the source) of the last change applied


@dataclass
class Settings:
    """Replicator tunables (node.json ``replication``)."""

    batch: int = 500
    wait_seconds: float = 5.0
    backoff_seconds: float = 0.2
    max_backoff_seconds: float = 5.0
    seed_chunk: int = 256
    timeout_seconds: float = 30.0


async def close_stream(it: Any) -> None:
    """Close an async generator (a snapshot stream) early: its HTTP response is released."""
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()


class ReplicationState:
    """One node's replication role and state; the block handlers call ``check_writable`` and ``before_read``."""

    def __init__(self, changed: Callable[[], asyncio.Event], new_digest: Callable[[], DigestLike],
                 settings: Settings | None = None) -> None:
        self.changed = changed  # the node's commit event (long polls wait on it)
        self.new_digest = new_digest
        self.settings = settings or Settings()
        self.role: Role = DEFAULT
        self.state = "idle"
        self.error: str | None = None
        self.seeds = 0
        self.errors = 0  # replicator failures since the process started (each retried)
        self.seeding = False
        # True once the replicator streams under the role in force (its rewind or seed done): only then are a
        # mirror's LSNs those of its primary's term, even while its source is unreachable afterwards.
        self.streamed = False
        self.applied = 0  # the cursor (mirror)
        self.promoted_at: int | None = None
        self.discarded: list[int] | None = None
        self.source = SourceInfo()
        # Extra write checks run after the role's (A2's lease and lag gates); each raises ApiError to refuse.
        self.write_gates: list[Callable[[], None]] = []
        # Extra fields of `GET /v1/replication` (lease, mirrors) from the source side.
        self.describe_extras: list[Callable[[], dict[str, Any]]] = []
        # Applied at most up to these LSNs while a digest at that LSN opens its read transaction.
        self.holds: list[int] = []
        self.hold_changed = asyncio.Event()
        # Held by the replicator while it applies a page; a repair takes it to stop the stream meanwhile.
        self.apply_lock = asyncio.Lock()
        self.store: StoreLike | None = None
        self.session: aiohttp.ClientSession | None = None
        self.replicator: Replicator | None = None
        self._task: asyncio.Task[None] | None = None
        self._role_lock = asyncio.Lock()

    # ---- lifecycle ---------------------------------------------------------------------------------
    async def start(self, store: StoreLike, session: aiohttp.ClientSession) -> None:
        """Load the stored role and cursor; a mirror starts replicating."""
        self.store, self.session = store, session

        def load(conn: sqlite3.Connection) -> tuple[Any, int | None, bool, Any]:
            return (apply.get_meta(conn, apply.ROLE_META), apply.cursor(conn), apply.seeding(conn),
                    apply.get_meta(conn, apply.DISCARDED_META))

        doc, cur, seeding, discarded = await store.read(load)
        if doc is not None:
            self.role = Role(doc)
        self.applied, self.seeding, self.discarded = cur or 0, seeding, discarded
        if self.role.role == FENCED:
            self.state = "stopped"
        if self.role.role == MIRROR:
            self._start_replicator()

    async def stop(self) -> None:
        """Stop the replicator (after the page it is applying)."""
        await self._stop_replicator()

    def _start_replicator(self) -> None:
        from .replicator import Replicator  # the replicator imports this module's types

        assert self.store is not None and self.session is not None
        self.replicator = Replicator(self, self.store, self.session)
        self._task = asyncio.create_task(self.replicator.run(), name="replicator")

    async def _stop_replicator(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # A page being committed commits (the writer never takes back a begun job); the task ends after it.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        self.replicator = None

    # ---- checks the block handlers call -------------------------------------------------------------
    def check_writable(self) -> None:
        """Refuse a client write with 503 unless this node is an active primary (the role, then every gate)."""
        self.check_role()
        for gate in self.write_gates:
            gate()

    def _primary_shardset(self) -> str | None:
        if self.role.role == MIRROR:
            return self.role.source_shardset
        return self.role.primary_shardset if self.role.role == FENCED else None

    def writes(self) -> dict[str, Any]:
        """``writes`` of ``GET /v1/replication``: accepting or the first reason refusing."""
        try:
            self.check_writable()
        except ApiError as exc:
            reason = "seeding" if self.role.role == MIRROR and self.seeding else exc.code
            return {"accepting": False, "reason": reason}
        return {"accepting": True, "reason": None}

    async def before_read(self, headers: Any) -> None:
        """503 mirror_seeding while a seed is half done; with ``X-Chronoshard-Min-Lsn: N`` wait until LSN N is
        applied (up to ``X-Chronoshard-Wait-Ms``), else 409 lsn_not_reached with appliedLsn."""
        if self.seeding:
            raise ApiError(503, "mirror_seeding", "this mirror is being seeded; read from the primary")
        wanted = _lsn_header(headers.get(MIN_LSN_HEADER))
        if wanted is None:
            return
        min_term = _term_header(headers.get(MIN_TERM_HEADER))
        if min_term is not None and not self.on_timeline_of(min_term):
            raise ApiError(409, "lsn_not_reached", f"this node is {self.role.role} at term {self.role.term} and "
                           f"cannot vouch for writes acknowledged at term {min_term}; read from the primary",
                           appliedLsn=await self.applied_lsn(), term=self.role.term)
        wait_ms = _wait_header(headers.get(WAIT_MS_HEADER))
        # Only a mirror's applied LSN moves by itself; a primary's last LSN already covers every write it acked.
        applied = await self.wait_applied(wanted, wait_ms / 1000 if self.role.role == MIRROR else 0.0)
        if applied < wanted:
            raise ApiError(409, "lsn_not_reached", f"LSN {wanted} is not applied here yet (at {applied})",
                           appliedLsn=applied)
        if self.seeding:  # a re-seed began while waiting
            raise ApiError(503, "mirror_seeding", "this mirror is being seeded; read from the primary")

    def mark_streaming(self) -> None:
        """The replicator streams under the role in force (after its rewind or seed): reads may trust its LSNs."""
        self.state, self.error, self.streamed = "streaming", None, True

    def on_timeline_of(self, term: int) -> bool:
        """True if this node's LSNs continue those of the primary of ``term``: a primary of that term or later, or
        a mirror of such a primary that has finished its rewind or seed (``streamed``; its source may have died
        since: that is when a mirror is read). An LSN alone is not enough across a
        failover: an old primary (or a mirror still rewinding it) may hold other writes under the same LSNs."""
        if self.role.term < term:
            return False
        return self.role.role == PRIMARY or (self.role.role == MIRROR and self.streamed)

    async def applied_lsn(self) -> int:
        """The LSN reads reflect: the cursor of a mirror, the last LSN of a primary or fenced node."""
        store = self._store()
        if self.role.role == MIRROR:
            return await store.read(lambda c: apply.cursor(c) or 0)
        return await store.read(apply.last_lsn)

    async def wait_applied(self, lsn: int, timeout: float) -> int:
        """Wait until ``lsn`` is applied or ``timeout`` passed; returns the applied LSN."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = self.changed()  # taken before the read: a commit between them still wakes the wait
            applied = await self.applied_lsn()
            remaining = deadline - loop.time()
            if applied >= lsn or remaining <= 0:
                return applied
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=min(0.25, remaining))

    def _store(self) -> StoreLike:
        if self.store is None:
            raise ApiError(503, "not_ready", "store is not open yet")
        return self.store

    # ---- role changes --------------------------------------------------------------------------------
    async def set_role(self, new: Role) -> tuple[int, dict[str, Any]]:
        """Apply a role document (``PUT /v1/replication``); returns the status and the answer."""
        async with self._role_lock:
            change = transition(self.role, new)  # StaleTerm / TermConflict: refused, nothing changes
            extra: dict[str, Any] = {}
            if change is Change.PROMOTE:
                extra = await self._promote(new)
            elif change is Change.FENCE:
                extra = await self._fence(new)
            elif change is Change.FOLLOW:
                await self._follow(new)
            elif change is Change.UPDATE:
                await self._store_role(new)
                if new.role == MIRROR and self.replicator is not None:
                    self.replicator.wake()  # the source moved: the next request goes to the new URL
            body = self.describe_role() | extra
            body["changed"] = change is not Change.SAME
            return 200, body

    async def _store_role(self, new: Role) -> None:
        await self._store().write(lambda c: apply.set_meta(c, apply.ROLE_META, new.doc))
        self.role = new

    async def _promote(self, new: Role) -> dict[str, Any]:
        await self._stop_replicator()
        store = self._store()
        was_mirror = self.role.role == MIRROR
        if was_mirror and await store.read(apply.seeding):
            self._start_replicator()  # half a copy is no primary: finish the seed first
            raise ApiError(409, "mirror_seeding", "this mirror is being seeded; promote a caught-up mirror")

        def job(conn: sqlite3.Connection) -> tuple[int, int]:
            applied = (apply.cursor(conn) or 0) if was_mirror else apply.last_lsn(conn)
            res = apply.promote(conn, new.lsn_floor, new.mirrors, new.doc, applied)
            if new.mirrors:
                store.frames_enabled = True  # the mirrors' slots exist from this transaction on
            return res

        promoted_at, last = await store.write(job)
        self.role, self.state, self.error, self.seeding = new, "idle", None, False
        self.promoted_at = promoted_at
        log.info("promoted to primary at LSN %d (term %d); next LSN %d", promoted_at, new.term, last + 1)
        return {"promotedAtLsn": promoted_at, "lastLsn": last}

    async def _fence(self, new: Role) -> dict[str, Any]:
        await self._stop_replicator()
        self.role = new  # from here on check_writable refuses, and the store's guard refuses queued jobs
        store = self._store()
        # The writer runs jobs in order: once this one commits, every write queued before it has committed.

        def job(conn: sqlite3.Connection) -> int:
            apply.set_meta(conn, apply.ROLE_META, new.doc)
            return apply.last_lsn(conn)

        last = await store.write(job)
        self.state, self.error = "stopped", None
        log.info("fenced at LSN %d (term %d)", last, new.term)
        return {"lastLsn": last}

    async def _follow(self, new: Role) -> None:
        await self._stop_replicator()
        self.streamed = False
        await self._store_role(new)
        self.promoted_at = None
        self._start_replicator()

    def store_guard(self) -> None:
        """Run by the store in the step that queues a client write: a demotion's drain job then comes after every
        write let through."""
        self.check_role()

    def check_role(self) -> None:
        """The role's refusal of anything that writes blocks on its own (503 not_primary / fenced, Retry-After: 1):
        a mirror's blocks and LSNs come from its source only."""
        reason = write_refusal(self.role)
        if reason is not None:
            raise ApiError(503, reason, f"this node is {self.role.role} (term {self.role.term}); write to the primary",
                           role=self.role.role, term=self.role.term, primaryShardSet=self._primary_shardset()
                           ).with_headers(Retry_After="1")

    # ---- digest holds ----------------------------------------------------------------------------------
    def hold_limit(self) -> int | None:
        """The LSN the replicator may not apply past (None: no hold)."""
        return min(self.holds) if self.holds else None

    def add_hold(self, lsn: int) -> None:
        """Stop applying past ``lsn`` until ``release_hold``."""
        self.holds.append(lsn)

    def release_hold(self, lsn: int) -> None:
        """Lift one hold at ``lsn``; the replicator goes on."""
        with contextlib.suppress(ValueError):
            self.holds.remove(lsn)
        self.hold_changed.set()
        self.hold_changed = asyncio.Event()

    # ---- GET /v1/replication ---------------------------------------------------------------------------
    def describe_role(self) -> dict[str, Any]:
        """The role part of the answer."""
        r = self.role
        return {"term": r.term, "role": r.role, "mode": r.doc.get("mode"), "state": self.state,
                "error": self.error, "promotedAtLsn": self.promoted_at}

    async def describe(self) -> dict[str, Any]:
        """The `GET /v1/replication` body."""
        last = await self._store().read(apply.last_lsn)
        applied = self.applied if self.role.role == MIRROR else last
        body = self.describe_role() | {
            "appliedLsn": applied, "lastLsn": last, "seeds": self.seeds, "seeding": self.seeding,
            "source": self.describe_source(applied), "discardedLsns": self.discarded,
            "writes": self.writes(), "lease": None, "mirrors": []}
        for extra in self.describe_extras:
            body |= extra()
        return body

    def describe_source(self, applied: int) -> dict[str, Any] | None:
        """``source`` of ``GET /v1/replication`` (None unless a mirror)."""
        r = self.role
        if r.role != MIRROR:
            return None
        s = self.source
        lag = max(0, s.last_lsn - applied)
        lag_seconds = 0.0 if lag == 0 or s.last_applied_time is None else max(0.0, time.time() -
                                                                              s.last_applied_time)
        return {"shardSet": r.source_shardset, "url": r.source_url, "consumer": r.consumer, "lastLsn": s.last_lsn,
                "lagLsn": lag, "lagSeconds": lag_seconds, "reachable": s.reachable, "lastContact": s.last_contact}


def _lsn_header(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not _DIGITS.fullmatch(raw) or len(raw) > 19 or int(raw) > MAX_LSN:
        raise ApiError(400, "invalid_header", f"{MIN_LSN_HEADER} must be one decimal LSN")
    return int(raw)


def _term_header(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not _DIGITS.fullmatch(raw) or len(raw) > 19 or int(raw) > MAX_LSN:
        raise ApiError(400, "invalid_header", f"{MIN_TERM_HEADER} must be one decimal term")
    return int(raw)


def _wait_header(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_WAIT_MS
    if not _DIGITS.fullmatch(raw) or len(raw) > 6:
        raise ApiError(400, "invalid_header", f"{WAIT_MS_HEADER} must be milliseconds (0-{MAX_WAIT_MS})")
    return min(int(raw), MAX_WAIT_MS)

