"""Health of every copy: ``GET /v1/health`` of every member's nodes every probe interval, kept in ``risk.sqlite3``
(7 days), with each node's own ``GET /v1/health/history`` loaded at start (docs/tokens.md, "Health and risk").

A sample is stored as the node's JSON document plus ``up`` (the probe answered 200 in time); the model's points are
made from it with shardnode/unavailability's ``point_from_health`` when they are needed.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from .config import ServiceConfig, ShardCopy
from .peers import Peers

if TYPE_CHECKING:
    from chronoshard.shardnode.unavailability.types import HealthPoint

log = logging.getLogger("chronoshard.tokens")

KEEP_SECONDS = 7 * 86400.0
# In memory per copy: the model reads the last hour; 2 h at 10-s samples leaves room for slower intervals.
MEMORY_SAMPLES = 2000
HISTORY_PAGE = 1000


@dataclass(frozen=True)
class Sample:
    """One probe of one copy."""

    copy_id: str
    time: float
    up: bool
    doc: dict[str, Any]


class HealthStore:
    """risk.sqlite3: the samples of every copy (the model's training data)."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS samples (copy TEXT NOT NULL, time REAL NOT NULL, up INTEGER "
                        "NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (copy, time))")

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    def add(self, samples: Iterable[Sample]) -> None:
        """Store samples (a time seen twice for a copy is kept once)."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR IGNORE INTO samples VALUES (?,?,?,?)",
                                [(s.copy_id, s.time, int(s.up), json.dumps(s.doc)) for s in samples])

    def last_time(self, copy_id: str) -> float:
        """The newest sample's time of a copy (0 without one)."""
        r = self.db.execute("SELECT MAX(time) FROM samples WHERE copy = ?", (copy_id,)).fetchone()
        return float(r[0]) if r and r[0] is not None else 0.0

    def copies(self) -> list[str]:
        """Every copy with samples."""
        return [r[0] for r in self.db.execute("SELECT DISTINCT copy FROM samples")]

    def load(self, copy_id: str, since: float | None = None) -> list[Sample]:
        """A copy's samples after ``since`` (None: all), oldest first."""
        rows = self.db.execute("SELECT time, up, doc FROM samples WHERE copy = ? AND time > ? ORDER BY time",
                               (copy_id, float("-inf") if since is None else since)).fetchall()
        return [Sample(copy_id, float(t), bool(u), json.loads(d)) for t, u, d in rows]

    def span(self) -> float:
        """Seconds between the oldest and the newest sample (how much history there is)."""
        r = self.db.execute("SELECT MIN(time), MAX(time) FROM samples").fetchone()
        return float(r[1] - r[0]) if r and r[0] is not None else 0.0

    def count(self) -> int:
        """Samples kept."""
        return int(self.db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def prune(self, now: float) -> None:
        """Drop samples older than 7 days."""
        self.db.execute("DELETE FROM samples WHERE time < ?", (now - KEEP_SECONDS,))


class Histories:
    """The recent samples of every copy in memory, newest last, each also as the model's point (made once: making
    a copy's 720 points again for every prediction took tens of milliseconds on the event loop)."""

    def __init__(self) -> None:
        self.by_copy: dict[str, deque[Sample]] = {}
        self.points_by_copy: dict[str, deque[HealthPoint]] = {}

    def add(self, sample: Sample) -> None:
        """Append (samples older than the newest held are dropped: the order is time)."""
        from chronoshard.shardnode.unavailability.types import point_from_health

        q = self.by_copy.setdefault(sample.copy_id, deque(maxlen=MEMORY_SAMPLES))
        if not q or sample.time > q[-1].time:
            q.append(sample)
            points = self.points_by_copy.setdefault(sample.copy_id, deque(maxlen=MEMORY_SAMPLES))
            points.append(point_from_health(sample.doc, sample.time, sample.up))

    def points(self, copy_id: str, last: int) -> list[HealthPoint]:
        """A copy's newest ``last`` points, oldest first."""
        q = self.points_by_copy.get(copy_id)
        if not q:
            return []
        return list(q)[-last:]

    def last(self, copy_id: str) -> Sample | None:
        """The newest sample of a copy."""
        q = self.by_copy.get(copy_id)
        return q[-1] if q else None

    def samples(self, copy_id: str) -> list[Sample]:
        """A copy's samples, oldest first."""
        return list(self.by_copy.get(copy_id, ()))


async def probe(peers: Peers, copy: ShardCopy, timeout: float) -> Sample:
    """One ``GET /v1/health`` of a copy's node: up when it answered 200 in time with a JSON object."""
    now = time.time()
    try:
        status, body = await peers.get_json(copy.node + "/v1/health", copy.server_name, timeout)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
        return Sample(copy.copy_id, now, False, {})
    ok = status == 200 and isinstance(body, dict)
    return Sample(copy.copy_id, now, ok, body if ok and isinstance(body, dict) else {})


async def load_history(peers: Peers, copy: ShardCopy, since: float, timeout: float) -> list[Sample]:
    """The node's own kept samples after ``since`` (``GET /v1/health/history``, paged); [] when unreachable."""
    out: list[Sample] = []
    for _ in range(100):  # at most 100 pages per copy at start
        url = f"{copy.node}/v1/health/history?since={since}&limit={HISTORY_PAGE}"
        try:
            status, body = await peers.get_json(url, copy.server_name, timeout)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            break
        docs = body.get("samples") if status == 200 and isinstance(body, dict) else None
        if not isinstance(docs, list) or not docs:
            break
        for doc in docs:
            t = doc.get("time") if isinstance(doc, dict) else None
            if isinstance(t, int | float) and not isinstance(t, bool):
                out.append(Sample(copy.copy_id, float(t), True, doc))
        since = out[-1].time if out else since
        if len(docs) < HISTORY_PAGE:
            break
    return out


def store_healthy(cfg: ServiceConfig, histories: Histories, store: str) -> bool:
    """Every shard of ``store`` answered its last probe (a shard without a sample yet is not healthy)."""
    member = cfg.member(store)
    if member is None or not member.shards:
        return False
    for copy in member.shards:
        last = histories.last(copy.copy_id)
        if last is None or not last.up:
            return False
    return True
