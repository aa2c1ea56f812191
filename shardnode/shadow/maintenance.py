"""The history's housekeeping, once per snapshot interval: take the snapshot that is due, move versions down the
tiers and expire the oldest (HistoryStore.compact), and, when shadow.json names a bucket, export the cold
segments not exported yet to object storage (backup.export_batch: segment first, manifest last).

The export cursor (the highest cold segment id exported) is kept in the history's ``meta`` table under
``coldExport`` and moved after each segment's manifest is written, so a crash repeats at most one upload (an
object named by its content: the same bytes again). Objects of shard i go under ``<cold.prefix>/<i>/``, i the
ordinal of ``$POD_NAME``, as the bootstrap reads them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from chronoshard.shardnode.serving import clock
from chronoshard.shardnode.serving.routing import shard_index_from_pod_name

from . import backup
from .config import ColdSettings, ShadowConfig
from .history import HistoryStore
from .historydb import get_meta, set_meta
from .objectstore import ObjectStore

log = logging.getLogger(__name__)

EXPORT_META = "coldExport"
EXPORT_BATCH = 10  # cold segments read per pass step


def shard_cold_settings(cold: ColdSettings, shard: int | None) -> ColdSettings:
    """The shard's own place in the bucket: ``<prefix>/<shard>`` (the ConfigMap's prefix stops at the ShardSet)."""
    if shard is None:
        return cold
    return dataclasses.replace(cold, prefix="/".join(p for p in (cold.prefix.strip("/"), str(shard)) if p))


def pod_shard(pod_name: str | None) -> int | None:
    """This pod's shard: the ordinal at the end of ``$POD_NAME`` (None outside a StatefulSet)."""
    try:
        return shard_index_from_pod_name(pod_name) if pod_name else None
    except ValueError:
        return None


class Maintenance:
    """Runs the passes; ``status()`` is the ``maintenance`` part of ``GET /v1/status``."""

    def __init__(self, cfg: ShadowConfig, history: HistoryStore, *,
                 store_factory: Callable[[ColdSettings], ObjectStore] = ObjectStore,
                 shard: int | None = None, executor: Executor | None = None) -> None:
        self.cfg, self.history, self.store_factory = cfg, history, store_factory
        self.executor = executor  # where passes run (None: the loop's default executor)
        self.shard = shard if shard is not None else pod_shard(os.environ.get("POD_NAME"))
        self.last_run: float | None = None
        self.last_result: dict[str, Any] = {}
        self.error: str | None = None
        self._store: tuple[ColdSettings, ObjectStore] | None = None
        self.exported_segment: int | None = None  # known after the first export pass

    def status(self) -> dict[str, Any]:
        """When the last pass ran, what it did, and its error (never a credential)."""
        return {"lastRun": self.last_run, "lastResult": self.last_result, "error": self.error,
                "coldExportedSegment": self.exported_segment}

    def exported(self) -> int:
        """The highest cold segment id already in object storage (0: none)."""
        with self.history.read() as conn:
            return int((get_meta(conn, EXPORT_META) or {}).get("segment", 0))

    def run_once(self, now: float | None = None) -> dict[str, Any]:
        """One pass (blocking: call it in a worker thread)."""
        now = clock.wall_time() if now is None else now
        s = self.cfg.settings
        snap = self.history.take_snapshot(s.snapshot.interval_seconds, s.snapshot.full_every, s.snapshot.granularity,
                                          now)
        result: dict[str, Any] = {"snapshot": None if snap is None else snap.kind}
        result |= self.history.compact(now, s.retention, s.snapshot.interval_seconds)
        result["exported"] = self.export() if s.cold is not None else 0
        return result

    def _object_store(self, cold: ColdSettings) -> ObjectStore:
        cold = shard_cold_settings(cold, self.shard)
        if self.cfg.objectstore_dir is not None:
            cold = dataclasses.replace(cold, credentials_dir=str(self.cfg.objectstore_dir))
        if self._store is None or self._store[0] != cold:
            self._store = (cold, self.store_factory(cold))  # new settings: a new client
        return self._store[1]

    def export(self) -> int:
        """Upload the cold segments after the export cursor; how many went."""
        cold = self.cfg.settings.cold
        assert cold is not None
        store = self._object_store(cold)
        done = 0
        while True:
            segments = self.history.cold_segments(after=self.exported(), limit=EXPORT_BATCH)
            if not segments:
                return done
            for seg in segments:
                if seg.rows:
                    backup.export_batch(store, backup.ExportBatch(seg.rows, seg.frames, self.history.dictionaries()),
                                        labels={"shard": str(self.shard) if self.shard is not None else ""})
                with self.history.write() as conn:
                    set_meta(conn, EXPORT_META, {"segment": seg.id, "time": time.time()})
                self.exported_segment = seg.id
                done += 1

    async def run(self) -> None:
        """A pass every snapshot interval until cancelled; a failed pass is logged and retried at the next."""
        while True:
            await asyncio.sleep(self.cfg.settings.snapshot.interval_seconds)
            try:
                self.last_result = await asyncio.get_running_loop().run_in_executor(self.executor, self.run_once)
                self.error = None
            except Exception as exc:  # object storage away, a frame not re-sealable yet: the next pass retries
                self.error = f"{type(exc).__name__}: {exc}"
                log.error("history maintenance failed: %s", self.error)
            self.last_run = time.time()
