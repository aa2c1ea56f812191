"""The weaver's loop (docs/weaving.md, "The weaver"): every sample interval one ``GET /v1/partitions/stats`` on its
node → one sample per partition; every interval a forecast per partition, then (modes weave and split, with the
shadow's history present) the next woven point of every weave above the threshold, retention, and the calibrators
refitted from each partition's own backtest. SQL and models run in one worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from chronoshard.shardnode.forecasting.calibration import Calibrator
from chronoshard.shardnode.forecasting.split import backtest_pairs, forecast_split
from chronoshard.shardnode.forecasting.types import SplitForecast
from chronoshard.shardnode.keyspace.partitioning import format_id, parse_id
from chronoshard.shardnode.shadow.historydb import DB_NAME as SHADOW_DB

from . import retention, weaving
from .config import WeaverConfig, WeaveSettings
from .metrics import WeaverMetrics
from .pages import Row
from .sampler import sample_rows, thresholds, to_samples
from .store import ACTIVE, DIFFERENTIAL, DROPPED, FULL, LOWER, SUPERSEDED, UPPER, Weave, WeaveStore

log = logging.getLogger(__name__)

MAX_SAMPLES = 2000  # the forecast's budget (shardnode/forecasting: <= 50 ms per partition at this size)
MIN_CALIBRATION_PAIRS = 10
MAX_BACKTESTS = 40  # forecasts one recalibration of one partition may run
CALIBRATE_EVERY = 6  # passes between two recalibrations of one partition
MAX_ERRORS = 10
REWRAP_META = "rewrap"
FetchJson = Callable[[str], Awaitable[dict[str, Any]]]


def stale_rows(rows: list[Row], keep: int | None) -> bool:
    """Whether rows hold a key version older than a rewrap's target (such a point is not stored)."""
    return keep is not None and any(r.key_version is not None and r.key_version < keep for r in rows)


@dataclass
class Runner:
    """The weaver's state between passes (all of it rebuildable from weave.sqlite3 and the node)."""

    cfg: WeaverConfig
    store: WeaveStore
    metrics: WeaverMetrics
    fetch: FetchJson  # GET a node path (with query) as JSON
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="weave"))
    stats: dict[str, Any] | None = None
    forecasts: dict[int, SplitForecast] = field(default_factory=dict)
    below_since: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    last_sample_time: float | None = None
    last_forecast_time: float | None = None
    last_weave_time: float | None = None
    passes: int = 0

    @property
    def shadow_path(self) -> Any:
        """The shadow's history file on the shard volume."""
        return self.cfg.data_dir / SHADOW_DB

    def shadow_present(self) -> bool:
        """Whether the shadow's history exists (without it the weaver samples and forecasts only)."""
        return bool(self.shadow_path.exists())

    async def in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking call on the weaver's one worker thread (passes and rewraps never interleave)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args))

    def _error(self, what: str, exc: BaseException) -> None:
        self.metrics.errors.labels(what).inc()
        # Names the pass and the exception type and message; node answers and SQL errors carry no key material.
        self.errors = [*self.errors, f"{time.strftime('%H:%M:%S')} {what}: {type(exc).__name__}: {exc}"][-MAX_ERRORS:]
        log.warning("weaver %s pass failed: %s", what, exc)

    # ---- the loop -----------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Sample and pass forever; a settings change takes effect within a second."""
        next_sample = next_pass = 0.0
        while True:
            s = self.cfg.settings
            now = time.time()
            if now >= next_sample:
                next_sample = now + s.sample_interval_seconds
                await self.guarded("sample", self.sample)
            if now >= next_pass and self.stats is not None:  # the first pass right after the first sample
                next_pass = now + s.interval_seconds
                await self.guarded("forecast", self.interval_pass)
            next_sample = min(next_sample, now + s.sample_interval_seconds)
            next_pass = min(next_pass, now + s.interval_seconds)
            await asyncio.sleep(max(0.01, min(next_sample, next_pass, now + 1.0) - time.time()))

    async def guarded(self, what: str, fn: Callable[[], Awaitable[None]]) -> None:
        """Run one pass, timed; a failure is counted and reported in the status, and the loop goes on."""
        started = time.perf_counter()
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._error(what, exc)
        finally:
            self.metrics.pass_seconds.labels(what).observe(time.perf_counter() - started)

    async def sample(self) -> None:
        """One sample per partition of this node."""
        body = await self.fetch("/v1/partitions/stats")
        now = time.time()
        rows = sample_rows(body)
        await self.in_worker(self.store.add_samples, now, rows, now - self.cfg.sample_retention_seconds)
        self.stats, self.last_sample_time = body, now
        for pid, size, _, _, _ in rows:
            self.metrics.partition_bytes.labels(str(pid)).set(size)

    async def interval_pass(self) -> None:
        """Forecast every partition; weave (modes weave and split); recalibrate."""
        if self.stats is None:
            return
        s = self.cfg.settings
        now = time.time()
        parts = [int(p["id"]) for p in self.stats.get("partitions", [])]
        self.forecasts = await self.in_worker(self.forecast_all, parts, now, s)
        self.last_forecast_time = now
        for pid, fc in self.forecasts.items():
            self.metrics.probability.labels(str(pid)).set(fc.probability)
        if s.weaving and self.shadow_present():
            await self.guarded("weave", lambda: self.weave_pass(now, s))
        # Each partition is recalibrated every CALIBRATE_EVERY passes (spread over the passes): the backtests are
        # the pass's most expensive part, and a calibrator moves slowly.
        due = [p for p in parts if (p + self.passes) % CALIBRATE_EVERY == CALIBRATE_EVERY - 1]  # not at the first
        await self.guarded("calibrate", lambda: self.in_worker(self.recalibrate, due, s))
        await self.in_worker(self.refresh_gauges)
        self.passes += 1

    # ---- forecasting --------------------------------------------------------------------------------------
    def forecast_all(self, parts: list[int], now: float, s: WeaveSettings) -> dict[int, SplitForecast]:
        """The forecast of each partition from its stored samples and calibrator."""
        out: dict[int, SplitForecast] = {}
        for pid in parts:
            samples = to_samples(self.store.samples(pid, limit=MAX_SAMPLES))
            stored = self.store.calibration(pid, s.model)
            out[pid] = forecast_split(samples, now, s.prediction_window_seconds, thresholds(s), s.model,
                                      Calibrator.from_json(stored) if stored else None)
        return out

    def recalibrate(self, parts: list[int], s: WeaveSettings) -> None:
        """Refit each partition's calibrator on its own backtest (bounded: at most MAX_BACKTESTS forecasts)."""
        for pid in parts:
            rows = self.store.samples(pid, limit=MAX_SAMPLES)
            if len(rows) < 2:
                continue
            span = rows[-1][0] - rows[0][0] - s.prediction_window_seconds
            if span <= 0:
                continue
            step = max(s.interval_seconds, span / MAX_BACKTESTS)
            pairs = backtest_pairs(to_samples(rows), s.prediction_window_seconds, thresholds(s), s.model, step)
            if len(pairs) < MIN_CALIBRATION_PAIRS:
                continue
            cal = Calibrator()
            cal.fit([p for p, _ in pairs], [h for _, h in pairs])
            self.store.save_calibration(pid, s.model, cal.to_json())

    # ---- weaving ------------------------------------------------------------------------------------------
    async def weave_pass(self, now: float, s: WeaveSettings) -> None:
        """For every forecast at or above the threshold: its weave (continued or new) gets the next point. A weave
        whose split happened (a partition's range now equals one of its halves) is kept and extended whatever the
        forecasts say: it is the base a restore of the new partitions looks for."""
        parts = {int(p["id"]): p for p in (self.stats or {}).get("partitions", [])}
        owned = {tuple(parse_id(x) for x in r) for p in parts.values() for r in p.get("ranges", [])}
        active: dict[int, Weave] = {}
        for w in await self.in_worker(self.store.weaves, ACTIVE):
            if retention.realized(w.lower, w.upper, owned):
                await self.in_worker(self.next_point, w, s, now)
            else:
                active[w.partition] = w
        for pid, fc in self.forecasts.items():
            w = active.get(pid)
            if fc.probability < s.confidence_threshold:
                if w is not None:
                    since = self.below_since.setdefault(w.id, now)
                    if retention.stale(since, now, s.interval_seconds):
                        await self.in_worker(self.store.retire_weave, w.id, DROPPED)
                continue
            if w is not None:
                self.below_since.pop(w.id, None)
            weave = await self._weave_for(pid, parts.get(pid), w, fc, now, s)
            if weave is not None:
                await self.in_worker(self.next_point, weave, s, now)
        self.last_weave_time = now

    async def _weave_for(self, pid: int, part: dict[str, Any] | None, w: Weave | None, fc: SplitForecast,
                         now: float, s: WeaveSettings) -> Weave | None:
        """The weave to extend: the active one if its split key stays in the same bucket, else a new one."""
        if part is None or len(part.get("ranges", [])) != 1:
            return None
        start, end = (parse_id(x) for x in part["ranges"][0])
        st = await self.fetch(f"/v1/ranges/stats?keyspace={format_id(start)}-{format_id(end)}")
        median = st.get("medianKeyspaceId")
        key = retention.split_key(start, end, None if median is None else parse_id(median))
        if key is None:
            return None
        if s.split.min_partition_bytes:
            lower = await self.fetch(f"/v1/ranges/stats?keyspace={format_id(start)}-{format_id(key - 1)}")
            if not retention.halves_big_enough(int(st["bytes"]), int(lower["bytes"]), s.split.min_partition_bytes):
                return None
        ref = None if w is None else retention.ActiveWeave(w.id, w.partition, w.split_key, w.lower[0], w.upper[1])
        if w is not None and retention.continues(ref, start, end, key):
            await self.in_worker(self.store.update_forecast, w.id, fc.probability, fc.predicted_time)
            return w
        if w is not None:
            await self.in_worker(self.store.retire_weave, w.id, SUPERSEDED)
        lo, up = retention.halves(start, end, key)
        new = Weave(retention.weave_id(pid, now), pid, key, lo, up, fc.probability, fc.predicted_time,
                    s.prediction_window_seconds, now, ACTIVE)
        await self.in_worker(self.store.add_weave, new)
        return new

    def next_point(self, weave: Weave, s: WeaveSettings, now: float) -> None:
        """Both halves at the newest shadow snapshot (full first, then differential), then retention."""
        conn = weaving.open_shadow(self.shadow_path)
        try:
            snap = weaving.newest_snapshot(conn)
            points = self.store.points(weave.id)
            last = {p.half: p for p in points}  # ordered by time: the newest per half wins
            if snap is None or (last and max(p.point_time for p in last.values()) >= snap.boundary):
                return
            ranges = {LOWER: weave.lower, UPPER: weave.upper}
            full = len(last) < 2
            rows = (weaving.full_rows(conn, snap.id, ranges) if full
                    else weaving.diff_rows(conn, last[LOWER].lsn, snap.lsn, ranges))
        finally:
            conn.close()
        keep = self.rewrap_target()
        if stale_rows([r for half in rows.values() for r in half], keep):
            log.info("weave %s: the history still holds versions older than %s; the point waits", weave.id, keep)
            return
        self.store.add_points([(weave.id, half, snap.boundary, snap.lsn, FULL if full else DIFFERENTIAL,
                                None if full else last[half].id, snap.id, rows[half]) for half in (LOWER, UPPER)])
        plan = retention.plan_retention(
            [retention.PointRef(p.id, p.half, p.point_time, p.kind) for p in self.store.points(weave.id)],
            s.retention.max_snapshots, s.retention.max_age_seconds, now)
        if plan.drop:
            self.store.apply_retention(plan.materialize, plan.drop)

    # ---- rewrap -------------------------------------------------------------------------------------------
    def rewrap_target(self) -> int | None:
        """The key version the last rewrap asked for (points holding older versions are not stored)."""
        st = self.store.get_meta(REWRAP_META)
        return None if not st else st.get("target")

    def rewrap(self, target: int) -> dict[str, Any]:
        """Drop every weave's points that hold a key version other than ``target`` (the weave stays active and
        is rebuilt from the rewrapped history at the next pass); persisted, so a restart keeps the target."""
        affected = {p.weave for p in self.store.points() if p.id in set(
            self.store.points_with_versions_other_than(target))}
        dropped = 0
        for wid in sorted(affected):
            ids = [p.id for p in self.store.points(wid)]
            self.store.delete_points(ids)
            dropped += len(ids)
        now = time.time()
        st = {"state": "idle", "target": target, "dropped": dropped, "started": now, "finished": now,
              "rewrapped": 0, "failed": 0, "passes": 1, "lastError": None, "problems": []}
        self.store.set_meta(REWRAP_META, st)
        return self.rewrap_progress()

    def rewrap_progress(self) -> dict[str, Any]:
        """The rewrap state plus woven rows per key version (the shadow's ``GET /v1/rewrap`` shape)."""
        st = self.store.get_meta(REWRAP_META) or {"state": "idle", "target": None, "dropped": 0, "started": None,
                                                  "finished": None, "rewrapped": 0, "failed": 0, "passes": 0,
                                                  "lastError": None, "problems": []}
        counts = self.store.version_counts()
        target = st.get("target")
        remaining = sum(n for v, n in counts.items() if v != target) if target is not None else None
        return {**st, "blocks": {str(v): n for v, n in sorted(counts.items())}, "remaining": remaining}

    def refresh_gauges(self) -> None:
        """Woven bytes, points, weaves and rows per key version."""
        self.metrics.woven_bytes.set(self.store.total_bytes())
        self.metrics.points.set(len(self.store.points()))
        self.metrics.weaves.set(len(self.store.weaves(ACTIVE)))
        self.metrics.versions.clear()
        for v, n in self.store.version_counts().items():
            self.metrics.versions.labels(str(v)).set(n)
