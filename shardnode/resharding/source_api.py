"""The source side of a move on a node (docs/resharding.md, "Node endpoints"): the pushed map's persistence, the
fences (``PUT``/``DELETE /v1/fences/{name}``), the purge of a moved-away range (``POST /v1/ranges:purge``) and a
range's stats (``GET /v1/ranges/stats``). The node makes one ``SourceSide`` and wires it in: ``start`` once its store
is open, ``gate.admit`` around every client write, ``routes`` beside its own."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web
from chronoshard.shardnode.auth.policy import Access
from chronoshard.shardnode.keyspace.partitioning import PartitionMap
from chronoshard.shardnode.replication.apply import last_lsn
from chronoshard.shardnode.replication.state import StoreLike
from chronoshard.shardnode.serving.http_common import ApiError, json_body
from chronoshard.shardnode.serving.routing import PartitionMapSource
from chronoshard.shardnode.serving.scaffold import Route

from . import ranges as sql
from .fences import DEFAULT_HOLD_SECONDS, MAX_HOLD_SECONDS, FenceGate, Range, owned_overlap, parse_ranges

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
MAX_EPOCH = 2**63 - 1


class SourceSide:
    """One node's source side: ``source``/``shard`` its map in force and index (None: no partition map),
    ``store()`` the open store (503 before), ``check_writable()`` raises unless the node takes writes (a mirror
    purges nothing of its own: its source's purges stream to it)."""

    def __init__(self, source: PartitionMapSource | None, shard: int | None, store: Callable[[], StoreLike],
                 check_writable: Callable[[], None]) -> None:
        self.source, self.shard = source, shard
        self.store, self.check_writable = store, check_writable
        self.gate = FenceGate(source, shard, self._last_lsn)

    async def _last_lsn(self) -> int:
        return await self.store().read(last_lsn)

    async def start(self) -> None:
        """With the store open: the persisted pushed map back in force, and pushes persisted from now on."""
        if self.source is None:
            return
        store = self.store()
        pushed = await store.read(sql.load_pushed_map)
        self.source.adopt_pushed(pushed)

        async def persist(pmap: PartitionMap) -> None:
            await store.write(lambda c: sql.store_pushed_map(c, pmap))

        self.source.persist = persist
        self.source.fence_renew = self.gate.renew

    # ---- purge ----
    def owned(self, ranges: tuple[Range, ...], epoch: int) -> None:
        """409 unless the map in force has an epoch >= ``epoch`` and gives no part of ``ranges`` to this shard."""
        if self.source is None or self.shard is None:
            raise ApiError(409, "owned", "this node has no partition map: it owns the whole keyspace")
        pmap = self.source.require()
        if pmap.epoch < epoch:
            raise ApiError(409, "epoch_behind", f"the map in force has epoch {pmap.epoch}, not yet {epoch}",
                           epoch=pmap.epoch)
        mine = owned_overlap(pmap, self.shard, ranges)
        if mine:
            raise ApiError(409, "owned", f"this shard owns part of the ranges under epoch {pmap.epoch}",
                           epoch=pmap.epoch, owned=[[f"{lo:016x}", f"{hi:016x}"] for lo, hi in mine])

    async def purge(self, ranges: tuple[Range, ...], epoch: int) -> int:
        """Delete every block of ``ranges`` in batches, checking ownership before each; returns how many went.
        Resumable: a purge cut short is finished by the next one."""
        total = 0
        while True:
            self.check_writable()
            self.owned(ranges, epoch)  # the map in force may have moved a range back meanwhile
            n = await self.store().write(lambda c: sql.purge_batch(c, ranges))
            total += n
            if n == 0:
                return total


def _ranges(doc: dict[str, Any]) -> tuple[Range, ...]:
    try:
        return parse_ranges(doc.get("ranges"))
    except ValueError as exc:
        raise ApiError(400, "invalid_body", str(exc)) from None


def _fence_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not NAME_RE.fullmatch(name):
        raise ApiError(400, "invalid_name", "fence name must match [A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
    return name


def _hold_seconds(doc: dict[str, Any]) -> float:
    hold = doc.get("holdSeconds", DEFAULT_HOLD_SECONDS)
    if not isinstance(hold, int | float) or isinstance(hold, bool) or not 0 < hold <= MAX_HOLD_SECONDS:
        raise ApiError(400, "invalid_body", f"holdSeconds must be a number in (0, {MAX_HOLD_SECONDS:g}]")
    return float(hold)


def _keyspace_query(request: web.Request) -> tuple[Range, ...]:
    raw = request.query.get("keyspace")
    pairs = [part.split("-") for part in raw.split(",")] if raw else None
    try:
        return parse_ranges(pairs)
    except ValueError as exc:
        raise ApiError(400, "invalid_parameter", f"keyspace=<start>-<end>[,...]: {exc}") from None


def _unknown(doc: dict[str, Any], allowed: set[str]) -> None:
    extra = set(doc) - allowed
    if extra:
        raise ApiError(400, "invalid_body", f"unknown fields: {sorted(extra)}")


SideOf = Callable[[web.Request], SourceSide]


def handlers(side_of: SideOf) -> dict[str, Callable[[web.Request], Any]]:
    """The route handlers by name."""

    async def put_fence(request: web.Request) -> web.Response:
        name = _fence_name(request)
        doc = await json_body(request)
        _unknown(doc, {"ranges", "holdSeconds"})
        ranges, hold = _ranges(doc), _hold_seconds(doc)
        fence_lsn = await side_of(request).gate.put(name, ranges, hold)
        log.info("fence %s up on %d range(s) for %.1f s at LSN %d", name, len(ranges), hold, fence_lsn)
        return web.json_response({"name": name, "fenceLsn": fence_lsn, "holdSeconds": hold})

    async def delete_fence(request: web.Request) -> web.Response:
        name = _fence_name(request)
        removed = side_of(request).gate.lift(name)
        return web.json_response({"name": name, "removed": removed})

    async def get_fences(request: web.Request) -> web.Response:
        gate = side_of(request).gate
        return web.json_response({"fences": gate.describe(), "heldWrites": gate.held})

    async def purge(request: web.Request) -> web.Response:
        side = side_of(request)
        doc = await json_body(request)
        _unknown(doc, {"ranges", "epoch"})
        ranges = _ranges(doc)
        epoch = doc.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch <= MAX_EPOCH:
            raise ApiError(400, "invalid_body", "epoch must be a non-negative integer")
        side.check_writable()
        side.owned(ranges, epoch)
        purged = await side.purge(ranges, epoch)
        log.info("purged %d block(s) of %d moved-away range(s) (epoch >= %d)", purged, len(ranges), epoch)
        return web.json_response({"purgedBlocks": purged})

    async def stats(request: web.Request) -> web.Response:
        ranges = _keyspace_query(request)
        found = await side_of(request).store().read(lambda c: sql.range_stats(c, ranges))
        return web.json_response(found.to_json())

    return {"put_fence": put_fence, "delete_fence": delete_fence, "get_fences": get_fences, "purge": purge,
            "stats": stats}


def routes(side_of: SideOf) -> list[Route]:
    """``PUT``/``DELETE /v1/fences/{name}``, ``GET /v1/fences``, ``POST /v1/ranges:purge``, ``GET /v1/ranges/stats``
    (all ``Access.ADMIN``: the operator's)."""
    h = handlers(side_of)
    return [Route("PUT", "/v1/fences/{name}", h["put_fence"], Access.ADMIN),
            Route("DELETE", "/v1/fences/{name}", h["delete_fence"], Access.ADMIN),
            Route("GET", "/v1/fences", h["get_fences"], Access.ADMIN),
            Route("POST", "/v1/ranges:purge", h["purge"], Access.ADMIN),
            Route("GET", "/v1/ranges/stats", h["stats"], Access.ADMIN)]
