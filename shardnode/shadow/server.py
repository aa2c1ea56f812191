"""The shadow's HTTP API (aiohttp app factory): time travel over the history, reversions, status, keys, rewrap.

Every store call runs in the process's reader pool (``ShadowConfig.reader_threads``), never on the event loop: a
time-travel read may open and decompress many versions. Values travel base64 in JSON.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from chronoshard.shardnode.auth.policy import Access
from chronoshard.shardnode.auth.writer import writer_identity
from chronoshard.shardnode.keys.crypto import IntegrityError
from chronoshard.shardnode.keys.keyring import KeyringWatcher, MissingKeyVersion
from chronoshard.shardnode.keys.provider import EmbeddedKeyProvider, KeyCache
from chronoshard.shardnode.keyspace.partitioning import KEYSPACE_MAX, KEYSPACE_MIN
from chronoshard.shardnode.serving import keywait, tls
from chronoshard.shardnode.serving.changestream import ChangeStreamClient
from chronoshard.shardnode.serving.http_common import ApiError, json_body, key_param, table_param
from chronoshard.shardnode.serving.scaffold import TABLE_PATH, Probes, Route, create_server_app
from chronoshard.shardnode.serving.settings_watch import SettingsWatcher

from . import query
from .anomaly_api import AnomalyRoutes
from .anomalystore import AnomalyStore
from .capture import Capture
from .codec import Compressor
from .config import ShadowConfig
from .detection import Detection
from .dictionaries import DictionaryTrainer
from .executor import Reversions
from .history import HistoryStore
from .historydb import DB_NAME
from .maintenance import Maintenance
from .metrics import ShadowMetrics
from .observations import PrevVersion, prev_version
from .plans import PlanStore
from .reversion import parse_plan_request
from .rewrapper import RewrapRunner
from .timetravel import Version

log = logging.getLogger(__name__)

T = TypeVar("T")
DETECT_SECONDS = 1.0
KEY_COUNT_SECONDS = 600.0


class Shadow:
    """State shared by the handlers of one shadow process."""

    def __init__(self, cfg: ShadowConfig) -> None:
        self.cfg = cfg
        self.metrics = ShadowMetrics()
        self.key_cache = (KeyCache(EmbeddedKeyProvider(cfg.kek_dir, cfg.keyring_dir), cfg.key_cache_size)
                          if cfg.kek_dir is not None else None)
        self.metrics.watch_key_cache(lambda: self.key_cache.stats() if self.key_cache is not None else None)
        self.keys = KeyringWatcher(cfg.keyring_dir, on_reload=self.metrics.keyring.observe,
                                   table_keys=self.key_cache, kek_dir=cfg.kek_dir)
        # A file that parses as JSON but not as shadow.json is a failed load too (cfg.apply keeps the old settings).
        self.settings = SettingsWatcher(cfg.settings_path, cfg.apply,
                                        lambda error: self.metrics.settings.observe(error or cfg.settings_error))
        self.pool = ThreadPoolExecutor(cfg.reader_threads, thread_name_prefix="shadow-read")
        # The capture and the housekeeping write the history here; stop waits for them before closing it.
        self.write_pool = ThreadPoolExecutor(2, thread_name_prefix="shadow-write")
        self.history: HistoryStore | None = None
        self.plans: PlanStore | None = None
        self.session: aiohttp.ClientSession | None = None
        self.capture: Capture | None = None
        self.reversions: Reversions | None = None
        self.rewrap: RewrapRunner | None = None
        self.maintenance: Maintenance | None = None
        self.anomalies: AnomalyStore | None = None
        self.detection: Detection | None = None
        # Closing windows and retraining run here, one at a time, beside (never in) the capture's writes.
        self.detect_pool = ThreadPoolExecutor(1, thread_name_prefix="shadow-detect")
        self._key_counts: dict[str, tuple[float, int]] = {}
        self._tasks: list[asyncio.Task[Any]] = []

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self, app: web.Application) -> None:
        """Load the keyring, open the history and the plans, resume runs, start the capture and the watchers."""
        await asyncio.to_thread(self.keys.poll)
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.cfg.data_dir / DB_NAME
        compression = self.cfg.settings.compression
        compressor = Compressor(level=compression.level, codec=compression.codec)
        # Not enabled yet, whatever compression.dictionary says: a trained dictionary holds fragments of the
        # plaintext, and it is stored (and exported) unsealed. It must first be sealed under the table keys and
        # rewrapped with them (docs/shadow-store.md, "Dictionaries").
        trainer = DictionaryTrainer(False)
        self.history = await asyncio.to_thread(HistoryStore, path, lambda: self.keys.keyring, compressor, trainer)
        self.plans = await asyncio.to_thread(PlanStore, path)
        self.anomalies = await asyncio.to_thread(AnomalyStore, path)
        self.detection = Detection(self.anomalies, lambda: self.cfg.settings.anomaly, current=self._current,
                                   table_keys=self._table_keys)
        self.history.add_observer(self.detection.observe)
        await asyncio.to_thread(self.detection.replay, self.history.observations_after)
        self.session = aiohttp.ClientSession(connector=tls.connector(app, limit=64))
        hostname = tls.internal_hostname(self.cfg.node_url)
        stream = ChangeStreamClient(self.cfg.node_url, self.session, server_hostname=hostname)
        plans = self.plans
        self.capture = Capture(self.cfg, self.history, stream, self.metrics, on_applied=[
            lambda changes: plans.note_writes((c.table, c.key, c.lsn) for c in changes)], executor=self.write_pool)
        self.reversions = Reversions(self.history, self.plans, stream, self.capture, self.session, self.cfg.node_url,
                                     self.pool, self.metrics, server_hostname=hostname,
                                     max_blocks=lambda: self.cfg.settings.reversion.max_blocks,
                                     anomalies=self.anomalies,
                                     shard_index=(self.cfg.partitioning.shard_index
                                                  if self.cfg.partitioning is not None else None),
                                     partition_ranges=self._partition_ranges)
        self.rewrap = RewrapRunner(self.history, lambda: self.keys.keyring)
        self.maintenance = Maintenance(self.cfg, self.history, executor=self.write_pool)
        self._tasks += [asyncio.create_task(self.keys.run(self.cfg.keyring_poll_seconds), name="keyring-watch"),
                        asyncio.create_task(self.settings.run(self.cfg.keyring_poll_seconds), name="settings"),
                        asyncio.create_task(self.capture.run(), name="capture"),
                        asyncio.create_task(self.maintenance.run(), name="maintenance"),
                        asyncio.create_task(self._detect(), name="anomaly-detection")]
        await self.reversions.resume()
        if self.keys.keyring is not None and self.rewrap is not None:
            await self.rewrap.resume_if_running()

    async def shutting_down(self, app: web.Application) -> None:
        """Nothing long-polls the shadow; the capture's own long poll ends with the task in ``stop``."""

    async def stop(self, app: web.Application) -> None:
        """Stop the capture, runs and watchers, then close the stores (their progress is already persisted)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.reversions is not None:
            await self.reversions.stop()
        if self.rewrap is not None:
            await self.rewrap.stop()
        if self.session is not None:
            await self.session.close()
        for pool in (self.pool, self.write_pool, self.detect_pool):  # what runs there ends before the stores close
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
        if self.plans is not None:
            await asyncio.to_thread(self.plans.close)
        if self.anomalies is not None:
            await asyncio.to_thread(self.anomalies.close)
        if self.history is not None:
            await asyncio.to_thread(self.history.close)

    async def _detect(self) -> None:
        """Close complete windows about every second; retrain in the same thread when windows have accumulated."""
        assert self.detection is not None and self.capture is not None
        loop = asyncio.get_running_loop()
        detection, capture = self.detection, self.capture
        while True:
            await asyncio.sleep(DETECT_SECONDS)
            caught_up = capture.state == "running" and capture.node_last_lsn <= capture.position
            try:
                incidents = await loop.run_in_executor(self.detect_pool, detection.close_due, caught_up,
                                                       capture.position)
                for body in incidents:
                    self.metrics.note_incident(body)
                await loop.run_in_executor(self.detect_pool, detection.retrain)
            except Exception:  # a detection fault must never stop the capture: logged, retried next pass
                log.exception("anomaly detection pass failed")

    def _table_keys(self, table: str) -> int:
        """The table's keys for an incident's severity, counted at most every ``KEY_COUNT_SECONDS``."""
        now = time.monotonic()
        known = self._key_counts.get(table)
        if known is None or now - known[0] > KEY_COUNT_SECONDS:
            known = self._key_counts[table] = (now, self.store.key_count(table))
        return known[1]

    def _partition_ranges(self, partition: int) -> list[tuple[int, int]] | None:
        """A partition's ranges under the map in force; without a map, partition 0 is the whole keyspace."""
        if self.cfg.partitioning is None:
            return [(KEYSPACE_MIN, KEYSPACE_MAX)] if partition == 0 else None
        pmap = self.cfg.partitioning.source.map
        found = [(p.start, p.end) for p in (pmap.partitions if pmap is not None else ()) if p.id == partition]
        return found or None

    def _current(self, table: str, key: str) -> PrevVersion | None:
        """The key's current version as the what-if compares against (None: absent)."""
        v = self.store.value_at(table, key, values=False)
        return None if v is None else prev_version(v.lsn, v.op, v.size, v.profile)

    def readiness(self) -> dict[str, Any]:
        """The ``/readyz`` body: ready once the history is open and a keyring is loaded."""
        ready = self.history is not None and self.keys.keyring is not None
        return {"ready": ready, "keyring": self.keys.keyring is not None, "history": self.history is not None}

    async def refresh_gauges(self) -> None:
        """Before a scrape: tier sizes, the compression ratio and versions per key version."""
        if self.history is None:
            return
        stats = await self.read(self.history.stats)
        counts = await self.read(self.history.version_counts)
        for tier, st in stats.get("tiers", {}).items():
            self.metrics.tier_bytes.labels(tier).set(st.get("storedBytes", 0))
            self.metrics.tier_versions.labels(tier).set(st.get("versions", 0))
        self.metrics.compression_ratio.set(stats.get("compressionRatio") or 0)
        self.metrics.versions.clear()
        for v, n in counts.items():
            self.metrics.versions.labels(str(v)).set(n)
        if self.detection is not None:
            for table, state in self.detection.describe()["detector"]["tables"].items():
                if state["lastScore"] is not None:
                    self.metrics.window_score.labels(table).set(state["lastScore"])

    # ---- helpers -----------------------------------------------------------------------------
    async def read(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run a store call in the reader pool; a frame that cannot be opened is a JSON error, never plaintext."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.pool, lambda: fn(*args, **kw))
        except MissingKeyVersion as exc:
            raise ApiError(503, "key_version_missing", str(exc), keyVersion=exc.version) from None
        except IntegrityError as exc:
            log.error("history integrity failure (%s)", exc.reason)
            raise ApiError(500, "integrity_error", f"a history version failed verification: {exc}",
                           reason=exc.reason) from None

    @property
    def store(self) -> HistoryStore:
        """The open history (503 before start-up finished)."""
        if self.history is None:
            raise ApiError(503, "not_ready", "the history is not open yet")
        return self.history

    @property
    def runs(self) -> Reversions:
        """The reversions (503 before start-up finished)."""
        if self.reversions is None:
            raise ApiError(503, "not_ready", "the history is not open yet")
        return self.reversions

    @property
    def detector(self) -> Detection:
        """The anomaly detection (503 before start-up finished)."""
        if self.detection is None:
            raise ApiError(503, "not_ready", "the history is not open yet")
        return self.detection

    @property
    def anomaly_store(self) -> AnomalyStore:
        """The stored windows, incidents and models (503 before start-up finished)."""
        if self.anomalies is None:
            raise ApiError(503, "not_ready", "the history is not open yet")
        return self.anomalies

    @property
    def rewrapper(self) -> RewrapRunner:
        """The history's rewrap runner (503 before start-up finished)."""
        if self.rewrap is None:
            raise ApiError(503, "not_ready", "the history is not open yet")
        return self.rewrap


SHADOW = web.AppKey("chronoshard_shadow", Shadow)


def shadow_of(request: web.Request) -> Shadow:
    """The Shadow behind this app."""
    return request.app[SHADOW]


def b64(value: bytes | None) -> str | None:
    """A value as JSON carries it."""
    return None if value is None else base64.b64encode(value).decode()


def version_json(v: Version) -> dict[str, Any]:
    """One version in a history answer."""
    return {"lsn": v.lsn, "time": v.time, "op": v.op, "size": v.size, "keyVersion": v.key_version,
            "value": b64(v.value), "exact": v.exact, "identity": v.identity, "origin": v.origin}


# ---- time travel -----------------------------------------------------------------------------------
async def history(request: web.Request) -> web.Response:
    """GET /v1/tables/{table}/history/{key}?after=&limit=: a key's versions oldest first, paginated by LSN."""
    sh = shadow_of(request)
    table, key = table_param(request), key_param(request)
    after, limit = query.after_lsn(request), query.limit(request)
    versions = await sh.read(sh.store.history, table, key, after_lsn=after, limit=limit)
    return web.json_response({"versions": [version_json(v) for v in versions],
                              "next": versions[-1].lsn if len(versions) == limit else None})


async def at(request: web.Request) -> web.Response:
    """GET /v1/tables/{table}/at/{key}?time=|lsn=: the key's value at that point; 404 if absent then."""
    sh = shadow_of(request)
    table, key = table_param(request), key_param(request)
    point = query.point(request)
    v = await sh.read(sh.store.value_at, table, key, lsn=point.lsn, time=point.time)
    if v is None:
        moved = await sh.read(sh.store.moved_away_at, table, key, lsn=point.lsn, time=point.time)
        if moved is not None:  # not deleted: a reshard moved it to another shard (docs/resharding.md)
            raise ApiError(404, "moved_away", f"{table}/{key} was moved to another shard at LSN {moved}; its "
                           "history before that stays here", lsn=moved)
    if v is None or v.deleted:
        raise ApiError(404, "not_found", f"no block {table}/{key} at that point")
    return web.json_response({"key": key, "lsn": v.lsn, "time": v.time, "op": v.op, "size": v.size,
                              "keyVersion": v.key_version, "value": b64(v.value), "exact": v.exact,
                              "identity": v.identity})


async def state(request: web.Request) -> web.Response:
    """GET /v1/tables/{table}/state?time=|lsn=&start=&end=&after=&limit=&values=: live keys at a point."""
    sh = shadow_of(request)
    table = table_param(request)
    point = query.point(request, required=False)
    start, end, after = (query.key_query(request, n) for n in ("start", "end", "after"))
    limit, values = query.limit(request), query.values_flag(request, False)
    # Resolved once, so the LSN answered is the one every page of a listing can be read at (pass it as lsn=).
    resolved = await sh.read(sh.store.resolve, lsn=point.lsn, time=point.time)
    versions = await sh.read(sh.store.state_at, table, lsn=resolved.lsn, start=start, end=end, after=after,
                             limit=limit, values=values)
    entries = []
    for v in versions:
        entry: dict[str, Any] = {"key": v.key, "lsn": v.lsn, "time": v.time, "size": v.size,
                                 "keyVersion": v.key_version}
        if values:
            entry["value"] = b64(v.value)
        entries.append(entry)
    return web.json_response({"lsn": resolved.lsn, "entries": entries, "exact": resolved.exact,
                              "next": versions[-1].key if len(versions) == limit else None})


async def diff(request: web.Request) -> web.Response:
    """GET /v1/tables/{table}/diff?from=&to=|fromLsn=&toLsn=&after=&limit=: keys created, changed, deleted."""
    sh = shadow_of(request)
    table = table_param(request)
    a = query.point(request, "from", "fromLsn")
    b = query.point(request, "to", "toLsn", required=False)
    after, limit = query.key_query(request, "after"), query.limit(request)
    try:
        entries = await sh.read(sh.store.diff, table, from_lsn=a.lsn, from_time=a.time, to_lsn=b.lsn,
                                to_time=b.time, after=after, limit=limit)
    except ValueError as exc:  # the from point is after the to point
        raise ApiError(400, "invalid_parameter", str(exc)) from None
    return web.json_response({"entries": [{"key": e.key, "change": e.change, "sizeBefore": e.size_before,
                                           "sizeAfter": e.size_after, "lsnBefore": e.lsn_before,
                                           "lsnAfter": e.lsn_after} for e in entries],
                              "next": entries[-1].key if len(entries) == limit else None})


# ---- reversions ------------------------------------------------------------------------------------
def name_param(request: web.Request) -> str:
    """The validated {name} of a reversion."""
    from .reversion import NAME_RE
    name = request.match_info["name"]
    if not NAME_RE.fullmatch(name):
        raise ApiError(400, "invalid_name", "name must match [A-Za-z0-9][A-Za-z0-9_.-]{0,252}")
    return name


async def create_reversion(request: web.Request) -> web.Response:
    """POST /v1/reversions: plan a reversion (or return the stored plan of the same request)."""
    sh = shadow_of(request)
    req = parse_plan_request(await json_body(request))
    tables = list(req.tables) if req.tables is not None else await sh.read(sh.store.tables)
    body, created = await sh.runs.plan(req, tables)
    return web.json_response(body, status=201 if created else 200)


async def get_reversion(request: web.Request) -> web.Response:
    """GET /v1/reversions/{name}: the plan and its progress."""
    return web.json_response(await shadow_of(request).runs.describe(name_param(request)))


async def run_reversion(request: web.Request) -> web.Response:
    """POST /v1/reversions/{name}/run {"digest"}: carry the plan out if the digest is the plan's."""
    doc = await json_body(request)
    if set(doc) != {"digest"} or not isinstance(doc["digest"], str):
        raise ApiError(400, "invalid_body", 'the body must be {"digest": "<the plan\'s digest>"}')
    body = await shadow_of(request).runs.run(name_param(request), doc["digest"])
    return web.json_response(body, status=202)


async def delete_reversion(request: web.Request) -> web.Response:
    """DELETE /v1/reversions/{name}: stop a run and forget the plan."""
    name = name_param(request)
    await shadow_of(request).runs.delete(name)
    return web.json_response({"name": name, "deleted": True})


# ---- status, keys, rewrap --------------------------------------------------------------------------
async def status(request: web.Request) -> web.Response:
    """GET /v1/status: capture, tiers, compression, oldest restorable time, settings and keyring state."""
    sh = shadow_of(request)
    stats = await sh.read(sh.store.stats)
    for tier in stats.get("tiers", {}).values():
        tier.setdefault("bytes", tier.get("storedBytes"))  # the name the ShadowPolicy controller reads
    capture = sh.capture.status() if sh.capture is not None else {"state": "starting"}
    return web.json_response({"capture": capture, "lagLsn": capture.get("lagLsn"),
                              "lagSeconds": capture.get("lagSeconds"), **stats,
                              "configError": sh.cfg.settings_error or sh.settings.error,
                              "maintenance": sh.maintenance.status() if sh.maintenance is not None else None,
                              "keyring": {"generation": sh.keys.describe()["generation"],
                                          "loadError": sh.keys.load_error}})


async def keys(request: web.Request) -> web.Response:
    """GET /v1/keys: loaded versions (no key material) and history versions per key version; long-polls like
    the node's (serving/keywait.py)."""
    sh = shadow_of(request)
    ring = sh.keys

    def gone() -> bool:
        return request.transport is None or request.transport.is_closing()

    await keywait.wait(keywait.parse(request), lambda: ring.keyring.generation if ring.keyring else None,
                       lambda: sh.rewrap is not None and sh.rewrap.running, gone)
    body = sh.keys.describe()
    counts = await sh.read(sh.store.version_counts)
    body["blocks"] = {str(v): n for v, n in sorted(counts.items())}
    return web.json_response(body)


async def rewrap_start(request: web.Request) -> web.Response:
    """POST /v1/rewrap {"batchSize"?, "pauseSeconds"?}: re-seal every history version onto the primary."""
    sh = shadow_of(request)
    doc = await json_body(request, required=False)
    unknown = set(doc) - {"batchSize", "pauseSeconds"}
    if unknown:
        raise ApiError(400, "invalid_body", f"unknown fields: {sorted(unknown)}")
    batch = doc.get("batchSize", 128)
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= 10000:
        raise ApiError(400, "invalid_body", "batchSize must be an integer between 1 and 10000")
    pause = doc.get("pauseSeconds")
    if pause is not None and (not isinstance(pause, int | float) or isinstance(pause, bool) or not 0 <= pause <= 60):
        raise ApiError(400, "invalid_body", "pauseSeconds must be a number between 0 and 60")
    if sh.keys.keyring is None:
        raise ApiError(503, "no_keyring", "no keyring is loaded")
    await sh.rewrapper.start(batch, None if pause is None else float(pause))
    return web.json_response(await sh.read(sh.rewrapper.progress), status=202)


async def rewrap_status(request: web.Request) -> web.Response:
    """GET /v1/rewrap: persisted progress plus per-version counts (the node's shape)."""
    sh = shadow_of(request)
    return web.json_response(await sh.read(sh.rewrapper.progress))


def routes() -> list[Route]:
    """The shadow's own routes (the scaffold adds the probes, metrics, openapi and partitions)."""
    return [Route("GET", TABLE_PATH + "/history/{key}", history, Access.DATA_GET),
            Route("GET", TABLE_PATH + "/at/{key}", at, Access.DATA_GET),
            Route("GET", TABLE_PATH + "/state", state, Access.DATA_LIST),
            Route("GET", TABLE_PATH + "/diff", diff, Access.DATA_LIST),
            Route("POST", "/v1/reversions", create_reversion, Access.ADMIN),
            Route("GET", "/v1/reversions/{name}", get_reversion, Access.ADMIN),
            Route("POST", "/v1/reversions/{name}/run", run_reversion, Access.ADMIN),
            Route("DELETE", "/v1/reversions/{name}", delete_reversion, Access.ADMIN),
            Route("GET", "/v1/status", status, Access.ADMIN),
            Route("GET", "/v1/keys", keys, Access.ADMIN),
            Route("POST", "/v1/rewrap", rewrap_start, Access.ADMIN),
            Route("GET", "/v1/rewrap", rewrap_status, Access.ADMIN)]


def create_app(cfg: ShadowConfig) -> web.Application:
    """Build the shadow application (the history opens on startup, closes on cleanup)."""
    sh = Shadow(cfg)
    probes = Probes(sh.metrics.registry, sh.readiness, sh.refresh_gauges)
    anomaly = AnomalyRoutes(shadow_of, cfg.partitioning, writer_identity)
    return create_server_app(sh, probes, [*routes(), *anomaly.routes()], key=SHADOW, requests=sh.metrics.requests,
                             openapi="shadow", partitioning=cfg.partitioning, pushed_maps=False)


__all__ = ["SHADOW", "Shadow", "ShadowConfig", "create_app"]
