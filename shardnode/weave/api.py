"""The weaver's routes (docs/weaving.md, "REST API"): status, partition history, woven snapshots and their state,
keys and rewrap. Every store call runs in the reader pool, never on the event loop."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from aiohttp import web
from chronoshard.shardnode.auth.policy import Access
from chronoshard.shardnode.forecasting.types import Interval, SplitForecast
from chronoshard.shardnode.keys.keyring import KeyringWatcher
from chronoshard.shardnode.keyspace.partitioning import format_id
from chronoshard.shardnode.serving import keywait
from chronoshard.shardnode.serving.http_common import TABLE_RE, ApiError, float_query, int_query, json_body
from chronoshard.shardnode.serving.scaffold import Route

from .pages import Row
from .runner import Runner
from .sampler import growth_per_hour, load_rps
from .store import ACTIVE, Point, Weave, WeaveStore

T = TypeVar("T")
MAX_LIMIT = 1000


class WeaverState(Protocol):
    """What the handlers need of the weaver process."""

    runner: Runner
    keys: KeyringWatcher

    @property
    def store(self) -> WeaveStore:
        """The open woven store (503 before start-up finished)."""

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call in the reader pool."""

    def open_value(self, row: Row) -> bytes:
        """The plaintext of a woven row (blocking)."""


WEAVER: web.AppKey[Any] = web.AppKey("chronoshard_weaver")


def weaver_of(request: web.Request) -> WeaverState:
    """The weaver behind this app."""
    return request.app[WEAVER]


def _interval(i: Interval) -> dict[str, float]:
    return {"low": i.low, "point": i.point, "high": i.high}


def forecast_json(fc: SplitForecast) -> dict[str, Any]:
    """A forecast as the status reports it."""
    return {"probability": fc.probability, "predictedTime": fc.predicted_time, "reason": fc.reason,
            "model": fc.model, "samples": fc.samples, "sizeAtWindowEnd": _interval(fc.size_at_window_end),
            "loadAtWindowEnd": _interval(fc.load_at_window_end), "explanation": fc.explanation}


def weave_json(w: Weave, points: list[Point]) -> dict[str, Any]:
    """A weave as the status reports it."""
    mine = [p for p in points if p.weave == w.id]
    first = min(mine, key=lambda p: p.point_time) if mine else None
    return {"id": w.id, "partition": w.partition, "splitKey": format_id(w.split_key),
            "lower": [format_id(w.lower[0]), format_id(w.lower[1])],
            "upper": [format_id(w.upper[0]), format_id(w.upper[1])], "confidence": w.confidence,
            "predictedTime": w.predicted_time, "window": w.window_seconds, "created": w.created, "state": w.state,
            "snapshots": len({p.point_time for p in mine}), "sourceSnapshot": first.source_snapshot if first else None,
            "sourceLsn": first.lsn if first else None, "bytes": sum(p.bytes for p in mine)}


def point_json(p: Point, w: Weave | None) -> dict[str, Any]:
    """A woven snapshot's metadata."""
    rng = None if w is None else w.range_of(p.half)
    return {"id": p.id, "weave": p.weave, "half": p.half, "pointTime": p.point_time, "lsn": p.lsn, "kind": p.kind,
            "base": p.base, "sourceSnapshot": p.source_snapshot, "rows": p.rows, "bytes": p.bytes,
            "partition": None if w is None else w.partition,
            "range": None if rng is None else [format_id(rng[0]), format_id(rng[1])],
            "splitKey": None if w is None else format_id(w.split_key),
            "confidence": None if w is None else w.confidence,
            "predictedTime": None if w is None else w.predicted_time}


def _status_body(wv: WeaverState, partitions: list[dict[str, Any]], weaves: list[Weave],
                 points: list[Point]) -> dict[str, Any]:
    r = wv.runner
    return {"plan": r.cfg.settings.plan, "mode": r.cfg.settings.mode, "partitions": partitions,
            "weaves": [weave_json(w, points) for w in weaves], "lastSampleTime": r.last_sample_time,
            "lastForecastTime": r.last_forecast_time, "lastWeaveTime": r.last_weave_time,
            "shadow": r.shadow_present(), "errors": list(r.errors),
            "configError": r.cfg.settings_error, "passes": r.passes}


async def status(request: web.Request) -> web.Response:
    """GET /v1/status: partitions (size, load, growth, forecast), weaves, pass times, errors."""
    wv = weaver_of(request)
    r = wv.runner
    parts = []
    for p in (r.stats or {}).get("partitions", []):
        pid = int(p["id"])
        rows = await wv.read(wv.store.samples, pid, 0.0, 64)
        fc = r.forecasts.get(pid)
        parts.append({"id": pid, "ranges": p.get("ranges"), "bytes": p["bytes"], "blocks": p["blocks"],
                      "loadRps": load_rps(rows), "growthBytesPerHour": growth_per_hour(rows), "samples": len(rows),
                      "forecast": None if fc is None else forecast_json(fc)})
    parts.sort(key=lambda x: -(x["forecast"] or {}).get("probability", 0.0))
    weaves = await wv.read(wv.store.weaves, ACTIVE)
    points = await wv.read(wv.store.points)
    return web.json_response(_status_body(wv, parts, weaves, points))


async def partition_history(request: web.Request) -> web.Response:
    """GET /v1/partitions/{id}/history?since=&limit=: the partition's samples, oldest first."""
    wv = weaver_of(request)
    try:
        pid = int(request.match_info["id"])
    except ValueError:
        raise ApiError(400, "invalid_parameter", "partition id must be an integer") from None
    since = float_query(request, "since", 0.0, 0.0, 1e12)
    limit = int_query(request, "limit", 1000, 1, 10000)
    rows = await wv.read(wv.store.samples, pid, since, limit)
    return web.json_response({"partition": pid, "samples": [
        {"time": t, "bytes": b, "blocks": n, "writes": w, "reads": rd} for t, b, n, w, rd in rows]})


def select_points(points: list[Point], weaves: dict[str, Weave], partition: int | None, timepoint: float | None,
                  threshold: float) -> list[Point]:
    """The newest point per (weave, half) at or before ``timepoint`` of weaves with confidence ≥ ``threshold``
    whose partition is ``partition`` (the one forecast to split; its lower half keeps that id)."""
    best: dict[tuple[str, str], Point] = {}
    for p in points:
        w = weaves.get(p.weave)
        if w is None or w.confidence < threshold or (partition is not None and w.partition != partition):
            continue
        if timepoint is not None and p.point_time > timepoint:
            continue
        key = (p.weave, p.half)
        if key not in best or best[key].point_time < p.point_time:
            best[key] = p
    return sorted(best.values(), key=lambda p: (p.weave, p.half))


async def woven_list(request: web.Request) -> web.Response:
    """GET /v1/woven?partition=&timepoint=&confidenceThreshold=: matching woven snapshots (metadata)."""
    wv = weaver_of(request)
    partition = int_query(request, "partition", -1, -1, 2**31) if "partition" in request.query else None
    timepoint = float_query(request, "timepoint", math.inf, 0.0, math.inf) if "timepoint" in request.query else None
    threshold = float_query(request, "confidenceThreshold", 0.0, 0.0, 1.0)
    weaves = {w.id: w for w in await wv.read(wv.store.weaves, ACTIVE)}
    points = await wv.read(wv.store.points)
    chosen = select_points(points, weaves, partition, timepoint, threshold)
    return web.json_response({"woven": [point_json(p, weaves.get(p.weave)) for p in chosen]})


async def _point(request: web.Request) -> tuple[WeaverState, Point, Weave | None]:
    wv = weaver_of(request)
    try:
        pid = int(request.match_info["id"])
    except ValueError:
        raise ApiError(400, "invalid_parameter", "woven snapshot id must be an integer") from None
    p = await wv.read(wv.store.point, pid)
    if p is None:
        raise ApiError(404, "not_found", f"no woven snapshot {pid}")
    return wv, p, await wv.read(wv.store.weave, p.weave)


async def woven_one(request: web.Request) -> web.Response:
    """GET /v1/woven/{id}: one woven snapshot's metadata."""
    _, p, w = await _point(request)
    return web.json_response(point_json(p, w))


def _state_page(state: dict[tuple[str, str], Row], table: str | None, after: str | None, limit: int) -> list[Row]:
    rows = sorted((r for r in state.values() if table is None or r.tbl == table), key=lambda r: (r.tbl, r.key))
    if after is not None:
        rows = [r for r in rows if (r.key if table is not None else f"{r.tbl}/{r.key}") > after]
    return rows[:limit]


async def woven_state(request: web.Request) -> web.Response:
    """GET /v1/woven/{id}/state?table=&after=&limit=&values=: the half's keys at that point (base + differentials),
    with plaintext values when ``values=true``."""
    wv, p, _ = await _point(request)
    table = request.query.get("table")
    if table is not None and not TABLE_RE.fullmatch(table):
        raise ApiError(400, "invalid_parameter", "table is not a valid table name")
    values = request.query.get("values", "false")
    if values not in ("true", "false"):
        raise ApiError(400, "invalid_parameter", "values must be true or false")
    limit = int_query(request, "limit", 100, 1, MAX_LIMIT)
    state = await wv.read(wv.store.state, p.id)
    page = _state_page(state, table, request.query.get("after"), limit)
    entries = []
    for r in page:
        e: dict[str, Any] = {"table": r.tbl, "key": r.key, "lsn": r.lsn, "time": r.time, "op": r.op,
                             "keyVersion": r.key_version, "checksum": None if r.checksum is None else r.checksum.hex()}
        if values == "true":
            e["value"] = base64.b64encode(await wv.read(wv.open_value, r)).decode()
        entries.append(e)
    last = page[-1] if len(page) == limit else None
    nxt = None if last is None else (last.key if table is not None else f"{last.tbl}/{last.key}")
    return web.json_response({"id": p.id, "lsn": p.lsn, "pointTime": p.point_time, "entries": entries,
                              "next": nxt})


async def keys(request: web.Request) -> web.Response:
    """GET /v1/keys: loaded versions (no key material) and woven rows per key version; long-polls like the
    shadow's (a rewrap here finishes in its request: nothing to wait for)."""
    wv = weaver_of(request)
    ring = wv.keys

    def gone() -> bool:
        return request.transport is None or request.transport.is_closing()

    await keywait.wait(keywait.parse(request), lambda: ring.keyring.generation if ring.keyring else None,
                       lambda: False, gone)
    body = ring.describe()
    counts = await wv.read(wv.store.version_counts)
    body["blocks"] = {str(v): n for v, n in sorted(counts.items())}
    return web.json_response(body)


async def rewrap_start(request: web.Request) -> web.Response:
    """POST /v1/rewrap {"keep"?, "batchSize"?, "pauseSeconds"?}: drop the woven snapshots holding other key
    versions than ``keep`` (default: the primary); rebuilt from the rewrapped history at the next pass."""
    wv = weaver_of(request)
    doc = await json_body(request, required=False)
    unknown = set(doc) - {"keep", "batchSize", "pauseSeconds"}
    if unknown:
        raise ApiError(400, "invalid_body", f"unknown fields: {sorted(unknown)}")
    keep = doc.get("keep")
    if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 1):
        raise ApiError(400, "invalid_body", "keep must be a key version (a positive integer)")
    if keep is None:
        if wv.keys.keyring is None:
            raise ApiError(503, "no_keyring", "no keyring is loaded")
        keep = wv.keys.keyring.primary
    # On the weaver's own worker thread: a drop never interleaves with a point being built.
    body = await wv.runner.in_worker(wv.runner.rewrap, keep)
    return web.json_response(body, status=202)


async def rewrap_status(request: web.Request) -> web.Response:
    """GET /v1/rewrap: the last rewrap and woven rows per key version."""
    wv = weaver_of(request)
    return web.json_response(await wv.read(wv.runner.rewrap_progress))


def routes() -> list[Route]:
    """The weaver's own routes (the scaffold adds the probes, metrics, openapi and partitions)."""
    return [Route("GET", "/v1/status", status, Access.ADMIN),
            Route("GET", "/v1/partitions/{id}/history", partition_history, Access.ADMIN),
            # ADMIN, not the contract's DATA_LIST: the data verbs are reviewed per table and a woven snapshot spans
            # tables (a route without {table} gets no review, so DATA_LIST would be pods and operator only anyway).
            Route("GET", "/v1/woven", woven_list, Access.ADMIN),
            Route("GET", "/v1/woven/{id}", woven_one, Access.ADMIN),
            Route("GET", "/v1/woven/{id}/state", woven_state, Access.ADMIN),
            Route("GET", "/v1/keys", keys, Access.ADMIN),
            Route("POST", "/v1/rewrap", rewrap_start, Access.ADMIN),
            Route("GET", "/v1/rewrap", rewrap_status, Access.ADMIN)]
