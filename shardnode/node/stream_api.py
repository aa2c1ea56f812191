"""The node's change-stream API: `GET /v1/changes` (with frames), consumer slots, `GET /v1/snapshot`,
`GET /v1/status`, the consumer gauges and the strict parsing of `X-Chronoshard-If-Lsn`."""

from __future__ import annotations

import asyncio
import base64
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from chronoshard.shardnode.auth.policy import Access
from chronoshard.shardnode.keyspace.partitioning import keyspace_id
from chronoshard.shardnode.serving.http_common import (
    TABLE_RE,
    ApiError,
    bool_query,
    float_query,
    int_query,
    json_body,
)
from chronoshard.shardnode.serving.scaffold import Route
from prometheus_client import CollectorRegistry, Gauge

from . import changelog, consumers
from .pacing import Pacer
from .snapshot import SnapshotFailed, snapshot_chunks
from .store import Store, block_count

IF_LSN_HEADER = "X-Chronoshard-If-Lsn"
MAX_LSN = 2**63 - 1
MAX_TABLES = 100
_LSN_RE = re.compile(r"0|[1-9][0-9]{0,18}")


class StreamHost(Protocol):
    """What these handlers need of the node process."""

    @property
    def db(self) -> Store:
        """The open store (ApiError 503 before start-up finished)."""

    @property
    def closing(self) -> bool:
        """True once shutdown began (long polls end)."""

    def changed(self) -> asyncio.Event:
        """An event set by the next commit."""

    def response_budget(self) -> int:
        """Bytes of frames one answer may carry (maxResponseBytes)."""

    def slot_changed(self, name: str, slot: dict[str, Any] | None) -> None:
        """A slot was registered or acked (its API form) or deleted (None): the sync wait's in-memory copy."""

    def snapshot_pacer(self) -> Pacer | None:
        """What paces a keyspace-limited snapshot (a move's copy) by the node's clients; None: full speed."""


# ---- parsing ---------------------------------------------------------------------------------------
def if_lsn(request: web.Request) -> int | None:
    """The conditional-write header: None if absent; 400 unless exactly one canonical decimal LSN."""
    values = request.headers.getall(IF_LSN_HEADER, [])
    if not values:
        return None
    raw = values[0]
    if len(values) > 1 or not _LSN_RE.fullmatch(raw) or int(raw) > MAX_LSN:
        raise ApiError(400, "invalid_header", f"{IF_LSN_HEADER} must be one decimal LSN between 0 and {MAX_LSN}")
    return int(raw)


def tables_query(request: web.Request) -> tuple[str, ...] | None:
    """``tables=a,b``: None if absent, else the distinct valid table names."""
    raw = request.query.get("tables")
    if raw is None:
        return None
    names = raw.split(",")
    if len(names) > MAX_TABLES or not all(TABLE_RE.fullmatch(n) for n in names):
        raise ApiError(400, "invalid_parameter", f"tables must be 1-{MAX_TABLES} comma-separated table names")
    return tuple(dict.fromkeys(names))


_RANGE_RE = re.compile(r"([0-9a-f]{16})-([0-9a-f]{16})")
MAX_RANGES = 256


def keyspace_query(request: web.Request) -> tuple[tuple[int, int], ...] | None:
    """``keyspace=<start>-<end>[,...]`` (16 hex digits each, inclusive): None if absent; 400 unless every range
    is well formed with start <= end."""
    raw = request.query.get("keyspace")
    if raw is None:
        return None
    out: list[tuple[int, int]] = []
    for part in raw.split(","):
        m = _RANGE_RE.fullmatch(part.lower())
        if m is None or int(m[1], 16) > int(m[2], 16):
            raise ApiError(400, "invalid_parameter", "keyspace must be comma-separated <start>-<end> ranges of "
                           "16 hex digits, start <= end")
        out.append((int(m[1], 16), int(m[2], 16)))
    if len(out) > MAX_RANGES:
        raise ApiError(400, "invalid_parameter", f"at most {MAX_RANGES} keyspace ranges")
    return tuple(out)


def check_name(name: str) -> str:
    """A valid consumer name (400 otherwise)."""
    if not consumers.NAME_RE.fullmatch(name):
        raise ApiError(400, "invalid_name", "consumer name must match [A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
    return name


def _lsn_field(doc: dict[str, Any], field: str, required: bool) -> int | None:
    value = doc.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_LSN:
        raise ApiError(400, "invalid_body", f"{field} must be an integer between 0 and {MAX_LSN}")
    return value


def _only(doc: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(doc) - allowed
    if unknown:
        raise ApiError(400, "invalid_body", f"unknown fields: {sorted(unknown)}")


def _slot_errors(exc: consumers.UnknownConsumer | consumers.StartUnavailable | consumers.BeyondLog) -> ApiError:
    if isinstance(exc, consumers.UnknownConsumer):
        return ApiError(404, "not_found", f"no consumer {exc}")
    if isinstance(exc, consumers.StartUnavailable):
        return ApiError(409, "start_unavailable", f"{exc}; re-seed from /v1/snapshot and start at its LSN",
                        earliestLsn=exc.earliest)
    return ApiError(400, "invalid_lsn", str(exc), lastLsn=exc.last)


_SLOT_ERRORS = (consumers.UnknownConsumer, consumers.StartUnavailable, consumers.BeyondLog)


# ---- GET /v1/changes -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Page:
    """One answer of `GET /v1/changes`, read in one transaction."""

    entries: list[changelog.Change]
    next: int
    last: int
    first: int
    gap: bool


def _in_ranges(e: changelog.Change, ranges: tuple[tuple[int, int], ...]) -> bool:
    kid = keyspace_id(e.table, e.key)
    return any(lo <= kid <= hi for lo, hi in ranges)


def read_page(conn: sqlite3.Connection, after: int, limit: int, tables: tuple[str, ...] | None, frames: bool,
              budget: int, consumer: str | None, keyspace: tuple[tuple[int, int], ...] | None = None) -> Page:
    """Entries after ``after`` (at least one, then only while their frames fit ``budget``) with the log's
    bounds; ``consumer``: gap is also true while that slot is behind; ``keyspace``: only entries of keys in these
    inclusive ranges, of at most ``limit`` entries looked at (a move's catch-up, docs/resharding.md)."""
    conn.execute("BEGIN")
    try:
        entries: list[changelog.Change] = []
        total, full, looked, looked_to = 0, False, 0, after
        for e in changelog.iter_changes(conn, after, limit, tables=tables, frames=frames):
            looked += 1
            if keyspace is not None and not _in_ranges(e, keyspace):
                looked_to = e.lsn
                continue
            size = len(e.frame or b"")
            if entries and total + size > budget:
                full = True
                break
            total += size
            entries.append(e)
            looked_to = e.lsn
        last, first = changelog.last_lsn(conn), changelog.first_lsn(conn)
        slot = consumers.get(conn, consumer) if consumer is not None else None
    finally:
        conn.execute("COMMIT")
    if consumer is not None and slot is None:
        raise consumers.UnknownConsumer(consumer)
    if full:
        nxt = entries[-1].lsn
    elif looked == limit:
        nxt = looked_to  # every entry up to it was looked at (with keyspace=, some were left out)
    elif tables or keyspace is not None:
        nxt = max(after, last)  # every entry up to `last` was looked at; none further matched the filter
    else:
        nxt = entries[-1].lsn if entries else after
    # The log went back past the reader (a mirror rewound to a divergence point or re-seeded): what it saw after
    # `last` may have been replaced by other changes with the same LSNs, so it resumes from `last`, resynchronised.
    went_back = last < after
    if went_back:
        nxt = last
    # gap: entries after `after` were trimmed before this reader got them; it must resynchronise.
    gap = (first > after + 1 or (first == 0 and last > after) or went_back
           or (slot is not None and slot.state == consumers.BEHIND))
    return Page(entries, nxt, last, first, gap)


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def change_json(e: changelog.Change, frames: bool) -> dict[str, Any]:
    """An entry's JSON; with ``frames`` also its frame and checksum (null for deletes and unrecorded frames)."""
    doc = e.to_json()
    if frames:
        doc["frame"], doc["checksum"] = _b64(e.frame), _b64(e.checksum)
    return doc


def changes_handler(host_of: Callable[[web.Request], StreamHost]) -> Callable[[web.Request], Any]:
    """GET /v1/changes?after=&limit=&wait=&frames=&tables=&keyspace=&consumer=: entries after an LSN, long-polling."""

    async def changes(request: web.Request) -> web.Response:
        host = host_of(request)
        after = int_query(request, "after", 0, 0, MAX_LSN)
        limit = int_query(request, "limit", 100, 1, 1000)
        wait = float_query(request, "wait", 0.0, 0.0, 30.0)
        frames = bool_query(request, "frames")
        tables = tables_query(request)
        keyspace = keyspace_query(request)
        consumer = request.query.get("consumer")
        if consumer is not None:
            check_name(consumer)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        budget = host.response_budget()
        while True:
            # Take the event before reading: a commit between the read and the wait then still wakes us.
            changed = host.changed()
            try:
                page = await host.db.read(lambda c: read_page(c, after, limit, tables, frames, budget, consumer,
                                                              keyspace))
            except consumers.UnknownConsumer as exc:
                raise _slot_errors(exc) from None
            remaining = deadline - loop.time()
            if page.entries or page.next > after or host.closing or remaining <= 0:
                break
            try:
                # Short slices so a reader that hung up (or a shutdown) ends the wait promptly.
                await asyncio.wait_for(changed.wait(), timeout=min(0.25, remaining))
            except TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    break
        return web.json_response({"changes": [change_json(e, frames) for e in page.entries], "next": page.next,
                                  "lastLsn": page.last, "firstLsn": page.first, "gap": page.gap})

    return changes


# ---- consumer slots --------------------------------------------------------------------------------
def _register_job(store: Store, name: str, start: int | None, reset: bool) -> Callable[[sqlite3.Connection], Any]:
    def job(conn: sqlite3.Connection) -> tuple[dict[str, Any], bool]:
        now = time.time()
        slot, written = consumers.register(conn, name, start, reset, now)
        # Every later change of this transaction and after logs its frame (the writer reads the flag per job).
        store.frames_enabled = True
        return consumers.describe(conn, slot, now), written
    return job


def _unregister_job(store: Store, name: str) -> Callable[[sqlite3.Connection], Any]:
    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        now = time.time()
        slot = consumers.unregister(conn, name)
        store.frames_enabled = consumers.has_consumers(conn)
        return consumers.describe(conn, slot, now)
    return job


def _ack_job(name: str, lsn: int) -> Callable[[sqlite3.Connection], Any]:
    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        now = time.time()
        return consumers.describe(conn, consumers.ack(conn, name, lsn, now), now)
    return job


def list_consumers(conn: sqlite3.Connection) -> dict[str, Any]:
    """The `GET /v1/consumers` body, from one read."""
    now, last = time.time(), changelog.last_lsn(conn)
    return {"consumers": [consumers.describe(conn, s, now, last) for s in consumers.list_slots(conn)],
            "lastLsn": last}


def consumer_handlers(host_of: Callable[[web.Request], StreamHost]) -> dict[str, Callable[[web.Request], Any]]:
    """The slot routes' handlers by name."""

    async def put(request: web.Request) -> web.Response:
        host = host_of(request)
        name = check_name(request.match_info["name"])
        doc = await json_body(request, required=False)
        _only(doc, {"startLsn", "reset"})
        start = _lsn_field(doc, "startLsn", required=False)
        reset = doc.get("reset", False)
        if not isinstance(reset, bool):
            raise ApiError(400, "invalid_body", "reset must be true or false")
        try:
            body, written = await host.db.write(_register_job(host.db, name, start, reset))
        except _SLOT_ERRORS as exc:
            raise _slot_errors(exc) from None
        host.slot_changed(name, body)
        return web.json_response(body, status=201 if written else 200)

    async def get_all(request: web.Request) -> web.Response:
        return web.json_response(await host_of(request).db.read(list_consumers))

    async def get_one(request: web.Request) -> web.Response:
        name = check_name(request.match_info["name"])

        def work(conn: sqlite3.Connection) -> dict[str, Any] | None:
            slot = consumers.get(conn, name)
            return None if slot is None else consumers.describe(conn, slot, time.time())

        body = await host_of(request).db.read(work)
        if body is None:
            raise ApiError(404, "not_found", f"no consumer {name}")
        return web.json_response(body)

    async def delete(request: web.Request) -> web.Response:
        host = host_of(request)
        name = check_name(request.match_info["name"])
        try:
            body = await host.db.write(_unregister_job(host.db, name))
        except _SLOT_ERRORS as exc:
            raise _slot_errors(exc) from None
        host.slot_changed(name, None)
        return web.json_response(body)

    async def ack(request: web.Request) -> web.Response:
        host = host_of(request)
        name = check_name(request.match_info["name"])
        doc = await json_body(request)
        _only(doc, {"lsn"})
        lsn = _lsn_field(doc, "lsn", required=True)
        assert lsn is not None
        try:
            body = await host.db.write(_ack_job(name, lsn))
        except _SLOT_ERRORS as exc:
            raise _slot_errors(exc) from None
        host.slot_changed(name, body)  # wakes the writes waiting for a mirror's ack (sync mode)
        return web.json_response(body)

    return {"put": put, "get_all": get_all, "get_one": get_one, "delete": delete, "ack": ack}


# ---- GET /v1/snapshot and GET /v1/status -------------------------------------------------------------
def snapshot_handler(host_of: Callable[[web.Request], StreamHost]) -> Callable[[web.Request], Any]:
    """GET /v1/snapshot?tables=&keyspace=: NDJSON of every block (of those tables, in those keyspace ranges) from one
    read transaction (docs/interfaces.md, docs/mirroring.md)."""

    async def snapshot(request: web.Request) -> web.StreamResponse:
        host = host_of(request)
        tables = tables_query(request)
        ranges = keyspace_query(request)
        # Only keyspace-limited snapshots (a move's copy, a mirror's range repair) yield to the clients: a full one
        # seeds a mirror, which holds its reads and the set's redundancy until it ends.
        chunks = snapshot_chunks(host.db.path, tables, ranges, host.snapshot_pacer() if ranges else None)
        try:
            try:
                first = await anext(chunks)
            except SnapshotFailed as exc:
                raise ApiError(503, "store_unavailable", f"snapshot failed: {exc}") from None
            resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await resp.prepare(request)
            try:
                await resp.write(first)
                async for chunk in chunks:
                    await resp.write(chunk)
            except SnapshotFailed:
                pass  # the stream ends without its end line: the client knows it is incomplete
            except ConnectionResetError:
                return resp  # the client hung up; closing `chunks` ends the read transaction
            await resp.write_eof()
            return resp
        finally:
            await chunks.aclose()

    return snapshot


def status(conn: sqlite3.Connection) -> dict[str, Any]:
    """The `GET /v1/status` body: the log's bounds and bytes, the block count and every consumer slot."""
    conn.execute("BEGIN")
    try:
        body = list_consumers(conn)
        first = changelog.first_lsn(conn)
        body |= {"firstLsn": first, "blocks": block_count(conn),
                 "changeLog": {"entries": 0 if first == 0 else body["lastLsn"] - first + 1,
                               "frameBytes": changelog.frame_bytes(conn),
                               "framesFrom": changelog.frames_from(conn)}}
    finally:
        conn.execute("COMMIT")
    return body


def status_handler(host_of: Callable[[web.Request], StreamHost]) -> Callable[[web.Request], Any]:
    """GET /v1/status."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(await host_of(request).db.read(status))

    return handler


def routes(host_of: Callable[[web.Request], StreamHost]) -> list[Route]:
    """The change-stream routes (all REPLICATION: the pods', the operator's and listed replicas')."""
    slot = consumer_handlers(host_of)
    return [Route("GET", "/v1/changes", changes_handler(host_of), Access.REPLICATION),
            Route("GET", "/v1/consumers", slot["get_all"], Access.REPLICATION),
            Route("PUT", "/v1/consumers/{name}", slot["put"], Access.REPLICATION),
            Route("GET", "/v1/consumers/{name}", slot["get_one"], Access.REPLICATION),
            Route("DELETE", "/v1/consumers/{name}", slot["delete"], Access.REPLICATION),
            Route("POST", "/v1/consumers/{name}/ack", slot["ack"], Access.REPLICATION),
            Route("GET", "/v1/snapshot", snapshot_handler(host_of), Access.REPLICATION),
            Route("GET", "/v1/status", status_handler(host_of), Access.REPLICATION)]


class ConsumerMetrics:
    """chronoshard_node_consumer_{lag_lsn,lag_seconds,behind}{consumer}, set from the slots before a scrape."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lag_lsn = Gauge("chronoshard_node_consumer_lag_lsn", "Change-log entries a consumer has not acked",
                             ["consumer"], registry=registry)
        self.lag_seconds = Gauge("chronoshard_node_consumer_lag_seconds",
                                 "Age of the oldest change a consumer has not acked", ["consumer"], registry=registry)
        self.behind = Gauge("chronoshard_node_consumer_behind",
                            "1 if retention trimmed past the consumer's ack (it must re-seed)", ["consumer"],
                            registry=registry)

    def observe(self, slots: list[dict[str, Any]]) -> None:
        """Replace the series with the current slots (a dropped slot's series disappear)."""
        for g in (self.lag_lsn, self.lag_seconds, self.behind):
            g.clear()
        for s in slots:
            self.lag_lsn.labels(s["name"]).set(s["lagLsn"])
            self.lag_seconds.labels(s["name"]).set(s["lagSeconds"])
            self.behind.labels(s["name"]).set(1 if s["state"] == consumers.BEHIND else 0)
