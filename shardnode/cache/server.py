"""The cache's HTTP API: the node's block paths (read-through, write-through), prefetch hints, access log."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from chronoshard.shardnode.auth.policy import Access
from chronoshard.shardnode.auth.tiered import IDEMPOTENCY_HEADER, QUEUE_HEADER, must_queue
from chronoshard.shardnode.auth.writer import on_behalf_headers, request_identity
from chronoshard.shardnode.eviction import make_policy
from chronoshard.shardnode.keys.keyring import KeyringWatcher
from chronoshard.shardnode.keys.provider import (
    EmbeddedKeyProvider,
    FixedLatencyProvider,
    KeyCache,
    KeyProvider,
    KeyUnavailable,
    key_cache_size_setting,
)
from chronoshard.shardnode.serving import keywait, tls
from chronoshard.shardnode.serving.deadlines import onward_headers
from chronoshard.shardnode.serving.http_common import (
    TABLE_RE,
    ApiError,
    bool_query,
    check_key,
    float_query,
    int_query,
    json_body,
    key_param,
    keys_list,
    read_block_body,
    table_param,
)
from chronoshard.shardnode.serving.metrics import CacheMetrics
from chronoshard.shardnode.serving.scaffold import (
    Partitioning,
    Probes,
    Route,
    block_routes,
    create_server_app,
    revocation_routes,
)
from chronoshard.shardnode.serving.settings_watch import SettingsWatcher
from prometheus_client import Counter

from .access_log import AccessLog
from .cache import BlockCache, DecryptError, NotFound
from .node_client import NodeClient, UpstreamError

log = logging.getLogger(__name__)

# Routing headers a client sends are passed on to the node with writes (see routing.py).
PASS_HEADERS = ("X-Chronoshard-Forwarded", "X-Chronoshard-Routed", IDEMPOTENCY_HEADER)
# Read-your-writes (docs/mirroring.md): the LSN a read needs, and how long the node may wait for it.
MIN_LSN_HEADER, WAIT_MS_HEADER = "X-Chronoshard-Min-Lsn", "X-Chronoshard-Wait-Ms"
MIN_TERM_HEADER = "X-Chronoshard-Min-Term"
MAX_LSN, MAX_WAIT_MS = 2**63 - 1, 10_000
MAX_HINTS = 1000
# Blocks one read-ahead range may add after its first (the predictor's ranges are at most 32 blocks in all).
MAX_READ_AHEAD = 31
HintT = TypeVar("HintT")
# A queued block hint or read-ahead range: (table, keys, scores), the first key the hinted block itself.
PrefetchHint = tuple[str, tuple[str, ...], tuple[float, ...]]


@dataclass
class CacheConfig:
    """Process settings (flags, then cache.json)."""

    node_url: str
    keyring_dir: Path
    budget_bytes: int = 256 << 20
    eviction: str = "scored"
    max_block_bytes: int = 4 << 20
    max_response_bytes: int = 64 << 20  # block bytes one batch answer may carry
    keyring_poll_seconds: float = 0.25  # a stat of the mounted directory: cheap, and a rotation waits on it
    access_log_size: int = 100_000
    prefetch_queue: int = 10_000
    prefetch_workers: int = 4
    prefetch_min_score: float = 0.0
    prefetch_budget_fraction: float = 0.5
    follow_changes: bool = True
    partitioning: Partitioning | None = None  # when --partition-map is given (with the peers to forward to)
    settings_path: str | None = None  # cache.json, re-applied when the mounted ConfigMap changes
    kek_dir: Path | None = None  # the mounted KEK Secret (kek.key); needed for wrapped key versions
    key_cache_size: int = 64  # unwrapped table keys held (wrapped versions only)
    unwrap_latency_s: float = 0.0  # added to every unwrap: models a KMS round trip in benchmarks
    key_prefetch_workers: int = 4  # background unwraps for key hints at once
    key_unwrap_threads: int = 16  # threads for key-cache misses and key prefetches (each may wait on a KMS)

    def apply(self, settings: dict[str, Any]) -> None:
        """Overlay settings from cache.json (unknown keys ignored; bad values logged and ignored)."""
        numeric = (("budgetBytes", "budget_bytes", int), ("maxBlockBytes", "max_block_bytes", int),
                   ("maxResponseBytes", "max_response_bytes", int),
                   ("keyringPollSeconds", "keyring_poll_seconds", float), ("accessLogSize", "access_log_size", int),
                   ("prefetchQueue", "prefetch_queue", int), ("prefetchWorkers", "prefetch_workers", int),
                   ("prefetchMinScore", "prefetch_min_score", float),
                   ("prefetchBudgetFraction", "prefetch_budget_fraction", float))
        for name, attr, typ in numeric:
            if name not in settings:
                continue
            v = settings[name]
            ok = isinstance(v, int | float) and not isinstance(v, bool) and (typ is float or isinstance(v, int))
            if ok and v >= 0:
                setattr(self, attr, typ(v))
            else:
                log.error("config %s=%r ignored", name, v)
        self.key_cache_size = key_cache_size_setting(settings, self.key_cache_size)
        for name in ("evictionPolicy", "eviction"):  # the operator writes evictionPolicy
            if name in settings:
                if settings[name] in ("lru", "scored"):
                    self.eviction = settings[name]
                else:
                    log.error("config %s=%r ignored: lru or scored", name, settings[name])
                break


class CacheApp:
    """State shared by the cache's handlers."""

    def __init__(self, cfg: CacheConfig) -> None:
        self.cfg = cfg
        self.metrics = CacheMetrics()
        self.key_cache: KeyCache | None = None
        if cfg.kek_dir is not None:
            provider: KeyProvider = EmbeddedKeyProvider(cfg.kek_dir, cfg.keyring_dir)
            if cfg.unwrap_latency_s > 0:
                provider = FixedLatencyProvider(provider, cfg.unwrap_latency_s)
            # One key cache for the process, kept across keyring reloads.
            self.key_cache = KeyCache(provider, cfg.key_cache_size, on_unwrap=self.metrics.observe_unwrap)
        self.metrics.watch_key_cache(lambda: self.key_cache.stats() if self.key_cache is not None else None)
        self.keys = KeyringWatcher(cfg.keyring_dir, on_reload=self.metrics.keyring.observe,
                                   table_keys=self.key_cache, kek_dir=cfg.kek_dir)
        # Its own threads: a slow KMS must not starve the default executor the keyring/settings watchers use.
        self.key_pool = ThreadPoolExecutor(cfg.key_unwrap_threads, thread_name_prefix="key-unwrap")
        self.key_hints: asyncio.Queue[tuple[str, float]] = asyncio.Queue(cfg.prefetch_queue)
        self.settings = SettingsWatcher(cfg.settings_path, self._apply_settings, self.metrics.settings.observe)
        self.log = AccessLog(cfg.access_log_size)
        self.closing = False
        self.session: aiohttp.ClientSession | None = None
        self.cache: BlockCache | None = None
        # One entry per hint: a block, or a read-ahead range (one node fetch either way, so one queue slot).
        self.hints: asyncio.Queue[PrefetchHint] = asyncio.Queue(cfg.prefetch_queue)
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self, app: web.Application) -> None:
        """Load the keyring, open the node session, start the watcher, prefetch workers and change tail."""
        await asyncio.to_thread(self.keys.poll)
        self.session = aiohttp.ClientSession(connector=tls.connector(app, limit=256))
        node = NodeClient(self.cfg.node_url, self.session, server_hostname=tls.internal_hostname(self.cfg.node_url))
        self.cache = BlockCache(self.cfg.budget_bytes, make_policy(self.cfg.eviction), lambda: self.keys.keyring,
                                node, self.metrics, self.cfg.prefetch_budget_fraction, key_pool=self.key_pool)
        self._tasks.append(asyncio.create_task(self.keys.run(self.cfg.keyring_poll_seconds)))
        self._tasks.append(asyncio.create_task(self.settings.run(self.cfg.keyring_poll_seconds)))
        for _ in range(self.cfg.prefetch_workers):
            self._tasks.append(asyncio.create_task(self._prefetch_worker()))
        for _ in range(self.cfg.key_prefetch_workers):
            self._tasks.append(asyncio.create_task(self._key_prefetch_worker()))
        if self.cfg.follow_changes:
            # Learn where the change log stands before serving, so nothing cached can predate the tail.
            try:
                start: int | None = int((await node.changes(0, 1, wait=0))["lastLsn"])
            except UpstreamError:
                start = None  # node not up yet: the tail finds its start later and drops what was cached
            self._tasks.append(asyncio.create_task(self.cache.follow_changes(after=start)))

    def _apply_settings(self, doc: dict[str, Any]) -> None:
        before = self.cfg.eviction
        self.cfg.apply(doc)
        if self.key_cache is not None:
            self.key_cache.resize(self.cfg.key_cache_size)
        if self.cache is not None:
            self.cache.resize(self.cfg.budget_bytes, self.cfg.prefetch_budget_fraction)
            if self.cfg.eviction != before:
                self.cache.replace_policy(make_policy(self.cfg.eviction))

    async def shutting_down(self, app: web.Application) -> None:
        """Release long-polling access-log readers so a graceful shutdown does not wait for them."""
        self.closing = True
        self.log.wake()

    async def stop(self, app: web.Application) -> None:
        """Cancel background tasks and close the session."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.key_pool.shutdown(wait=False, cancel_futures=True)
        if self.session:
            await self.session.close()

    async def _prefetch_worker(self) -> None:
        while True:
            table, keys, scores = await self.hints.get()
            try:
                if len(keys) == 1:
                    await self.bc.prefetch(table, keys[0], scores[0])
                else:
                    await self.bc.prefetch_range(table, list(keys), list(scores))
            except Exception:  # one bad hint must not kill the worker
                log.exception("prefetch of %s/%s failed", table, keys[0])

    async def _key_prefetch_worker(self) -> None:
        while True:
            table, score = await self.key_hints.get()
            try:
                await self.prefetch_key(table, score)
            except Exception:  # one bad hint must not kill the worker
                log.exception("key prefetch for table %s failed", table)

    async def prefetch_key(self, table: str, score: float) -> int:
        """Unwrap ``table``'s key for the primary and for the version its last read used; returns unwraps done."""
        ring, kc = self.keys.keyring, self.key_cache
        dropped = self.metrics.key_hints_dropped
        if ring is None or kc is None or not ring.wrapped:
            dropped.labels("not_wrapped").inc()
            return 0
        versions = {ring.primary}
        last = self.cache.last_version(table) if self.cache is not None else None
        if last is not None and ring.has(last):
            versions.add(last)
        wrapped = sorted(v for v in versions if v in ring.wrapped)
        if not wrapped:
            dropped.labels("not_wrapped").inc()
            return 0
        loop = asyncio.get_running_loop()
        done = 0
        for v in wrapped:
            if (table, v) in kc:
                dropped.labels("held").inc()
                continue
            try:
                if await loop.run_in_executor(self.key_pool, kc.prefetch, table, v, score):
                    done += 1
                else:
                    dropped.labels("held").inc()  # a read or another hint unwrapped it meanwhile
            except KeyUnavailable as exc:
                dropped.labels("unwrap_failed").inc()
                log.warning("key prefetch for table %s, version %s failed: %s", table, v, exc)
        return done

    @property
    def bc(self) -> BlockCache:
        """The block cache (503 before start-up finished)."""
        if self.cache is None:
            raise ApiError(503, "not_ready", "cache is starting")
        return self.cache

    def readiness(self) -> dict[str, Any]:
        """The `/readyz` body: ready once a keyring is loaded and the node session is open."""
        ready = self.cache is not None and self.keys.keyring is not None
        return {"ready": ready, "keyring": self.keys.keyring is not None}


CACHE = web.AppKey("chronoshard_cache", CacheApp)


def state(request: web.Request) -> CacheApp:
    """The CacheApp behind this app."""
    return request.app[CACHE]


def client_id(request: web.Request) -> str:
    """Who is reading: the X-Client-Id header, else the peer address."""
    return request.headers.get("X-Client-Id", "")[:128] or (request.remote or "unknown")


def upstream(exc: UpstreamError) -> web.Response:
    """Pass a node error through unchanged (status, JSON body and Retry-After: a 503 not_primary, fenced,
    lease_lost, mirror_lag or sync_timeout tells the client when to ask again)."""
    headers = {"Retry-After": exc.retry_after} if exc.retry_after else None
    return web.json_response(exc.body, status=exc.status, headers=headers)


def _lsn_header(request: web.Request, name: str, limit: int) -> str | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    raw = raw.strip()
    if len(raw) > 19 or not raw.isascii() or not raw.isdigit() or int(raw) > limit:
        raise ApiError(400, "invalid_header", f"{name} must be a whole number from 0 to {limit}")
    return str(int(raw))


def read_consistency(request: web.Request) -> tuple[int | None, dict[str, str]]:
    """A read's ``X-Chronoshard-Min-Lsn`` (None if absent) and the headers to send to the node with it
    (the Min-LSN and ``X-Chronoshard-Wait-Ms``); 400 if either is not a whole number in range."""
    min_lsn = _lsn_header(request, MIN_LSN_HEADER, MAX_LSN)
    wait = _lsn_header(request, WAIT_MS_HEADER, MAX_WAIT_MS)
    term = _lsn_header(request, MIN_TERM_HEADER, MAX_LSN)
    if min_lsn is None:
        return None, {}  # the wait only means something with a Min-LSN: the node waits for nothing else
    headers = {MIN_LSN_HEADER: min_lsn} | ({WAIT_MS_HEADER: wait} if wait is not None else {})
    if term is not None:
        # The cache cannot tell which term its node's LSNs belong to (a failover may have reused them): the node
        # decides, so memory answers nothing for this read.
        return MAX_LSN, headers | {MIN_TERM_HEADER: term}
    return int(min_lsn), headers


def decrypt_error(exc: DecryptError) -> ApiError:
    """A DecryptError as an API error."""
    return ApiError(exc.status, exc.code, exc.message, **exc.extra)


def routing_headers(request: web.Request) -> dict[str, str]:
    """Routing headers, what is left of the caller's deadline and who the write is for (the node sees the cache's
    pod identity, so it records the user named here: auth/writer.py), to pass on to the node."""
    return {h: request.headers[h] for h in PASS_HEADERS if h in request.headers} | onward_headers(request) | \
        on_behalf_headers(request)


async def get_block(request: web.Request) -> web.StreamResponse:
    """GET a block: from memory if cached, else fetched, decrypted, verified and cached."""
    st = state(request)
    table, key = table_param(request), key_param(request)
    min_lsn, consistency = read_consistency(request)
    try:
        value, hit = await st.bc.get(table, key, min_lsn, consistency)
    except NotFound:
        st.log.append(table, key, client_id(request), False, 0)
        raise ApiError(404, "not_found", f"no block {table}/{key}") from None
    except DecryptError as exc:
        raise decrypt_error(exc) from None
    except UpstreamError as exc:
        return upstream(exc)
    st.log.append(table, key, client_id(request), hit, len(value))
    return web.Response(body=value, content_type="application/octet-stream",
                        headers={"X-Chronoshard-Cache": "hit" if hit else "miss"})


async def queued_write(request: web.Request, owner: str, body: bytes | None) -> web.StreamResponse:
    """A write made with a temporary tiered token: passed to the owning node, which queues it (202); the cached
    copy is left alone (nothing is written yet)."""
    st = state(request)
    table, key = table_param(request), key_param(request)
    headers = {**routing_headers(request), QUEUE_HEADER: owner}
    if body is not None:
        headers["Content-Type"] = "application/octet-stream"
    try:
        status, answer, _ = await st.bc.node.request(request.method, st.bc.node.url("v1", "tables", table, "blocks",
                                                                                    key), data=body, headers=headers)
    except UpstreamError as exc:
        return upstream(exc)
    return web.Response(body=answer, status=status, content_type="application/json")


async def put_block(request: web.Request) -> web.StreamResponse:
    """PUT a block through to the node; the cached copy becomes the acknowledged value."""
    st = state(request)
    table, key = table_param(request), key_param(request)
    body = await read_block_body(request, st.cfg.max_block_bytes)
    owner = must_queue(request)
    if owner is not None:
        return await queued_write(request, owner, body)
    try:
        return web.json_response(await st.bc.put(table, key, body, routing_headers(request)))
    except UpstreamError as exc:
        return upstream(exc)


async def delete_block(request: web.Request) -> web.StreamResponse:
    """DELETE a block through to the node and drop the cached copy."""
    st = state(request)
    table, key = table_param(request), key_param(request)
    owner = must_queue(request)
    if owner is not None:
        return await queued_write(request, owner, None)
    try:
        return web.json_response(await st.bc.delete(table, key, routing_headers(request)))
    except UpstreamError as exc:
        return upstream(exc)


async def batch_get(request: web.Request) -> web.StreamResponse:
    """POST blocks:batchGet: hits from memory, misses in one node round trip."""
    st = state(request)
    table = table_param(request)
    keys = keys_list(await json_body(request))
    min_lsn, consistency = read_consistency(request)
    try:
        results = await st.bc.get_many(table, keys, min_lsn, consistency)
    except UpstreamError as exc:
        return upstream(exc)
    size = sum(len(v) for kind, v in results if kind in ("hit", "miss"))
    if size > st.cfg.max_response_bytes:
        raise ApiError(413, "too_large", f"answer would exceed {st.cfg.max_response_bytes} bytes of blocks; "
                       "ask for fewer keys")
    who = client_id(request)
    out: list[dict[str, Any]] = []
    for k, (kind, value) in zip(keys, results, strict=True):
        if kind in ("hit", "miss"):
            st.log.append(table, k, who, kind == "hit", len(value))
            out.append({"key": k, "found": True, "value": base64.b64encode(value).decode()})
        elif kind == "absent":
            st.log.append(table, k, who, False, 0)
            out.append({"key": k, "found": False})
        elif isinstance(value, DecryptError):
            out.append({"key": k, "found": True, "error": {"error": value.code, "message": value.message}})
        else:
            out.append({"key": k, "found": False, "error": value})
    return web.json_response({"blocks": out})


async def scan(request: web.Request) -> web.StreamResponse:
    """GET blocks (scan): passed through to the node."""
    st = state(request)
    table = table_param(request)
    int_query(request, "limit", 100, 1, 1000)
    bool_query(request, "values")
    after = request.query.get("after")
    if after is not None and len(after) > 1024:
        raise ApiError(400, "invalid_parameter", "after must be at most 1024 characters")
    try:
        status, body, _ = await st.bc.node.passthrough("GET", ["v1", "tables", table, "blocks"], request.query)
    except UpstreamError as exc:
        return upstream(exc)
    return web.Response(status=status, body=body, content_type="application/json")


def _hint_items(doc: dict[str, Any], field: str, what: str,
                check: Callable[[dict[str, Any]], Any] = lambda item: None) -> list[tuple[str, Any, float]]:
    """Validate a hint list as a whole (a bad item rejects the request, so nothing is queued):
    (table, ``check(item)``, score) per item; ``check`` validates a kind's own fields."""
    items = doc.get(field)
    if not isinstance(items, list) or len(items) > MAX_HINTS:
        raise ApiError(400, "invalid_body", f"{field} must be an array of at most {MAX_HINTS} objects")
    out: list[tuple[str, Any, float]] = []
    for item in items:
        if not isinstance(item, dict):
            raise ApiError(400, "invalid_body", f"each {what} must be an object")
        table, score = item.get("table"), item.get("score", 0.5)
        if not isinstance(table, str):
            raise ApiError(400, "invalid_table", f"{what} table must be a string")
        if not TABLE_RE.fullmatch(table):
            raise ApiError(400, "invalid_table", f"{what} table must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,127}}")
        extra = check(item)
        out.append((table, extra, _score(score, what)))
    return out


def enqueue(queue: asyncio.Queue[HintT], hints: list[HintT], dropped: Counter) -> int:
    """Queue hints without waiting; each that finds the queue full is counted as dropped (queue_full).
    Returns how many were queued."""
    queued = 0
    for hint in hints:
        try:
            queue.put_nowait(hint)
            queued += 1
        except asyncio.QueueFull:
            dropped.labels("queue_full").inc()
    return queued


def _score(value: Any, what: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or not 0 <= value <= 1:
        raise ApiError(400, "invalid_body", f"{what} score must be a number between 0 and 1")
    return float(value)


def _block_hint(item: dict[str, Any]) -> list[tuple[str, float]]:
    """A block hint's key, then its optional ``readAhead`` blocks (key, score), fetched with it in one request."""
    key = check_key(item.get("key"))
    extra = item.get("readAhead", [])
    if not isinstance(extra, list) or len(extra) > MAX_READ_AHEAD:
        raise ApiError(400, "invalid_body", f"readAhead must be an array of at most {MAX_READ_AHEAD} objects")
    blocks, seen = [(key, 0.0)], {key}
    for block in extra:
        if not isinstance(block, dict):
            raise ApiError(400, "invalid_body", "each readAhead block must be an object")
        k = check_key(block.get("key"))
        if k in seen:
            raise ApiError(400, "invalid_body", f"readAhead repeats the key {k!r}")
        seen.add(k)
        blocks.append((k, _score(block.get("score"), "readAhead")))
    return blocks


async def prefetch(request: web.Request) -> web.StreamResponse:
    """POST /v1/prefetch {"hints": [{"table", "key", "score", "readAhead"?: [{"key", "score"}]}]}: queue background
    fetches, one per hint (a block, or a range of a run's next blocks in one node request); never blocks."""
    st = state(request)
    parsed = _hint_items(await json_body(request), "hints", "hint", _block_hint)
    floor = st.cfg.prefetch_min_score
    wanted: list[PrefetchHint] = []
    for table, blocks, score in parsed:
        if score < floor:
            continue
        # Read-ahead blocks under the cache's own floor are left out of the range; the hint still goes.
        kept = [(blocks[0][0], score), *((k, s) for k, s in blocks[1:] if s >= floor)]
        wanted.append((table, tuple(k for k, _ in kept), tuple(s for _, s in kept)))
    if len(wanted) < len(parsed):
        st.metrics.prefetch_dropped.labels("threshold").inc(len(parsed) - len(wanted))
    queued = enqueue(st.hints, wanted, st.metrics.prefetch_dropped)
    return web.json_response({"queued": queued, "dropped": len(parsed) - queued}, status=202)


async def prefetch_keys(request: web.Request) -> web.StreamResponse:
    """POST /v1/prefetch/keys {"keys": [{"table", "score"}]}: queue background unwraps of tables' keys."""
    st = state(request)
    parsed = [(table, score) for table, _, score in _hint_items(await json_body(request), "keys", "key hint")]
    ring = st.keys.keyring
    if ring is None or not ring.wrapped:
        # Nothing to unwrap: raw versions' table keys are derived in microseconds on demand.
        if parsed:
            st.metrics.key_hints_dropped.labels("not_wrapped").inc(len(parsed))
        return web.json_response({"queued": 0, "dropped": len(parsed)}, status=202)
    queued = enqueue(st.key_hints, parsed, st.metrics.key_hints_dropped)
    return web.json_response({"queued": queued, "dropped": len(parsed) - queued}, status=202)


async def access_log(request: web.Request) -> web.StreamResponse:
    """GET /v1/access-log?after=&limit=&wait=: entries after a sequence number (oldest first), optionally
    long-polling up to ``wait`` seconds for the next one (so the predictor's hints are not late by a poll period)."""
    st = state(request)
    after = int_query(request, "after", 0, 0, 2**63 - 1)
    limit = int_query(request, "limit", 1000, 1, 10000)
    wait = float_query(request, "wait", 0.0, 0.0, 30.0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    entries = st.log.after(after, limit)
    while not entries and not st.closing:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        # Short slices so a reader that hung up ends the wait promptly.
        await st.log.wait_after(after, min(0.25, remaining))
        if request.transport is None or request.transport.is_closing():
            break
        entries = st.log.after(after, limit)
    return web.json_response({"entries": [e.to_json() for e in entries],
                              "next": entries[-1].seq if entries else after,
                              "first": st.log.first_seq, "last": st.log.last_seq})


async def keys(request: web.Request) -> web.StreamResponse:
    """GET /v1/keys: the cache's loaded keyring (no key material); long-polls for ``waitGeneration`` like the
    node's (serving/keywait.py; a cache runs no rewrap, so ``waitRewrap`` holds nothing)."""
    st = state(request)
    ring = st.keys
    await keywait.wait(keywait.parse(request), lambda: ring.keyring.generation if ring.keyring else None,
                       lambda: False, lambda: st.closing)
    return web.json_response(st.keys.describe())


async def stats(request: web.Request) -> web.StreamResponse:
    """GET /v1/cache: size, budget and policy (for operators and tests)."""
    st = state(request)
    bc = st.bc
    ring = st.keys.keyring
    key_stats = st.key_cache.stats() if st.key_cache is not None else {
        "capacity": st.cfg.key_cache_size, "held": 0, "hits": 0, "misses": 0, "prefetched": 0, "prefetchUsed": 0}
    return web.json_response({"bytes": bc.bytes, "entries": len(bc.entries), "budget": bc.budget,
                              "policy": st.cfg.eviction, "prefetchQueue": st.hints.qsize(),
                              "settingsError": st.settings.error,
                              "keyCache": {"wrapped": bool(ring is not None and ring.wrapped), **key_stats}})


async def queue_entry(request: web.Request) -> web.StreamResponse:
    """GET /v1/queue/{id}: asked of the node (as the pod), shown only to the token subject that queued it."""
    st = state(request)
    wid = request.match_info["id"]
    try:
        _, answer, _ = await st.bc.node.request("GET", st.bc.node.url("v1", "queue", wid))
    except UpstreamError as exc:
        return upstream(exc)
    entry = dict(json.loads(answer))
    caller = request_identity(request)
    if caller is not None and caller.kind != "pod" and caller.user != entry.get("owner"):
        raise ApiError(404, "not_found", f"no queued write {wid} of yours")
    return web.json_response({k: entry.get(k) for k in ("id", "state", "lsn", "error", "position")})


def routes() -> list[Route]:
    """The cache's own routes (the scaffold adds the probes, metrics, openapi and partitions)."""
    blocks = block_routes(get=get_block, put=put_block, delete=delete_block, batch_get=batch_get, scan=scan)
    return [*blocks,
            Route("POST", "/v1/prefetch", prefetch, Access.ADMIN),
            Route("POST", "/v1/prefetch/keys", prefetch_keys, Access.ADMIN),
            Route("GET", "/v1/access-log", access_log, Access.ADMIN),
            Route("GET", "/v1/keys", keys, Access.ADMIN),
            Route("GET", "/v1/cache", stats, Access.ADMIN),
            Route("GET", "/v1/queue/{id}", queue_entry, Access.DATA_GET),
            *revocation_routes()]


def create_app(cfg: CacheConfig) -> web.Application:
    """Build the cache application."""
    st = CacheApp(cfg)
    return create_server_app(st, Probes(st.metrics.registry, st.readiness), routes(), key=CACHE,
                             requests=st.metrics.requests, openapi="cache", partitioning=cfg.partitioning,
                             max_block_bytes=cfg.max_block_bytes)
