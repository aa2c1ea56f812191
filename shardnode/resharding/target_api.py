"""The target side of a move on a node (docs/resharding.md, "Node endpoints"): ``PUT``/``GET``/``DELETE
/v1/moves/{name}``, ``GET /v1/moves``, ``GET /v1/moves/{name}/digest?sourceLsn=X`` and, on any node,
``GET /v1/ranges/digest``. The node makes one ``MoveManager`` and wires it in: ``start`` once its store and peer
session are open (every persisted move resumes), ``stop`` at shutdown, ``routes`` beside its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from chronoshard.shardnode.auth.policy import Access
from chronoshard.shardnode.replication.state import StoreLike
from chronoshard.shardnode.serving.changestream import ChangeStreamClient, ChangeStreamError
from chronoshard.shardnode.serving.http_common import ApiError, bool_query, float_query, int_query, json_body
from chronoshard.shardnode.serving.routing import PartitionMapSource
from chronoshard.shardnode.serving.scaffold import Route

from . import moves_sql as sql
from .fences import Range, owned_overlap, parse_ranges
from .moves import FAILED, NAME_RE, MoveInvalid, MoveSpec, parse_move, slot_name
from .puller import Puller, PullSettings

log = logging.getLogger(__name__)

MAX_LSN = 2**63 - 1
DROP_TIMEOUT_SECONDS = 5.0
DROP_ATTEMPTS = 360  # an hour at the puller's longest backoff


class MoveManager:
    """The node's moves: one ``Puller`` task each. ``source``/``shard``: the map in force and this node's index
    (None: no partition map, so the node owns everything and takes no move); ``check_writable`` raises unless
    the node takes writes (a mirror's content comes from its own source)."""

    def __init__(self, source: PartitionMapSource | None, shard: int | None, store: Callable[[], StoreLike],
                 check_writable: Callable[[], None], settings: PullSettings | None = None) -> None:
        self.source, self.shard, self.store, self.check_writable = source, shard, store, check_writable
        self.settings = settings or PullSettings()
        self.pullers: dict[str, Puller] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.session: aiohttp.ClientSession | None = None
        self.lock = asyncio.Lock()  # PUT and DELETE of moves one at a time
        self.drops: set[asyncio.Task[None]] = set()  # slots on sources still to drop (the source was unreachable)

    async def start(self, session: aiohttp.ClientSession) -> None:
        """With the store open: the moves table exists, every persisted move resumes."""
        self.session = session
        store = self.store()
        await store.write(sql.ensure_schema)
        for row in await store.read(sql.load_all):
            self._run(Puller(row.name, row.spec, store, session, self.settings, row, self._owns_fn(row.spec)))
            log.info("move %s: resumed (%s)", row.name, row.phase)

    async def stop(self) -> None:
        """Cancel every puller (each resumes from its stored cursor at the next start)."""
        for task in [*self.tasks.values(), *self.drops]:
            task.cancel()
        for task in [*self.tasks.values(), *self.drops]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()

    def _run(self, puller: Puller) -> None:
        self.pullers[puller.name] = puller
        if puller.phase != FAILED:
            self.tasks[puller.name] = asyncio.create_task(puller.run(), name=f"move-{puller.name}")

    def _owns_fn(self, spec: MoveSpec) -> Callable[[], bool]:
        """Whether the map in force gives this node any part of the move's ranges (then it copies no more)."""
        def owns() -> bool:
            pmap = self.source.map if self.source is not None else None
            return pmap is not None and self.shard is not None and bool(owned_overlap(pmap, self.shard, spec.ranges))
        return owns

    def _owned(self, ranges: tuple[Range, ...]) -> None:
        """409 if this node owns any part of ``ranges`` under the map in force."""
        if self.source is None or self.shard is None:
            raise ApiError(409, "owned", "this node has no partition map: it owns the whole keyspace")
        pmap = self.source.require()
        mine = owned_overlap(pmap, self.shard, ranges)
        if mine:
            raise ApiError(409, "owned", f"this shard owns part of the ranges under epoch {pmap.epoch}",
                           epoch=pmap.epoch, owned=[[f"{lo:016x}", f"{hi:016x}"] for lo, hi in mine])

    def _overlapping(self, name: str, ranges: tuple[Range, ...]) -> str | None:
        for other, p in self.pullers.items():
            if other != name and owned_overlap_ranges(p.spec.ranges, ranges):
                return other
        return None

    async def put(self, name: str, spec: MoveSpec) -> tuple[int, dict[str, object]]:
        """Start a move (201) or find it already there with the same body (200); 409 otherwise."""
        async with self.lock:
            known = self.pullers.get(name)
            if known is not None:
                if known.spec != spec:
                    raise ApiError(409, "move_conflict", f"move {name} exists with another body")
                return 200, known.describe()
            self.check_writable()
            self._owned(spec.ranges)
            other = self._overlapping(name, spec.ranges)
            if other is not None:
                raise ApiError(409, "move_overlap", f"move {other} already pulls part of these ranges", move=other)
            if self.session is None:
                raise ApiError(503, "not_ready", "the node is starting")
            store = self.store()
            row = await store.write(lambda c: sql.create(c, name, spec))
            if row is None:  # cannot happen while the lock is held and memory mirrors the table
                raise ApiError(409, "move_conflict", f"move {name} exists")
            puller = Puller(name, spec, store, self.session, self.settings, row, self._owns_fn(spec))
            self._run(puller)
            log.info("move %s: started (partition %d from shard %d)", name, spec.partition, spec.source_shard)
            return 201, puller.describe()

    def get(self, name: str) -> Puller:
        """A known move (404 otherwise)."""
        puller = self.pullers.get(name)
        if puller is None:
            raise ApiError(404, "not_found", f"no move {name}")
        return puller

    async def delete(self, name: str, discard: bool) -> dict[str, object]:
        """Stop pulling, drop the slot on the source; ``discard``: also delete the imported blocks. Idempotent."""
        async with self.lock:
            puller = self.pullers.get(name)
            task = self.tasks.pop(name, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            store = self.store()
            removed = 0
            if discard and puller is not None:
                ranges = puller.spec.ranges
                # Rows go after the store's queued jobs (one writer): an import the cancel cut is already in.
                while (n := await store.write(lambda c: sql.clear_batch(c, ranges, self.settings.clear_chunk))) > 0:
                    removed += n
            await store.write(lambda c: sql.remove(c, name))
            self.pullers.pop(name, None)
            dropped = await self._drop_slot(puller) if puller is not None else True
            if puller is not None and not dropped:
                task = asyncio.create_task(self._drop_later(puller), name=f"move-{name}-drop")
                self.drops.add(task)
                task.add_done_callback(self.drops.discard)
            if puller is not None:
                log.info("move %s: closed (discard=%s, %d blocks removed)", name, discard, removed)
            return {"name": name, "deleted": puller is not None, "discardedBlocks": removed, "slotDropped": dropped}

    async def _drop_slot(self, puller: Puller) -> bool:
        """Drop the move's slot on the source (it holds the source's log); False if the source could not be told
        (the slot then lapses there as its retention allows)."""
        if self.session is None:
            return False
        client = ChangeStreamClient(puller.spec.source_url, self.session, server_hostname=puller.spec.server_name,
                                    timeout=DROP_TIMEOUT_SECONDS)
        try:
            await client.unregister(slot_name(puller.name))
        except ChangeStreamError as exc:
            if exc.status == 404:
                return True
            log.warning("move %s: the source's slot was not dropped: %s", puller.name, exc.status)
            return False
        return True

    async def _drop_later(self, puller: Puller) -> None:
        """Keep trying to drop a closed move's slot (a slot holds the source's log) while this process runs."""
        for _ in range(DROP_ATTEMPTS):
            await asyncio.sleep(self.settings.max_backoff_seconds)
            if puller.name in self.pullers or await self._drop_slot(puller):
                return  # dropped, or a new move of that name holds the slot again

    async def hold(self, name: str, seconds: float) -> dict[str, Any]:
        """Stop the move's apply where it is (verification, step 1): the source's digest LSN taken next is at or
        above the cursor, so the digest request at that LSN can always be answered."""
        puller = self.get(name)
        return {"name": name, "sourceLsn": await puller.hold_here(seconds), "holdSeconds": seconds}

    async def digest(self, name: str, at: int, wait_seconds: float) -> dict[str, Any]:
        """The move's ranges' digest with exactly source LSN ``at`` applied: the puller is held at ``at`` until
        the read transaction has begun. 409 lsn_passed / lsn_not_reached otherwise."""
        puller = self.get(name)
        loop = asyncio.get_running_loop()
        released = threading.Event()
        puller.add_hold(at)
        puller.drop_pre_hold()  # the pre-hold kept the cursor at or below ``at``: the apply may go on to exactly it

        def release() -> None:
            if not released.is_set():
                released.set()
                loop.call_soon_threadsafe(puller.release_hold, at)

        try:
            applied = await puller.wait_applied(at, wait_seconds)
            if applied is None or applied < at:
                raise _lsn_mismatch(at, applied)
            out = await self.store().read(lambda c: sql.move_digest(c, name, puller.spec.ranges, at, release))
        finally:
            release()
        if not isinstance(out, dict):
            raise _lsn_mismatch(at, out)
        return out


def owned_overlap_ranges(a: tuple[Range, ...], b: tuple[Range, ...]) -> bool:
    """Whether two sets of inclusive ranges share a keyspace id."""
    return any(lo1 <= hi2 and lo2 <= hi1 for lo1, hi1 in a for lo2, hi2 in b)


def _lsn_mismatch(at: int, applied: int | None) -> ApiError:
    if applied is not None and applied > at:
        return ApiError(409, "lsn_passed", f"already applied past source LSN {at} (at {applied})", sourceLsn=applied)
    return ApiError(409, "lsn_not_reached", f"source LSN {at} was not applied in time (at {applied})",
                    sourceLsn=applied)


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not NAME_RE.fullmatch(name):
        raise ApiError(400, "invalid_name", "move name must match [A-Za-z0-9][A-Za-z0-9_.-]{0,57}")
    return name


def keyspace_ranges(request: web.Request) -> tuple[Range, ...]:
    """``keyspace=<start>-<end>[,...]`` (hex keyspace ids, inclusive); 400 otherwise."""
    raw = request.query.get("keyspace")
    pairs = [part.split("-") for part in raw.split(",")] if raw else None
    try:
        return parse_ranges(pairs)
    except ValueError as exc:
        raise ApiError(400, "invalid_parameter", f"keyspace=<start>-<end>[,...]: {exc}") from None


ManagerOf = Callable[[web.Request], MoveManager]


def handlers(manager_of: ManagerOf) -> dict[str, Callable[[web.Request], Any]]:
    """The route handlers by name."""

    async def put(request: web.Request) -> web.Response:
        name = _name(request)
        try:
            spec = parse_move(await json_body(request))
        except MoveInvalid as exc:
            raise ApiError(400, "invalid_body", str(exc)) from None
        status, body = await manager_of(request).put(name, spec)
        return web.json_response(body, status=status)

    async def get_one(request: web.Request) -> web.Response:
        return web.json_response(manager_of(request).get(_name(request)).describe())

    async def get_all(request: web.Request) -> web.Response:
        pullers = manager_of(request).pullers
        return web.json_response({"moves": [pullers[n].describe() for n in sorted(pullers)]})

    async def delete(request: web.Request) -> web.Response:
        name = _name(request)
        return web.json_response(await manager_of(request).delete(name, bool_query(request, "discard")))

    async def digest(request: web.Request) -> web.Response:
        name = _name(request)
        if "sourceLsn" not in request.query:
            raise ApiError(400, "invalid_parameter", "sourceLsn is required")
        at = int_query(request, "sourceLsn", 0, 0, MAX_LSN)
        wait = float_query(request, "waitSeconds", 10.0, 0.0, 60.0)
        return web.json_response(await manager_of(request).digest(name, at, wait))

    async def hold(request: web.Request) -> web.Response:
        name = _name(request)
        seconds = float_query(request, "seconds", 30.0, 0.1, 120.0)
        return web.json_response(await manager_of(request).hold(name, seconds))

    async def ranges_digest(request: web.Request) -> web.Response:
        ranges = keyspace_ranges(request)
        return web.json_response(await manager_of(request).store().read(lambda c: sql.range_digest(c, ranges)))

    return {"put": put, "get_one": get_one, "get_all": get_all, "delete": delete, "digest": digest,
            "hold": hold, "ranges_digest": ranges_digest}


def routes(manager_of: ManagerOf) -> list[Route]:
    """The moves' routes (ADMIN) and ``GET /v1/ranges/digest`` (REPLICATION)."""
    h = handlers(manager_of)
    return [Route("GET", "/v1/moves", h["get_all"], Access.ADMIN),
            Route("PUT", "/v1/moves/{name}", h["put"], Access.ADMIN),
            Route("GET", "/v1/moves/{name}", h["get_one"], Access.ADMIN),
            Route("DELETE", "/v1/moves/{name}", h["delete"], Access.ADMIN),
            Route("PUT", "/v1/moves/{name}/hold", h["hold"], Access.ADMIN),
            Route("GET", "/v1/moves/{name}/digest", h["digest"], Access.ADMIN),
            Route("GET", "/v1/ranges/digest", h["ranges_digest"], Access.REPLICATION)]
