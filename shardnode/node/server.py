"""The node's HTTP API (aiohttp app factory): blocks, frames, scans, keys, rewrap, verify; the change stream
(change log, consumer slots, snapshot, status) is shardnode/node/stream_api.py."""

from __future__ import annotations

import asyncio
import base64
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from chronoshard.shardnode.auth.policy import Access
from chronoshard.shardnode.auth.tiered import idempotency_key, must_queue
from chronoshard.shardnode.auth.writer import QUEUED_APPLY_HEADER, request_identity, writer_identity
from chronoshard.shardnode.keys.crypto import CompromisedVersion, IntegrityError, open_block, seal_block
from chronoshard.shardnode.keys.keyring import KeyringWatcher, MissingKeyVersion
from chronoshard.shardnode.keys.provider import EmbeddedKeyProvider, KeyCache, key_cache_size_setting
from chronoshard.shardnode.replication import api as replication_api
from chronoshard.shardnode.replication import health
from chronoshard.shardnode.replication.lease import LeaseKeeper
from chronoshard.shardnode.replication.metrics import MirrorCollector
from chronoshard.shardnode.replication.source import SourceGates
from chronoshard.shardnode.replication.state import ReplicationState
from chronoshard.shardnode.resharding import source_api as reshard_source
from chronoshard.shardnode.resharding import target_api as reshard_target
from chronoshard.shardnode.resharding.puller import PullSettings
from chronoshard.shardnode.serving import keywait, tls
from chronoshard.shardnode.serving.http_common import (
    ApiError,
    bool_query,
    int_query,
    json_body,
    key_param,
    keys_list,
    read_block_body,
    table_param,
)
from chronoshard.shardnode.serving.metrics import NodeMetrics
from chronoshard.shardnode.serving.scaffold import (
    TABLE_PATH,
    Partitioning,
    Probes,
    Route,
    block_routes,
    create_server_app,
    revocation_routes,
)
from chronoshard.shardnode.serving.settings_watch import SettingsWatcher
from prometheus_client import Counter

from . import changelog, consumers, idempotency, partition_stats, rewrap, stream_api, writequeue
from .idempotency import Replayed
from .pacing import ForegroundGauge, Pacer
from .store import (
    NoKeyring,
    PreconditionFailed,
    Store,
    StoredBlock,
    WriteResult,
    block_count,
    get_block,
    scan_blocks,
    version_counts,
)
from .verify import Digest, VerifyReport, VerifyRunner, VerifyRunning

log = logging.getLogger(__name__)

FRAME_HEADERS = ("X-Chronoshard-Checksum", "X-Chronoshard-Key-Version", "X-Chronoshard-Lsn")


@dataclass
class NodeConfig:
    """Process settings (flags, then node.json)."""

    data_dir: Path
    keyring_dir: Path
    max_block_bytes: int = 4 << 20
    keyring_poll_seconds: float = 0.25  # a stat of the mounted directory: cheap, and a rotation waits on it
    rewrap_batch_size: int = rewrap.DEFAULT_BATCH
    # None: the pause adapts to the node's foreground traffic (pacing.py); a number fixes it.
    rewrap_pause_seconds: float | None = None
    change_log_retain: int = 1_000_000  # entries kept; older ones are trimmed (readers see `gap`)
    # Hard bounds even consumer slots cannot extend retention past (a slot forced past becomes `behind`).
    change_log_max_retain: int = 2_000_000
    change_log_max_retain_bytes: int = 1 << 30  # sum of the frames the log holds
    max_response_bytes: int = 64 << 20  # block bytes one batch or scan answer may carry
    trim_interval_seconds: float = 10.0
    partitioning: Partitioning | None = None  # when --partition-map is given
    settings_path: str | None = None  # node.json, re-applied when the mounted ConfigMap changes
    # How long a write waits for a new primary while the current one is marked compromised (then 503).
    compromised_write_hold_seconds: float = 20.0
    kek_dir: Path | None = None  # the mounted KEK Secret (kek.key); needed for wrapped key versions
    key_cache_size: int = 1024  # unwrapped table keys held (wrapped versions only)
    move_copy_chunk: int = 500  # a move's snapshot blocks imported per transaction (docs/resharding.md)
    move_batch: int = 500  # a move's streamed changes read per page
    # A move's copy (the source's snapshot, the target's import): None adapts to the clients (docs/resharding.md
    # #pacing), a number is a fixed pause after every chunk (0: full speed).
    move_pause_seconds: float | None = None
    # Fault injection for tests only: a pause between a queued write's apply and its record (0 in production).
    queue_record_pause_seconds: float = 0.0

    def apply(self, settings: dict[str, Any]) -> None:
        """Overlay settings from node.json (unknown keys ignored, wrong types logged and ignored)."""
        for name, attr in (("rewrapPauseSeconds", "rewrap_pause_seconds"), ("movePauseSeconds", "move_pause_seconds")):
            if name in settings and settings[name] is None:
                setattr(self, attr, None)  # back to adaptive pacing
        for name, attr, typ in (("maxBlockBytes", "max_block_bytes", int),
                                ("keyringPollSeconds", "keyring_poll_seconds", (int, float)),
                                ("rewrapBatchSize", "rewrap_batch_size", int),
                                ("rewrapPauseSeconds", "rewrap_pause_seconds", (int, float)),
                                ("changeLogRetain", "change_log_retain", int),
                                ("changeLogMaxRetain", "change_log_max_retain", int),
                                ("changeLogMaxRetainBytes", "change_log_max_retain_bytes", int),
                                ("maxResponseBytes", "max_response_bytes", int),
                                ("trimIntervalSeconds", "trim_interval_seconds", (int, float)),
                                ("compromisedWriteHoldSeconds", "compromised_write_hold_seconds", (int, float)),
                                ("moveCopyChunk", "move_copy_chunk", int), ("moveBatch", "move_batch", int),
                                ("movePauseSeconds", "move_pause_seconds", (int, float)),
                                ("queueRecordPauseSeconds", "queue_record_pause_seconds", (int, float))):
            if name in settings:
                value = settings[name]
                # a pause may be 0 (full speed); every other setting must be positive
                number = isinstance(value, typ) and not isinstance(value, bool)
                if number and (value >= 0 if attr.endswith("_pause_seconds") else value > 0):
                    setattr(self, attr, value)
                else:
                    log.error("config %s=%r ignored: must be a positive number", name, value)
        self.key_cache_size = key_cache_size_setting(settings, self.key_cache_size)


class Node:
    """State shared by the handlers of one node process."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.metrics = NodeMetrics()
        self.consumer_metrics = stream_api.ConsumerMetrics(self.metrics.registry)
        # One key cache for the process, kept across keyring reloads; reads and writes unwrap in threads.
        self.key_cache = (KeyCache(EmbeddedKeyProvider(cfg.kek_dir, cfg.keyring_dir), cfg.key_cache_size)
                          if cfg.kek_dir is not None else None)
        self.metrics.watch_key_cache(lambda: self.key_cache.stats() if self.key_cache is not None else None)
        self.metrics.watch_commits(lambda: (self.store.commits, self.store.committed_jobs) if self.store else None)
        self.keys = KeyringWatcher(cfg.keyring_dir, on_reload=self.metrics.keyring.observe,
                                   table_keys=self.key_cache, kek_dir=cfg.kek_dir)
        self.settings = SettingsWatcher(cfg.settings_path, self._apply_settings, self.metrics.settings.observe)
        self.store: Store | None = None
        self.rewrap: rewrap.RewrapRunner | None = None
        self.foreground = ForegroundGauge()  # client traffic, which adaptive rewrap and move pacing yield to
        self.partition_counts = partition_stats.PartitionCounters(cfg.partitioning)  # GET /v1/partitions/stats
        # A move's copy yields to the clients on both ends: the source's snapshot, the target's import.
        pauses = Counter("chronoshard_node_move_copy_pauses", "Pauses a move's copy took for the node's clients",
                         ["side"], registry=self.metrics.registry)
        self.snapshot_pacer_ = Pacer(self.foreground, cfg.move_pause_seconds, lambda _s: pauses.labels("source").inc())
        self.import_pacer = Pacer(self.foreground, cfg.move_pause_seconds, lambda _s: pauses.labels("target").inc())
        # The verify thread checks `closing` between blocks, so a shutdown ends a long scan.
        self.verify = VerifyRunner(should_stop=lambda: self.closing)
        self.verify.on_report.append(self._verify_done)
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.closing = False
        # The MirrorSet role (docs/mirroring.md): write/read checks, the mirror's replicator, the role routes.
        self.replication = ReplicationState(self.changed, Digest)
        # A move's target side (docs/resharding.md): the pullers of moves into this shard, their routes.
        self.moves = reshard_target.MoveManager(cfg.partitioning.source if cfg.partitioning else None,
                                                cfg.partitioning.shard_index if cfg.partitioning else None,
                                                lambda: self.db, self.replication.check_writable,
                                                PullSettings(chunk=cfg.move_copy_chunk, batch=cfg.move_batch,
                                                             pacer=self.import_pacer))
        # A move's source side (docs/resharding.md): pushed maps kept in the store, fences around client writes,
        # purge and range stats.
        part = cfg.partitioning
        self.reshard_source = reshard_source.SourceSide(part.source if part else None,
                                                        part.shard_index if part else None,
                                                        lambda: self.db, self.replication.check_writable)
        # The primary's side (docs/mirroring.md): sync wait and lag hold, the Lease, the health samples.
        self.source = SourceGates(lambda: self.replication.role, self._read_slots)
        self.lease = LeaseKeeper(lambda: self.replication.role)
        self.replication.write_gates.append(self.lease.gate)
        self.replication.describe_extras += [lambda: self.source.describe(self.replication.writes()),
                                             self.lease.describe]
        self.health = health.HealthMonitor(cfg.data_dir, self.replication.describe,
                                           lambda: self.replication.role.doc.get("healthSampleSeconds"))
        self.metrics.registry.register(health.SourceCollector(self.source, self.lease))
        self.metrics.registry.register(MirrorCollector(self.replication))
        self._peer_session: aiohttp.ClientSession | None = None
        # Writes made with temporary tiered tokens (docs/tokens.md): kept in queue.sqlite3, applied by the drainer.
        self.queue: writequeue.WriteQueue | None = None
        self.drainer: writequeue.Drainer | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self, app: web.Application) -> None:
        """Open the store, load the keyring, resume an interrupted rewrap, start the watcher."""
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.keys.poll)
        self.store = await asyncio.to_thread(Store, self.cfg.data_dir, lambda: self.keys.keyring)
        self.store.commit_listeners.append(lambda: self._wake_from_thread(loop))
        runner = self.rewrap = rewrap.RewrapRunner(self.store, self.cfg.rewrap_pause_seconds, self.foreground)
        runner.on_batch.append(self._rewrap_progress)
        self._tasks.append(asyncio.create_task(self.keys.run(self.cfg.keyring_poll_seconds), name="keyring-watch"))
        self._tasks.append(asyncio.create_task(self.settings.run(self.cfg.keyring_poll_seconds), name="settings"))
        self._tasks.append(asyncio.create_task(self._trim_loop(), name="changelog-trim"))
        # Checked when a client write is queued: a demotion's drain then covers every write let through.
        self.store.write_guards.append(self.replication.store_guard)
        self._peer_session = aiohttp.ClientSession(connector=tls.connector(app, limit=16))
        await self.replication.start(self.store, self._peer_session)
        await self.health.start()
        await self.source.refresh()  # the slots' acks in memory before the first client write
        await self.reshard_source.start()  # the persisted pushed map in force before the first request
        # Every persisted move resumes from its cursor, under the map in force (a pushed one included).
        await self.moves.start(self._peer_session)
        self.queue = await asyncio.to_thread(writequeue.WriteQueue, self.cfg.data_dir)
        drainer = self.drainer = writequeue.Drainer(self.queue, lambda entry: apply_queued(self, entry),
                                                    record_delay=lambda: self.cfg.queue_record_pause_seconds)
        self._tasks.append(asyncio.create_task(drainer.run(), name="queue-drainer"))
        for name, job in (("mirror-lag", self.source.run()), ("lease", self.lease.run()),
                          ("health-samples", self.health.run())):
            self._tasks.append(asyncio.create_task(job, name=name))
        if self.keys.keyring is not None:
            await runner.resume_if_running()
        else:
            self._tasks.append(asyncio.create_task(self._resume_when_keyring(runner)))

    async def _resume_when_keyring(self, runner: rewrap.RewrapRunner) -> None:
        while self.keys.keyring is None:
            await asyncio.sleep(self.cfg.keyring_poll_seconds)
        await runner.resume_if_running()

    async def shutting_down(self, app: web.Application) -> None:
        """Release long-polling readers so a graceful shutdown does not wait for them."""
        self.closing = True
        self._wake()

    async def stop(self, app: web.Application) -> None:
        """Stop background work, then close the store (queued writes finish first)."""
        for task in self._tasks:
            task.cancel()
        await self.replication.stop()
        await self.moves.stop()
        await self.lease.close()
        await self.health.close()
        if self._peer_session is not None:
            await self._peer_session.close()
        if self.rewrap:
            await self.rewrap.stop()
        await self.verify.stop()
        if self.store:
            await asyncio.to_thread(self.store.close)
        if self.queue is not None:
            await asyncio.to_thread(self.queue.close)

    async def _trim_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.trim_interval_seconds)
            try:
                await self.trim()
            except Exception:
                log.exception("change-log trim failed")

    async def trim(self) -> int:
        """One retention pass (consumers.plan_trim), in chunks so no transaction holds the writer long."""
        c = self.cfg
        bounds = consumers.TrimBounds(c.change_log_retain, c.change_log_max_retain, c.change_log_max_retain_bytes)
        total = 0
        while True:
            res = await self.db.write(lambda conn: consumers.trim_in_txn(conn, bounds, TRIM_CHUNK, time.time()))
            for name in res.behind:
                log.warning("consumer %s fell behind: retention bounds trimmed changes it had not acked; "
                            "it must re-seed from /v1/snapshot", name)
            total += res.deleted
            if res.deleted:
                self.metrics.changelog_trimmed.inc(res.deleted)
            if not res.more:
                await self.db.write(lambda conn: idempotency.trim(conn, time.time()))
                if self.queue is not None:
                    await asyncio.to_thread(self.queue.trim, time.time())
                return total

    def _apply_settings(self, doc: dict[str, Any]) -> None:
        self.cfg.apply(doc)
        if self.rewrap is not None:
            self.rewrap.pause = self.cfg.rewrap_pause_seconds
        if self.key_cache is not None:
            self.key_cache.resize(self.cfg.key_cache_size)
        self.moves.settings.chunk, self.moves.settings.batch = self.cfg.move_copy_chunk, self.cfg.move_batch
        self.snapshot_pacer_.pause = self.import_pacer.pause = self.cfg.move_pause_seconds

    def loaded_generation(self) -> int | None:
        """The generation of the keyring in use (None before one loaded)."""
        ring = self.keys.keyring
        return None if ring is None else ring.generation

    def changed(self) -> asyncio.Event:
        """The event the next commit sets (long polls wait on it)."""
        return self._changed

    def response_budget(self) -> int:
        """Bytes of blocks or frames one answer may carry."""
        return self.cfg.max_response_bytes

    def snapshot_pacer(self) -> Pacer:
        """What paces a move's snapshot served by this node (its clients' foreground)."""
        return self.snapshot_pacer_

    def slot_changed(self, name: str, slot: dict[str, Any] | None) -> None:
        """A consumer slot was registered, acked or deleted: keep the sync wait's copy (and wake its writes)."""
        if slot is None:
            self.source.acks.drop(name)
        else:
            self.source.acks.update(slot)

    async def _read_slots(self) -> list[dict[str, Any]]:
        return list((await self.db.read(stream_api.list_consumers))["consumers"])

    def _wake_from_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_soon_threadsafe(self._wake)  # commits happen on the writer thread

    def _wake(self) -> None:
        # Long-polling change readers wait on this event; replace it so each wait sees the next commit.
        self._changed.set()
        self._changed = asyncio.Event()

    def _rewrap_progress(self, st: dict[str, Any]) -> None:
        self.metrics.rewrap_running.set(1 if st["state"] == "running" else 0)

    def _verify_done(self, report: VerifyReport) -> None:
        m = self.metrics
        m.verify_runs.labels(report.mode).inc()
        m.verify_blocks.labels("ok").inc(report.ok)
        m.verify_blocks.labels("corrupt").inc(report.corrupt)
        m.verify_blocks.labels("missing_key").inc(report.missing_key)
        m.verify_last_failures.set(report.corrupt + report.missing_key)
        for p in report.problems:
            if p["reason"] != "missing-key":
                m.integrity_failures.labels("verify", p["reason"]).inc()

    def readiness(self) -> dict[str, Any]:
        """The `/readyz` body: ready once the store is open and a keyring is loaded."""
        ready = self.store is not None and self.keys.keyring is not None
        return {"ready": ready, "keyring": self.keys.keyring is not None, "store": self.store is not None}

    async def refresh_gauges(self) -> None:
        """Before a scrape: block counts per version and the last LSN, read from the store."""
        if self.store is None:
            return
        counts = await self.db.read(version_counts)
        self.metrics.blocks.clear()
        for v, n in counts.items():
            self.metrics.blocks.labels(str(v)).set(n)
        self.metrics.last_lsn.set(await self.db.read(changelog.last_lsn))
        self.consumer_metrics.observe((await self.db.read(stream_api.list_consumers))["consumers"])

    @property
    def db(self) -> Store:
        """The open store (503 before start-up finished)."""
        if self.store is None:
            raise ApiError(503, "not_ready", "store is not open yet")
        return self.store

    @property
    def write_queue(self) -> writequeue.WriteQueue:
        """The queue of writes made with temporary tokens (503 before start-up finished)."""
        if self.queue is None:
            raise ApiError(503, "not_ready", "the write queue is not open yet")
        return self.queue

    @property
    def rewrapper(self) -> rewrap.RewrapRunner:
        """The rewrap runner (503 before start-up finished)."""
        if self.rewrap is None:
            raise ApiError(503, "not_ready", "store is not open yet")
        return self.rewrap

    def open(self, block: StoredBlock, source: str = "read") -> bytes:
        """Decrypt a stored block for serving; ApiError (never plaintext) when it cannot be trusted."""
        ring = self.keys.keyring
        if ring is None:
            raise ApiError(503, "no_keyring", "no keyring is loaded")
        try:
            return open_block(ring, block.table, block.key, block.frame, block.checksum)
        except MissingKeyVersion as exc:
            self.metrics.missing_key.labels(str(exc.version)).inc()
            raise ApiError(503, "key_version_missing", str(exc), keyVersion=exc.version) from None
        except IntegrityError as exc:
            self.metrics.integrity_failures.labels(source, exc.reason).inc()
            log.error("integrity failure on %s/%s (%s)", block.table, block.key, exc.reason)
            raise ApiError(500, "integrity_error", f"block {block.table}/{block.key} failed verification: {exc}",
                           reason=exc.reason) from None


NODE = web.AppKey("chronoshard_node", Node)
TRIM_CHUNK = 50_000  # change-log rows one trim transaction deletes at most


def charge(node: Node, total: int, size: int) -> int:
    """Add one block to a response's byte total; 413 before the answer would exceed maxResponseBytes."""
    total += size
    if total > node.cfg.max_response_bytes:
        raise ApiError(413, "too_large", f"answer would exceed {node.cfg.max_response_bytes} bytes of blocks; "
                       "ask for fewer keys or a smaller limit")
    return total


def misdirected(node: Node, table: str, key: str) -> dict[str, Any] | None:
    """Inline 421-style error for one key of a batch that this shard does not own (None if owned)."""
    part = node.cfg.partitioning
    if part is None:
        return None
    try:
        m = part.source.check(part.shard_index, table, key)
    except RuntimeError as exc:  # routing.NoPartitionMap: refuse rather than guess ownership
        return {"error": "unavailable", "message": str(exc)}
    return None if m is None else m.body()


def node_of(request: web.Request) -> Node:
    """The Node behind this app."""
    return request.app[NODE]


# ---- blocks ------------------------------------------------------------------------------------
def precondition_failed(exc: PreconditionFailed) -> ApiError:
    """The 412 of a conditional write whose block is not at the expected LSN."""
    return ApiError(412, "precondition_failed", f"{exc}; nothing was written", currentLsn=exc.current)


async def put_holding_while_compromised(node: Node, table: str, key: str, body: bytes,
                                        if_lsn: int | None = None, identity: str | None = None,
                                        once: str | None = None) -> WriteResult | Replayed:
    """Store a block; while a threat rotation has marked the primary compromised, hold the write until the new
    primary is loaded (the keyring watcher swaps it in), then answer 503 if that takes too long. ``once``: the
    scoped idempotency key (the write is made at most once under it; a repeat gets the recorded answer)."""
    deadline = asyncio.get_running_loop().time() + node.cfg.compromised_write_hold_seconds
    while True:
        try:
            if once is not None:
                return await node.db.put_once(table, key, body, once, if_lsn=if_lsn, identity=identity)
            return await node.db.put(table, key, body, if_lsn=if_lsn, identity=identity)
        except PreconditionFailed as exc:
            raise precondition_failed(exc) from None
        except NoKeyring:
            raise ApiError(503, "no_keyring", "no keyring is loaded; cannot encrypt") from None
        except sqlite3.Error as exc:
            raise ApiError(503, "store_unavailable", f"write failed: {exc}") from None
        except MissingKeyVersion as exc:  # the primary is wrapped and its table key could not be unwrapped
            raise ApiError(503, "key_version_missing", str(exc), keyVersion=exc.version) from None
        except CompromisedVersion as exc:
            node.metrics.compromised_holds.inc()
            if asyncio.get_running_loop().time() >= deadline:
                raise ApiError(503, "key_compromised", f"{exc}; writes resume once the new key version is "
                               "primary, retry shortly", keyVersion=exc.version) from None
            await asyncio.sleep(0.1)


def request_idempotency_key(request: web.Request) -> str | None:
    """The request's Idempotency-Key (400 when malformed)."""
    try:
        return idempotency_key(request)
    except ValueError as exc:
        raise ApiError(400, "invalid_idempotency_key", str(exc)) from None


async def put_block(request: web.Request) -> web.Response:
    """PUT /v1/tables/{table}/blocks/{key}: store the raw body, acknowledged after it is durable; with
    X-Chronoshard-If-Lsn only if the block is at that LSN (412 otherwise); with Idempotency-Key at most once; with
    a temporary tiered token queued (202, docs/tokens.md)."""
    node = node_of(request)
    table, key = table_param(request), key_param(request)
    ikey, owner = request_idempotency_key(request), must_queue(request)
    if owner is None:
        node.replication.check_writable()  # 503 unless an active primary (before the body is read)
    expected = stream_api.if_lsn(request)
    body = await read_block_body(request, node.cfg.max_block_bytes)
    if owner is not None:
        return await queue_write(node, request, owner, "PUT", table, key, body, ikey, expected)
    status, answer = await write_put(node, table, key, body, expected, writer_identity(request), ikey)
    return web.json_response(answer, status=status)


async def write_put(node: Node, table: str, key: str, body: bytes, expected: int | None, writer: str | None,
                    ikey: str | None) -> tuple[int, dict[str, Any]]:
    """A client put on this primary (the handler's and the queue drainer's): status and JSON answer."""
    node.replication.check_writable()  # 503 unless an active primary
    term = node.replication.role.term  # the write belongs to this term's LSNs (read-your-writes: Min-Term)
    await node.source.wait_writable()  # async mode: held while the mirrors lag too far (503 mirror_lag)
    once = None if ikey is None else idempotency.scoped(writer, ikey)
    async with node.reshard_source.gate.admit(table, key):  # held by a cutover's fence; 421 once moved away
        res = await put_holding_while_compromised(node, table, key, body, expected, writer, once)
    if isinstance(res, Replayed):  # made before under this key: its answer, nothing written again
        return res.status, {**res.body, "term": term, "replayed": True}
    node.metrics.writes.labels("put").inc()
    node.metrics.bytes_written.inc(len(body))
    await node.source.wait_acked(res.lsn)  # sync mode: until a mirror acked it (503 sync_timeout)
    return 200, {"table": table, "key": key, "lsn": res.lsn, "term": term, "keyVersion": res.key_version,
                 "size": len(body)}


async def get_block_h(request: web.Request) -> web.Response:
    """GET /v1/tables/{table}/blocks/{key}: the plaintext, only after tag and checksum verify."""
    node = node_of(request)
    table, key = table_param(request), key_param(request)
    await node.replication.before_read(request.headers)  # read-your-writes; 503 while a mirror seeds

    def work(c: sqlite3.Connection) -> tuple[StoredBlock, bytes] | None:
        # One thread hop for the read and the decrypt.
        block = get_block(c, table, key)
        return None if block is None else (block, node.open(block))

    found = await node.db.read(work)
    if found is None:
        raise ApiError(404, "not_found", f"no block {table}/{key}")
    block, plaintext = found
    return web.Response(body=plaintext, content_type="application/octet-stream",
                        headers={"X-Chronoshard-Key-Version": str(block.key_version),
                                 "X-Chronoshard-Lsn": str(block.lsn)})


async def delete_block(request: web.Request) -> web.Response:
    """DELETE /v1/tables/{table}/blocks/{key} (conditional with X-Chronoshard-If-Lsn, Idempotency-Key and queued
    with a temporary tiered token, as PUT)."""
    node = node_of(request)
    table, key = table_param(request), key_param(request)
    ikey, owner = request_idempotency_key(request), must_queue(request)
    expected = stream_api.if_lsn(request)
    if owner is not None:
        return await queue_write(node, request, owner, "DELETE", table, key, None, ikey, expected)
    status, answer = await write_delete(node, table, key, expected, writer_identity(request), ikey)
    return web.json_response(answer, status=status)


async def write_delete(node: Node, table: str, key: str, expected: int | None, writer: str | None,
                       ikey: str | None) -> tuple[int, dict[str, Any]]:
    """A client delete on this primary (the handler's and the queue drainer's): status and JSON answer."""
    node.replication.check_writable()  # 503 unless an active primary
    term = node.replication.role.term
    await node.source.wait_writable()
    try:
        async with node.reshard_source.gate.admit(table, key):  # as a put
            if ikey is None:
                res: WriteResult | Replayed | None = await node.db.delete(table, key, if_lsn=expected,
                                                                          identity=writer)
            else:
                res = await node.db.delete_once(table, key, idempotency.scoped(writer, ikey), if_lsn=expected,
                                                identity=writer)
    except PreconditionFailed as exc:
        raise precondition_failed(exc) from None
    if isinstance(res, Replayed):
        return res.status, {**res.body, "replayed": True}
    if res is None:
        raise ApiError(404, "not_found", f"no block {table}/{key}")
    node.metrics.writes.labels("delete").inc()
    await node.source.wait_acked(res.lsn)
    return 200, {"table": table, "key": key, "lsn": res.lsn, "term": term}


# ---- queued writes (temporary tiered tokens, docs/tokens.md) ---------------------------------------------
async def queue_write(node: Node, request: web.Request, owner: str, method: str, table: str, key: str,
                      body: bytes | None, ikey: str | None, expected: int | None) -> web.Response:
    """Keep the write in queue.sqlite3 (a PUT's body sealed under the table's primary key) and answer 202 once it
    is durable there; the drainer applies it."""
    queue = node.write_queue
    frame = checksum = None
    if body is not None:
        ring = node.keys.keyring
        if ring is None:
            raise ApiError(503, "no_keyring", "no keyring is loaded; cannot seal the queued write")
        try:
            frame, checksum, _ = await asyncio.to_thread(seal_block, ring, table, key, body)
        except (MissingKeyVersion, CompromisedVersion) as exc:
            raise ApiError(503, "key_unavailable", f"cannot seal the queued write now: {exc}") from None
    wid, position = await asyncio.to_thread(
        lambda: queue.enqueue(owner=owner, writer=writer_identity(request), method=method, table=table, key=key,
                              idem=ikey, if_lsn=expected, frame=frame, checksum=checksum))
    if node.drainer is not None:
        node.drainer.wake.set()
    return web.json_response({"queued": wid, "position": position}, status=202)


async def apply_queued(node: Node, entry: writequeue.QueuedWrite) -> writequeue.Applied:
    """Apply one queued write with its Idempotency-Key: here when this node is the primary, else on the primary
    its role document names (a mirror's source)."""
    body = None
    if entry.method == "PUT":
        ring = node.keys.keyring
        if ring is None or entry.frame is None or entry.checksum is None:
            return writequeue.Applied(503, {"error": "no_keyring", "message": "no keyring loaded"})
        try:
            body = await asyncio.to_thread(open_block, ring, entry.table, entry.key, entry.frame, entry.checksum)
        except MissingKeyVersion as exc:
            return writequeue.Applied(503, {"error": "key_version_missing", "message": str(exc)})
        except IntegrityError as exc:
            return writequeue.Applied(422, {"error": "integrity_error", "message": str(exc)})
    role = node.replication.role
    if role.role == "primary":
        try:
            if body is not None:
                status, answer = await write_put(node, entry.table, entry.key, body, entry.if_lsn, entry.writer,
                                                 entry.idem)
            else:
                status, answer = await write_delete(node, entry.table, entry.key, entry.if_lsn, entry.writer,
                                                    entry.idem)
        except ApiError as exc:
            return writequeue.Applied(exc.status, {"error": exc.code, "message": exc.message})
        return writequeue.Applied(status, answer)
    return await apply_remote(node, entry, body)


async def apply_remote(node: Node, entry: writequeue.QueuedWrite, body: bytes | None) -> writequeue.Applied:
    """Send a queued write to the primary this mirror follows, as a queued apply (the primary lets a peer member
    make it: auth/writer.py ``is_queued_apply``); a refused credential (401/403) is retried, not failed."""
    role, session = node.replication.role, node._peer_session
    url = role.source_url
    if url is None or session is None:
        return writequeue.Applied(503, {"error": "no_primary", "message": f"this node is {role.role} and names "
                                        "no primary to apply queued writes to"})
    headers = {"Idempotency-Key": entry.idem, QUEUED_APPLY_HEADER: entry.id,
               **({} if entry.writer is None else {"X-Chronoshard-On-Behalf-Of": entry.writer})}
    if entry.if_lsn is not None:
        headers["X-Chronoshard-If-Lsn"] = str(entry.if_lsn)
    target = f"{url.rstrip('/')}/v1/tables/{entry.table}/blocks/{entry.key}"
    try:
        async with session.request(entry.method, target, data=body, headers=headers,
                                   server_hostname=role.server_name,
                                   timeout=aiohttp.ClientTimeout(total=30)) as resp:
            answer = await resp.json(content_type=None) if resp.content_length != 0 else {}
            answer = answer if isinstance(answer, dict) else {}
            if resp.status in (401, 403):  # retried (503), its refusal kept in the entry's error
                return writequeue.Applied(503, {"error": answer.get("error", "refused"), "message": f"the primary "
                                                f"answered {resp.status}: {answer.get('message', '')}"})
            return writequeue.Applied(resp.status, answer)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return writequeue.Applied(0, {"error": "unreachable", "message": type(exc).__name__})


async def queue_entry(request: web.Request) -> web.Response:
    """GET /v1/queue/{id}: a queued write's state (the token's subject that queued it, or the pod)."""
    node = node_of(request)
    wid = request.match_info["id"]
    entry = await asyncio.to_thread(node.write_queue.describe, wid)
    caller = request_identity(request)
    if entry is None or (caller is not None and caller.kind != "pod" and caller.user != entry["owner"]):
        raise ApiError(404, "not_found", f"no queued write {wid} of yours")  # another's entry is not shown
    # The pod (a cache) also gets the owner, to show the entry to its own caller only.
    shown = ("id", "state", "lsn", "error", "position") + (("owner",) if caller is not None and caller.kind == "pod"
                                                           else ())
    return web.json_response({k: entry[k] for k in shown})


async def queue_listing(request: web.Request) -> web.Response:
    """GET /v1/queue: counts per state and the entries still queued (no bodies)."""
    limit = int_query(request, "limit", 100, 1, 1000)
    return web.json_response(await asyncio.to_thread(node_of(request).write_queue.listing, limit))


async def batch_get_blocks(request: web.Request) -> web.Response:
    """POST /v1/tables/{table}/blocks:batchGet: plaintexts (base64) for many keys; per-key errors inline."""
    node = node_of(request)
    table = table_param(request)
    keys = keys_list(await json_body(request))
    await node.replication.before_read(request.headers)

    def work(c: sqlite3.Connection) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        total = 0
        for k in keys:
            wrong = misdirected(node, table, k)
            if wrong is not None:
                out.append({"key": k, "found": False, "error": wrong})
                continue
            block = get_block(c, table, k)
            if block is None:
                out.append({"key": k, "found": False})
                continue
            total = charge(node, total, block.size)
            try:
                value = node.open(block)
            except ApiError as exc:
                out.append({"key": k, "found": True, "error": {"error": exc.code, "message": exc.message}})
                continue
            out.append({"key": k, "found": True, "keyVersion": block.key_version,
                        "value": base64.b64encode(value).decode()})
        return out

    return web.json_response({"blocks": await node.db.read(work)})


def frame_json(block: StoredBlock | None, key: str) -> dict[str, Any]:
    """JSON form of a stored frame for the cache."""
    if block is None:
        return {"key": key, "found": False}
    return {"key": key, "found": True, "keyVersion": block.key_version, "lsn": block.lsn,
            "checksum": block.checksum.hex(), "frame": base64.b64encode(block.frame).decode()}


async def get_frame(request: web.Request) -> web.Response:
    """GET /v1/tables/{table}/frames/{key}: the stored ciphertext frame (for the decryption cache)."""
    node = node_of(request)
    table, key = table_param(request), key_param(request)
    await node.replication.before_read(request.headers)
    block = await node.db.read(lambda c: get_block(c, table, key))
    if block is None:
        raise ApiError(404, "not_found", f"no block {table}/{key}")
    return web.Response(body=block.frame, content_type="application/octet-stream",
                        headers=dict(zip(FRAME_HEADERS, (block.checksum.hex(), str(block.key_version),
                                                         str(block.lsn)), strict=True)))


async def batch_get_frames(request: web.Request) -> web.Response:
    """POST /v1/tables/{table}/frames:batchGet: stored frames (base64) for many keys."""
    node = node_of(request)
    table = table_param(request)
    keys = keys_list(await json_body(request))
    await node.replication.before_read(request.headers)
    blocks = await node.db.read(lambda c: [get_block(c, table, k) for k in keys])
    total = 0
    for b in blocks:
        total = charge(node, total, len(b.frame) if b else 0)
    out = []
    for b, k in zip(blocks, keys, strict=True):
        wrong = misdirected(node, table, k)
        out.append(frame_json(b, k) if wrong is None else {"key": k, "found": False, "error": wrong})
    return web.json_response({"frames": out})


async def scan(request: web.Request) -> web.Response:
    """GET /v1/tables/{table}/blocks?after=&limit=&values=: keys in order, paginated by the last key."""
    node = node_of(request)
    table = table_param(request)
    after = request.query.get("after")
    if after is not None and len(after) > 1024:
        raise ApiError(400, "invalid_parameter", "after must be at most 1024 characters")
    limit = int_query(request, "limit", 100, 1, 1000)
    values = bool_query(request, "values")
    def work(c: sqlite3.Connection) -> tuple[list[StoredBlock], list[bytes]]:
        found = scan_blocks(c, table, after, limit)
        if not values:
            return found, []
        total = 0
        for b in found:
            total = charge(node, total, b.size)
        return found, [node.open(b) for b in found]

    blocks, plaintexts = await node.db.read(work)
    items: list[dict[str, Any]] = []
    for i, b in enumerate(blocks):
        item: dict[str, Any] = {"key": b.key, "size": b.size, "keyVersion": b.key_version, "lsn": b.lsn}
        if values:
            item["value"] = base64.b64encode(plaintexts[i]).decode()
        items.append(item)
    nxt = blocks[-1].key if len(blocks) == limit else None
    return web.json_response({"items": items, "next": nxt})


# ---- keys, rewrap, verify ----------------------------------------------------------------------
async def keys(request: web.Request) -> web.Response:
    """GET /v1/keys: loaded versions (no key material) and per-version block counts; long-polls with
    ``waitGeneration``/``waitRewrap``/``waitSeconds`` (serving/keywait.py)."""
    node = node_of(request)
    await keywait.wait(keywait.parse(request), node.loaded_generation,
                       lambda: node.rewrap is not None and node.rewrap.running, lambda: node.closing)
    body = node.keys.describe()
    counts = await node.db.read(version_counts)
    if node.queue is not None:  # queued writes' sealed bodies need their versions too (docs/tokens.md)
        queued = await asyncio.to_thread(node.queue.version_counts)
        for v, n in queued.items():
            counts[v] = counts.get(v, 0) + n
        body["queuedWrites"] = {str(v): n for v, n in sorted(queued.items())}
    body["blocks"] = {str(v): n for v, n in sorted(counts.items())}
    return web.json_response(body)


async def rewrap_start(request: web.Request) -> web.Response:
    """POST /v1/rewrap: start (or resume) re-encrypting every block onto the primary version."""
    node = node_of(request)
    node.replication.check_role()  # a mirror's rewraps stream from its source (a local one would take its LSNs)
    doc = await json_body(request, required=False)
    batch = doc.get("batchSize", node.cfg.rewrap_batch_size)
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= 10000:
        raise ApiError(400, "invalid_body", "batchSize must be an integer between 1 and 10000")
    pause = doc.get("pauseSeconds")
    if pause is not None and (not isinstance(pause, int | float) or isinstance(pause, bool)
                              or not 0 <= pause <= 60):
        raise ApiError(400, "invalid_body", "pauseSeconds must be a number between 0 and 60")
    unknown = set(doc) - {"batchSize", "pauseSeconds"}
    if unknown:
        raise ApiError(400, "invalid_body", f"unknown fields: {sorted(unknown)}")
    try:
        await node.rewrapper.start(batch, None if pause is None else float(pause))
    except NoKeyring:
        raise ApiError(503, "no_keyring", "no keyring is loaded") from None
    return web.json_response(await node.db.read(rewrap.progress), status=202)


async def rewrap_status(request: web.Request) -> web.Response:
    """GET /v1/rewrap: persisted progress plus per-version counts and, for an adaptive run, its pace now."""
    node = node_of(request)
    body = await node.db.read(rewrap.progress)
    body["pace"] = node.rewrapper.describe_pace()
    return web.json_response(body)


def verify_sample(doc: dict[str, Any]) -> int | None:
    """The validated `POST /v1/verify` body: None for a full scan, else the sample size."""
    unknown = set(doc) - {"mode", "sample"}
    if unknown:
        raise ApiError(400, "invalid_body", f"unknown fields: {sorted(unknown)}")
    mode = doc.get("mode", "full")
    if mode not in ("full", "sample"):
        raise ApiError(400, "invalid_body", "mode must be full or sample")
    if mode == "full":
        if "sample" in doc:
            raise ApiError(400, "invalid_body", "sample is only allowed with mode=sample")
        return None
    sample = doc.get("sample", 100)
    if not isinstance(sample, int) or isinstance(sample, bool) or not 1 <= sample <= 1_000_000:
        raise ApiError(400, "invalid_body", "sample must be an integer between 1 and 1000000")
    return sample


async def verify_start(request: web.Request) -> web.Response:
    """POST /v1/verify {"mode": "full"|"sample", "sample": n}: start a scan (one at a time)."""
    node = node_of(request)
    sample = verify_sample(await json_body(request, required=False))
    ring = node.keys.keyring
    if ring is None:
        raise ApiError(503, "no_keyring", "no keyring is loaded")
    try:
        node.verify.start(node.db.path, ring, sample)
    except VerifyRunning as exc:
        raise ApiError(409, "verify_running", str(exc)) from None
    return web.json_response(node.verify.status(), status=202)


async def verify_status(request: web.Request) -> web.Response:
    """GET /v1/verify: state and the last report (with digest)."""
    return web.json_response(node_of(request).verify.status())


def routes() -> list[Route]:
    """The node's own routes (the scaffold adds the probes, metrics, openapi and partitions)."""
    blocks = block_routes(get=get_block_h, put=put_block, delete=delete_block, batch_get=batch_get_blocks, scan=scan)
    return [*blocks,
            # Frames are the cache's internal feed, and a rejoining mirror's rewind reads the primary's current ones:
            # pods, operator and replicas (a replica holds the same keys), never users.
            Route("GET", TABLE_PATH + "/frames/{key}", get_frame, Access.REPLICATION),
            Route("POST", TABLE_PATH + "/frames:batchGet", batch_get_frames, Access.REPLICATION),
            Route("GET", "/v1/keys", keys, Access.ADMIN),
            Route("POST", "/v1/rewrap", rewrap_start, Access.ADMIN),
            Route("GET", "/v1/rewrap", rewrap_status, Access.ADMIN),
            Route("POST", "/v1/verify", verify_start, Access.ADMIN),
            Route("GET", "/v1/verify", verify_status, Access.ADMIN),
            Route("GET", "/v1/queue/{id}", queue_entry, Access.DATA_GET),
            Route("GET", "/v1/queue", queue_listing, Access.ADMIN),
            *revocation_routes(),
            *stream_api.routes(node_of),
            *health.routes(lambda request: node_of(request).health),
            *replication_api.routes(lambda request: node_of(request).replication),
            *reshard_target.routes(lambda request: node_of(request).moves),
            *reshard_source.routes(lambda request: node_of(request).reshard_source)]


def partition_routes(node: Node) -> list[Route]:
    """GET /v1/partitions/stats (docs/weaving.md): this node's partitions' size and load."""
    return partition_stats.routes(node.partition_counts, lambda fn: node.db.read(fn))


def foreground_middleware(gauge: ForegroundGauge) -> Any:
    """Report block and frame requests (the clients' and the cache's reads and writes) to the pacing gauge."""
    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith(TABLES_PREFIX):
            return await handler(request)
        started = gauge.begin()
        try:
            return await handler(request)
        finally:
            gauge.end(started)
    return middleware


TABLES_PREFIX = "/v1/tables/"


def create_app(cfg: NodeConfig) -> web.Application:
    """Build the node application (the store opens on startup, closes on cleanup)."""
    node = Node(cfg)
    probes = Probes(node.metrics.registry, node.readiness, node.refresh_gauges)
    app = create_server_app(node, probes, [*routes(), *partition_routes(node)], key=NODE,
                            requests=node.metrics.requests, openapi="node",
                            partitioning=cfg.partitioning, max_block_bytes=cfg.max_block_bytes)
    app.middlewares.append(foreground_middleware(node.foreground))
    app.middlewares.append(partition_stats.counting_middleware(node.partition_counts))
    app.middlewares.append(node.health.middleware())  # the answers and write latencies of GET /v1/health
    return app


__all__ = ["Node", "NodeConfig", "block_count", "create_app"]
