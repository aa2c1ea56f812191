"""Reversions over the history and the node: making a plan (reading both states from the history) and carrying it
out, resumably, as conditional writes through the node.

A run takes the items in plan order in batches. Before a batch is sent its items are marked in flight; after, their
outcomes and the cursor commit together (plans.py). An item whose conditional write fails (412: the key was written
after the plan) is a conflict: skipped, or written over when the plan says ``overwriteLater``. After a crash the
items that were in flight are sent again; one that now fails its precondition is checked against the node's state
as the history sees it once the capture has caught up, so a write that did land before the crash counts as done,
not as a conflict, and nothing already done is written twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import aiohttp
from chronoshard.shardnode.auth.writer import ON_BEHALF_HEADER
from chronoshard.shardnode.serving.changestream import ChangeStreamClient, ChangeStreamError
from chronoshard.shardnode.serving.http_common import ApiError
from yarl import URL

from . import wovenbase
from .anomalystore import AnomalyStore
from .capture import NODE_ERRORS, Capture, describe
from .history import HistoryStore
from .metrics import ShadowMetrics
from .observations import REVERSION_IDENTITY_PREFIX
from .plans import Outcome, PlanStore, StoredPlan
from .reversion import (
    DELETE,
    SAMPLE_SIZE,
    Digester,
    IncidentRef,
    PlanItem,
    PlanRequest,
    Point,
    count,
    item_for,
    plan_items,
)
from .timetravel import Version

log = logging.getLogger(__name__)

T = TypeVar("T")
PAGE = 500
BATCH = 32
CATCH_UP_SECONDS = 30.0


def transient(exc: BaseException) -> bool:
    """A node error worth retrying: unreachable, timed out, or a 5xx/429 answer."""
    if isinstance(exc, ChangeStreamError):
        return exc.status >= 500 or exc.status == 429
    return isinstance(exc, NODE_ERRORS)


def _pages(fetch: Callable[[str | None], list[Version]]) -> Iterator[Version]:
    """Every version of a paginated state listing (paged by the last key)."""
    after: str | None = None
    while True:
        page = fetch(after)
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1].key


def _someone_else(v: Version, incident_identities: set[str]) -> bool:
    """A change made by a client outside the incident (a rewrap or a reversion's own write is nobody's). An
    anonymous change (no authentication) cannot be told from the incident's: it counts as someone else's, so a
    reversion never writes over it."""
    if v.op == "rewrap" or (v.identity or "").startswith(REVERSION_IDENTITY_PREFIX):
        return False
    return v.identity is None or v.identity not in incident_identities


@dataclass(frozen=True)
class _Run:
    """What every item of one run shares: overwrite conflicts or not, the plan's LSN, and the writer the node
    records for the run's writes (``chronoshard:reversion:<name>``, so detection knows them for ours)."""

    overwrite: bool
    plan_lsn: int
    writer: str


@dataclass
class Planner:
    """Reads the two states a plan compares from the history (blocking: call it in a worker thread)."""

    history: HistoryStore
    max_blocks: int | None
    anomalies: AnomalyStore | None = None
    shard_index: int | None = None  # None: a shadow outside a ShardSet answers for every shard
    # A partition id -> its keyspace ranges under the map in force (None: no such partition).
    partition_ranges: Callable[[int], list[wovenbase.Range] | None] | None = None

    def point(self, req: PlanRequest, plan_lsn: int) -> Point:
        """The point as an LSN the history knows; 400 when it is ahead of the history."""
        lsn = req.lsn if req.lsn is not None else self.history.time_to_lsn(req.time or 0.0)
        if lsn > plan_lsn:
            raise ApiError(400, "point_ahead", f"the history has applied the node's log up to LSN {plan_lsn}; "
                           f"LSN {lsn} is ahead of it")
        return Point(lsn, req.time)

    def _state(self, table: str, lsn: int, req: PlanRequest) -> Iterator[Version]:
        if req.keys is not None:
            for key in req.keys:
                v = self.history.value_at(table, key, lsn=lsn)
                if v is not None:
                    yield v
            return
        # The plan's range includes its end; the store's excludes it. No key holds a NUL, so nothing sorts
        # between end and end + NUL.
        end = None if req.end is None else req.end + "\x00"
        yield from _pages(lambda after: self.history.state_at(table, lsn=lsn, start=req.start, end=end,
                                                              after=after, limit=PAGE))

    def items(self, req: PlanRequest, tables: list[str], plan_lsn: int, point: Point) -> Iterator[PlanItem]:
        """The plan's items, table by table in name order, keys in order within each."""
        for table in tables:
            yield from plan_items(self._state(table, plan_lsn, req), self._state(table, point.lsn, req))

    def incident_items(self, ref: IncidentRef, plan_lsn: int, overwrite: bool) -> tuple[list[PlanItem], int]:
        """Each key of the incident back to its value before the incident's first change of it, in key order, and
        how many were left out: keys changed since the incident by an identity that is not the incident's (kept
        unless ``overwrite``). Another shard's incident plans nothing here."""
        if self.shard_index is not None and ref.shard != self.shard_index:
            return [], 0
        body = self.anomalies.incident(ref.id) if self.anomalies is not None else None
        if body is None or body.get("table") != ref.table:
            raise ApiError(404, "incident_not_found", f"this shard's shadow has no incident {ref.id}")
        own = set(body.get("identities") or [])
        items: list[PlanItem] = []
        excluded = 0
        for k in self.anomalies.all_incident_keys(ref.id) if self.anomalies is not None else ():
            later = self.history.history(ref.table, k.key, after_lsn=k.last_lsn, limit=PAGE, values=False)
            if not overwrite and any(v.lsn <= plan_lsn and _someone_else(v, own) for v in later):
                excluded += 1
                continue
            now = self.history.value_at(ref.table, k.key, lsn=plan_lsn)
            then = (self.history.value_at(ref.table, k.key, lsn=k.before_lsn)
                    if k.before_lsn is not None else None)
            item = item_for(now, then)
            if item is not None:
                items.append(item)
        return items, excluded

    def partition_items(self, partition: int, tables: list[str], plan_lsn: int,
                        point: Point) -> tuple[list[PlanItem], wovenbase.Base]:
        """A partition's keys back to the point: both states from a woven snapshot of the split half when one
        matches the partition's range (weave.sqlite3 beside the history), else from the shadow's snapshots; the
        base the point's state was read from."""
        ranges = self.partition_ranges(partition) if self.partition_ranges is not None else None
        if not ranges:
            raise ApiError(400, "unknown_partition", f"partition {partition} is not in the map in force")
        weave = self.history.path.with_name(wovenbase.WEAVE_DB)
        with self.history.read() as conn:
            _, now = wovenbase.state_at(conn, weave, ranges, plan_lsn)
            base, then = wovenbase.state_at(conn, weave, ranges, point.lsn)
        wanted = set(tables)
        items: list[PlanItem] = []
        for table, key in sorted(set(now) | set(then)):
            a, b = now.get((table, key)), then.get((table, key))
            if table not in wanted or a == b:
                continue
            # Only the keys whose version differs are read (and opened, to compare content).
            item = item_for(None if a is None else self.history.value_at(table, key, lsn=a),
                            None if b is None else self.history.value_at(table, key, lsn=b))
            if item is not None:
                items.append(item)
        return items, base

    def make(self, req: PlanRequest, tables: list[str], store: PlanStore) -> StoredPlan:
        """Compute and store the plan (refused when it exceeds ``reversion.maxBlocks``)."""
        plan_lsn = self.history.cursor()
        point = self.point(req, plan_lsn)
        excluded = 0
        base: wovenbase.Base | None = None
        if req.partition is not None:
            items, base = self.partition_items(req.partition, sorted(tables), plan_lsn, point)
        elif req.incident is not None:
            items, excluded = self.incident_items(req.incident, plan_lsn, req.overwrite_later)
        else:
            items = list(self.items(req, sorted(tables), plan_lsn, point))
        if self.max_blocks is not None and len(items) > self.max_blocks:
            raise ApiError(400, "plan_too_large", f"the plan touches {len(items)} keys; reversion.maxBlocks "
                           f"allows {self.max_blocks}", keys=len(items))
        digester = Digester()
        for item in items:
            digester.add(item)
        counts = replace(count(items), excluded=excluded)
        store.create(req.name, req.to_json(), digester.hexdigest(point), plan_lsn, point, counts, items,
                     None if base is None else base.to_json())
        stored = store.get(req.name)
        assert stored is not None
        return stored


def plan_json(plan: StoredPlan, later_writes: int, sample: list[PlanItem]) -> dict[str, Any]:
    """The plan as ``POST /v1/reversions`` and ``GET /v1/reversions/{name}`` answer it."""
    total = plan.counts.total
    remaining = total - plan.done - plan.skipped
    return {"name": plan.name, "digest": plan.digest, "planLsn": plan.plan_lsn, "point": plan.point.to_json(),
            **plan.counts.to_json(), "conflicts": plan.conflicts + later_writes + plan.counts.excluded,
            "overwriteLater": bool(plan.request.get("overwriteLater")), "request": plan.request,
            "sample": [i.to_json() for i in sample], "phase": plan.phase, "done": plan.done,
            "skipped": plan.skipped, "remaining": remaining, "created": plan.created, "started": plan.started,
            "finished": plan.finished, "lastError": plan.last_error,
            **({"base": plan.base} if plan.base is not None else {})}


class Reversions:
    """Plans, runs and their tasks for one process."""

    def __init__(self, history: HistoryStore, store: PlanStore, stream: ChangeStreamClient, capture: Capture,
                 session: aiohttp.ClientSession, node_url: str, pool: Executor, metrics: ShadowMetrics, *,
                 server_hostname: str | None = None, max_blocks: Callable[[], int | None] = lambda: None,
                 anomalies: AnomalyStore | None = None, shard_index: int | None = None,
                 partition_ranges: Callable[[int], list[wovenbase.Range] | None] | None = None) -> None:
        self.history, self.store, self.stream, self.capture = history, store, stream, capture
        self.partition_ranges = partition_ranges
        self.anomalies, self.shard_index = anomalies, shard_index
        self.session, self.node, self.pool, self.metrics = session, URL(node_url), pool, metrics
        self.server_hostname = server_hostname
        self.max_blocks = max_blocks
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._planning = asyncio.Lock()
        self.batch = BATCH
        self.error: str | None = None  # the last node error a run met (it retries)

    async def _thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # ---- plans ---------------------------------------------------------------------------------
    async def plan(self, req: PlanRequest, tables: list[str]) -> tuple[dict[str, Any], bool]:
        """The plan for ``req`` (stored when new; True then); 409 if its name holds another request."""
        async with self._planning:  # one plan at a time: a second POST of the same name finds the first
            existing = await self._thread(self.store.get, req.name)
            if existing is not None:
                if existing.request != req.to_json():
                    raise ApiError(409, "plan_exists", f"reversion {req.name} exists with another request; "
                                   "delete it first")
                return await self.describe(req.name), False
            planner = Planner(self.history, self.max_blocks(), self.anomalies, self.shard_index,
                              self.partition_ranges)
            await self._thread(planner.make, req, tables, self.store)
        return await self.describe(req.name), True

    async def describe(self, name: str) -> dict[str, Any]:
        """The plan and its progress; 404 if unknown."""
        plan = await self._thread(self.store.get, name)
        if plan is None:
            raise ApiError(404, "not_found", f"no reversion {name}")
        later = await self._thread(self.store.later_writes, name)
        sample = await self._thread(self.store.items, name, -1, SAMPLE_SIZE)
        return plan_json(plan, later, sample)

    async def delete(self, name: str) -> None:
        """Stop a run of ``name`` and forget the plan; 404 if unknown."""
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if not await self._thread(self.store.delete, name):
            raise ApiError(404, "not_found", f"no reversion {name}")

    # ---- runs ----------------------------------------------------------------------------------
    async def run(self, name: str, digest: str) -> dict[str, Any]:
        """Start (or keep running) the plan ``name`` if ``digest`` is its digest; 409 digest_mismatch if not."""
        plan = await self._thread(self.store.get, name)
        if plan is None:
            raise ApiError(404, "not_found", f"no reversion {name}")
        if digest != plan.digest:
            # The plan's digest is not echoed: approving means reading the plan, not retrying with the answer.
            raise ApiError(409, "digest_mismatch", "the digest does not match the plan; read the plan again")
        if plan.phase == "planned":
            await self._thread(self.store.set_phase, name, "running")
        if plan.phase in ("planned", "running"):
            self._ensure_task(name)
        return await self.describe(name)

    async def resume(self) -> None:
        """At start-up: continue every run a crash or restart interrupted."""
        for name in await self._thread(self.store.names, ("running",)):
            log.info("reversion %s: resuming", name)
            self._ensure_task(name)

    async def stop(self) -> None:
        """Cancel the runs (their progress is persisted; they resume at the next start)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _ensure_task(self, name: str) -> None:
        task = self._tasks.get(name)
        if task is None or task.done():
            self._tasks[name] = asyncio.create_task(self._run(name), name=f"reversion-{name}")

    async def _run(self, name: str) -> None:
        plan = await self._thread(self.store.get, name)
        if plan is None:
            return
        run = _Run(bool(plan.request.get("overwriteLater")), plan.plan_lsn, REVERSION_IDENTITY_PREFIX + name)
        try:
            while True:
                batch, _ = await self._thread(self.store.next_batch, name, self.batch)
                if not batch:
                    break
                outcomes = await self._carry_batch(batch, run)
                await self._thread(self.store.finish_batch, name, outcomes)
            await self._thread(self.store.set_phase, name, "completed")
            log.info("reversion %s: completed", name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("reversion %s failed", name)
            await self._thread(self.store.set_phase, name, "failed", type(exc).__name__)

    async def _carry_batch(self, batch: list[tuple[int, PlanItem, bool]], run: _Run) -> list[Outcome]:
        done: dict[int, Outcome] = {}
        pending, backoff = batch, 0.2
        while pending:
            results = await asyncio.gather(*(self._carry(seq, item, resumed, run)
                                             for seq, item, resumed in pending), return_exceptions=True)
            retry: list[tuple[int, PlanItem, bool]] = []
            for (seq, item, _), result in zip(pending, results, strict=True):
                if isinstance(result, Outcome):
                    done[seq] = result
                elif transient(result):
                    # Its write may have landed before the error: sent again as a resumed item.
                    retry.append((seq, item, True))
                    self.error = describe(result)
                elif isinstance(result, ChangeStreamError):
                    # The node refused this item for good (4xx): it is skipped, the run goes on.
                    self.metrics.reversion_items.labels("refused").inc()
                    done[seq] = Outcome(seq, "refused", error=f"{item.table}/{item.key}: {describe(result)}")
                else:
                    raise result
            if retry:
                log.warning("reversion: %s; retrying %d items in %.1fs", self.error, len(retry), backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            pending = retry
        return [done[seq] for seq, _, _ in batch]

    async def _carry(self, seq: int, item: PlanItem, resumed: bool, run: _Run) -> Outcome:
        value = None
        if item.action != DELETE:
            version = await self._thread(lambda: self.history.value_at(item.table, item.key, lsn=item.target_lsn))
            if version is None or version.lsn != item.target_lsn or version.value is None:
                self.metrics.reversion_items.labels("missing").inc()
                return Outcome(seq, "missing", error=f"version {item.target_lsn} of {item.table}/{item.key} is no "
                               "longer in the history")
            value = version.value
        if item.expected_lsn == 0 and not resumed and await self._written_since(item, run.plan_lsn):
            return await self._conflict(seq, item, value, run)
        if item.action == DELETE:
            lsn = await self.stream.delete_if(item.table, item.key, item.expected_lsn, run.writer)
        else:
            assert value is not None
            lsn = await self.stream.put_if(item.table, item.key, value, item.expected_lsn, run.writer)
        if lsn is not None:
            self.metrics.reversion_items.labels("done").inc()
            return Outcome(seq, "done", lsn)
        if resumed:
            landed = await self._already_there(item, value)
            if landed is not None:
                self.metrics.reversion_items.labels("done").inc()
                return Outcome(seq, "done", landed or None)
        return await self._conflict(seq, item, value, run)

    async def _conflict(self, seq: int, item: PlanItem, value: bytes | None, run: _Run) -> Outcome:
        """The key was written after the plan: skipped, or written over when the plan says so."""
        if not run.overwrite:
            self.metrics.reversion_items.labels("conflict").inc()
            return Outcome(seq, "conflict")
        self.metrics.reversion_items.labels("overwritten").inc()
        return Outcome(seq, "overwritten", await self._write(item, value, run.writer))

    async def _written_since(self, item: PlanItem, plan_lsn: int) -> bool:
        """Whether a key the plan found absent has been written since the plan. The node's precondition "absent"
        cannot tell (absence has no LSN: a put and a delete after the plan leave it absent again); the history,
        once caught up with the node, can. A write landing between this check and ours is not seen (a window of
        one request, against the run's whole length before)."""
        page = await self.stream.changes(self.capture.position, limit=1, wait=0)
        if not await self.capture.wait_position(page.last_lsn, CATCH_UP_SECONDS):
            raise ChangeStreamError(503, {"error": "capture_behind", "message": "capture is not caught up"})
        later = await self._thread(lambda: self.history.history(item.table, item.key, after_lsn=plan_lsn, limit=1,
                                                                values=False))
        return bool(later)

    async def _already_there(self, item: PlanItem, value: bytes | None) -> int | None:
        """After a crash: the LSN holding the item's target state on the node (0 if the target is absence), as the
        history sees it once caught up with the node; None if the node holds something else."""
        page = await self.stream.changes(self.capture.position, limit=1, wait=0)
        if not await self.capture.wait_position(page.last_lsn, CATCH_UP_SECONDS):
            raise ChangeStreamError(503, {"error": "capture_behind", "message": "capture is not caught up"})
        latest = await self._thread(lambda: self.history.value_at(item.table, item.key))
        if item.action == DELETE:
            return 0 if latest is None else None
        if latest is not None and latest.value == value:
            return latest.lsn
        return None

    async def _write(self, item: PlanItem, value: bytes | None, writer: str) -> int | None:
        """An unconditional write of the item (overwriteLater): an ordinary PUT or DELETE to the node."""
        url = self.node / "v1" / "tables" / item.table / "blocks" / item.key
        kw: dict[str, Any] = {"timeout": aiohttp.ClientTimeout(total=30), "headers": {ON_BEHALF_HEADER: writer}}
        if self.server_hostname is not None:
            kw["server_hostname"] = self.server_hostname
        if item.action == DELETE:
            req = self.session.delete(url, **kw)
        else:
            kw["headers"]["Content-Type"] = "application/octet-stream"
            req = self.session.put(url, data=value, **kw)
        async with req as resp:
            if resp.status == 404 and item.action == DELETE:
                return None  # already gone
            if resp.status != 200:
                raise ChangeStreamError(resp.status, {"error": "write_failed",
                                                      "message": f"node answered {resp.status}"})
            return int((await resp.json())["lsn"])
