"""The node's health (docs/mirroring.md, "GET /v1/health"): ``GET /v1/health`` (a sample taken now) and
``GET /v1/health/history`` (the samples kept in ``health.sqlite3``, one every ``healthSampleSeconds``).

A sample: uptime, restarts (process starts on this volume), the data volume's capacity (``os.statvfs``), the
node's own answers over the last 60 s (5xx are errors; the probes, ``/metrics`` and the health routes themselves
are not counted), the latency of its last 1024 acknowledged block writes (p50/p99, ms), and the replication
fields from the node's replication state. ``build_sample``, ``percentile`` and the windows are pure.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from chronoshard.shardnode.auth.policy import Access
from chronoshard.shardnode.serving.http_common import ApiError, float_query, int_query
from chronoshard.shardnode.serving.scaffold import Route
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .healthstore import HealthStore

if TYPE_CHECKING:
    from .lease import LeaseKeeper
    from .source import SourceGates

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60
LATENCY_SAMPLES = 1024
SAMPLE_SECONDS = 10.0  # the role document's healthSampleSeconds when it names none
HISTORY_LIMIT, MAX_HISTORY_LIMIT = 1000, 10_000
# Not the node's work: the kubelet's probes, scrapes, and the health routes (a monitor would count itself).
UNCOUNTED = ("/healthz", "/readyz", "/metrics", "/v1/health")
BLOCK_WRITE_PREFIX = "/v1/tables/"
# Refusals that are a mirror's or a fenced node's role, not trouble: a client still writing to the old primary
# after a switchover must not make it look unhealthy (and so worsen the failover decisions).
ROLE_REFUSALS = ("not_primary", "fenced", "mirror_seeding")


# ---- pure -------------------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (0-100) of ``values`` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class RequestWindow:
    """Answers and 5xx answers over the last ``window`` seconds, in one-second buckets."""

    def __init__(self, window: int = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.window, self.clock = window, clock
        self.buckets: collections.deque[list[int]] = collections.deque()  # [second, total, errors]

    def observe(self, status: int) -> None:
        """Count one answer."""
        second = int(self.clock())
        if not self.buckets or self.buckets[-1][0] != second:
            self.buckets.append([second, 0, 0])
            self._expire(second)
        bucket = self.buckets[-1]
        bucket[1] += 1
        bucket[2] += status >= 500

    def _expire(self, second: int) -> None:
        while self.buckets and self.buckets[0][0] <= second - self.window:
            self.buckets.popleft()

    def totals(self) -> tuple[int, int]:
        """(answers, 5xx answers) in the window now."""
        self._expire(int(self.clock()))
        return sum(b[1] for b in self.buckets), sum(b[2] for b in self.buckets)


def capacity(path: Path) -> dict[str, Any]:
    """The volume holding ``path``: used and total bytes and their fraction."""
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return {"usedBytes": used, "totalBytes": total, "fraction": round(used / total, 6) if total else None}


def replication_fields(state: dict[str, Any] | None) -> dict[str, Any]:
    """The ``replication`` part of a sample from ``GET /v1/replication``'s body (None-safe): a mirror's lag is
    its source's; a primary's is its most caught-up mirror's (None without mirrors)."""
    if not state:
        return {"role": None, "appliedLsn": None, "lagLsn": None, "lagSeconds": None, "sourceReachable": None}
    source = state.get("source") or {}
    mirrors = state.get("mirrors") or []
    if state.get("role") == "mirror":
        lag_lsn, lag_s, reachable = source.get("lagLsn"), source.get("lagSeconds"), source.get("reachable")
    else:
        lag_lsn = min((m["lagLsn"] for m in mirrors), default=None)
        lag_s = min((m["lagSeconds"] for m in mirrors), default=None)
        reachable = None
    return {"role": state.get("role"), "appliedLsn": state.get("appliedLsn"), "lagLsn": lag_lsn,
            "lagSeconds": lag_s, "sourceReachable": reachable}


def build_sample(*, now: float, uptime: float, restarts: int, cap: dict[str, Any], requests: tuple[int, int],
                 latencies: Sequence[float], replication: dict[str, Any] | None) -> dict[str, Any]:
    """One health sample in the contract's shape."""
    total, errors = requests
    return {"time": round(now, 3), "uptimeSeconds": round(uptime, 3), "restarts": restarts, "capacity": cap,
            "requests": {"total": total, "errors": errors, "errorRate": round(errors / total, 6) if total else 0.0,
                         "windowSeconds": WINDOW_SECONDS},
            "writeLatencyMs": {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99)},
            "replication": replication_fields(replication)}


# ---- the monitor ------------------------------------------------------------------------------------------
class HealthMonitor:
    """One node's health: the counters its middleware feeds, samples now and stored every interval.

    ``replication()`` is the node's ``GET /v1/replication`` body (or None); ``interval()`` the seconds between
    stored samples (the role document's healthSampleSeconds)."""

    def __init__(self, data_dir: Path, replication: Callable[[], Awaitable[dict[str, Any] | None]],
                 interval: Callable[[], float | None], clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.data_dir, self.replication, self.interval = Path(data_dir), replication, interval
        self.clock, self.wall = clock, wall
        self.started = clock()
        self.requests = RequestWindow(clock=clock)
        self.latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_SAMPLES)
        self.store: HealthStore | None = None
        self.restarts = 0

    async def start(self) -> None:
        """Open ``health.sqlite3`` and count this start."""
        self.store = await asyncio.to_thread(HealthStore, self.data_dir)
        self.restarts = await asyncio.to_thread(self.store.record_start)

    async def close(self) -> None:
        """Close ``health.sqlite3``."""
        if self.store is not None:
            await asyncio.to_thread(self.store.close)
            self.store = None

    async def sample(self) -> dict[str, Any]:
        """A sample taken now."""
        try:
            repl = await self.replication()
        except ApiError:
            repl = None  # the store is not open yet: no replication fields, the rest still says something
        cap = await asyncio.to_thread(capacity, self.data_dir)
        return build_sample(now=self.wall(), uptime=self.clock() - self.started, restarts=self.restarts, cap=cap,
                            requests=self.requests.totals(), latencies=list(self.latencies), replication=repl)

    async def record(self) -> dict[str, Any]:
        """Take a sample and store it."""
        sample = await self.sample()
        if self.store is not None:
            await asyncio.to_thread(self.store.add, sample)
        return sample

    async def run(self) -> None:
        """Store a sample every interval until cancelled (a failed one is logged; the next one is tried)."""
        last = self.clock()
        while True:
            # Re-read at least every second: a new role document's healthSampleSeconds applies from the next one.
            interval = self.interval() or SAMPLE_SECONDS
            due = last + interval - self.clock()
            if due > 0:
                await asyncio.sleep(min(due, 1.0))
                continue
            last = self.clock()
            try:
                await self.record()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("health sample not stored: %s", type(exc).__name__)

    def middleware(self) -> Any:
        """Count every answer (not the probes, scrapes and health routes) and time acknowledged block writes."""
        @web.middleware
        async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
            path = request.path
            if path.startswith(UNCOUNTED):
                return await handler(request)
            started = self.clock()
            status = 499  # the client went away before an answer (cancelled): not the node's error
            try:
                resp = await handler(request)
                status = resp.status
                return resp
            except Exception as exc:  # ApiError, HTTPException: the status they will be answered with
                status = int(getattr(exc, "status", 500))
                if getattr(exc, "code", None) in ROLE_REFUSALS:
                    status = 421  # answered 503, but the node is doing its job: not an error of this node
                raise
            finally:
                self.requests.observe(status)
                if request.method in ("PUT", "DELETE") and path.startswith(BLOCK_WRITE_PREFIX) and status < 300:
                    self.latencies.append((self.clock() - started) * 1000)
        return middleware


# ---- metrics ----------------------------------------------------------------------------------------------
class SourceCollector:
    """The primary's write gates and Lease at scrape time: sync timeouts, lag refusals, whether writes are held,
    the most caught-up listed mirror's lag, whether the Lease allows writes (absent without a Lease)."""

    def __init__(self, source: SourceGates, lease: LeaseKeeper) -> None:
        self.source, self.lease = source, lease

    def describe(self) -> list[Metric]:
        """Names only (registering reads no state)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Current values."""
        s = self.source
        yield CounterMetricFamily("chronoshard_node_sync_timeouts", "Sync writes no mirror acknowledged in time "
                                  "(503 sync_timeout, committed)", value=s.sync_timeouts)
        yield CounterMetricFamily("chronoshard_node_mirror_lag_refusals", "Writes refused after holding for the "
                                  "mirrors' lag (503 mirror_lag)", value=s.lag_refusals)
        yield GaugeMetricFamily("chronoshard_node_writes_held", "1 while new writes wait for the mirrors' lag",
                                value=1 if s.lagging else 0)
        if s.lag is not None:
            yield GaugeMetricFamily("chronoshard_node_mirror_lag_seconds", "Lag of the most caught-up listed "
                                    "mirror slot", value=s.lag)
        lease = self.lease.describe()["lease"]
        if lease is not None:
            yield GaugeMetricFamily("chronoshard_node_lease_held", "1 while the primary Lease allows writes",
                                    value=1 if lease["held"] else 0)


# ---- routes -----------------------------------------------------------------------------------------------
def routes(monitor_of: Callable[[web.Request], HealthMonitor]) -> list[Route]:
    """``GET /v1/health`` and ``GET /v1/health/history`` (REPLICATION: pods, operator, peer replicas)."""

    async def health(request: web.Request) -> web.Response:
        return web.json_response(await monitor_of(request).sample())

    async def history(request: web.Request) -> web.Response:
        monitor = monitor_of(request)
        since = float_query(request, "since", 0.0, 0.0, 1e11)
        limit = int_query(request, "limit", HISTORY_LIMIT, 1, MAX_HISTORY_LIMIT)
        if monitor.store is None:
            raise ApiError(503, "not_ready", "the health history is not open yet")
        samples = await asyncio.to_thread(monitor.store.history, since, limit)
        return web.json_response({"samples": samples})

    return [Route("GET", "/v1/health", health, Access.REPLICATION),
            Route("GET", "/v1/health/history", history, Access.REPLICATION)]
