"""The decryption cache: plaintext blocks in memory under a byte budget, read-through and write-through."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from chronoshard.shardnode.eviction import EvictionPolicy
from chronoshard.shardnode.keys.crypto import IntegrityError, open_block
from chronoshard.shardnode.keys.keyring import KeyNotHeld, Keyring, MissingKeyVersion
from chronoshard.shardnode.serving.metrics import CacheMetrics

from .node_client import FetchedFrame, NodeClient, UpstreamError

log = logging.getLogger(__name__)

BlockId = tuple[str, str]  # (table, key)
# Tables whose last-read key version is remembered for key prefetching; beyond this the oldest are forgotten.
LAST_VERSION_TABLES = 4096
# Blocks whose newest known LSN is remembered after their copy left the cache (an acknowledged write, a change
# seen by the tail, an eviction): a fetch answered before that change can never put its older copy back. Only
# fetches in flight at the time can carry one, so the most recent floors are all that is needed.
LSN_FLOORS = 65536


class NotFound(LookupError):
    """The node has no such block."""


class DecryptError(Exception):
    """A fetched block could not be opened: never served, never cached."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


@dataclass
class Entry:
    """One cached plaintext block."""

    value: bytes
    key_version: int
    lsn: int
    prefetched: bool = False
    used: bool = False


class _Fetch:
    """An in-flight node fetch shared by concurrent readers; ``stale`` once a write overtakes it."""

    __slots__ = ("future", "min_lsn", "stale")

    def __init__(self, future: asyncio.Future[Entry]) -> None:
        self.future = future
        self.stale = False
        self.min_lsn = 0  # a change at this LSN was seen while in flight: an older copy must not be cached


class BlockCache:
    """All state lives on the event loop thread, so no locks: writes poison in-flight fetches they overtake."""

    def __init__(self, budget: int, policy: EvictionPolicy, keyring: Callable[[], Keyring | None],
                 node: NodeClient, metrics: CacheMetrics, prefetch_budget_fraction: float = 0.5,
                 key_pool: Executor | None = None) -> None:
        self.budget = budget
        self.policy = policy
        self._keyring = keyring
        self.node = node
        self.metrics = metrics
        self.entries: dict[BlockId, Entry] = {}
        self.bytes = 0
        self.prefetch_budget = int(budget * prefetch_budget_fraction)
        self.unused_prefetch_bytes = 0
        self._inflight: dict[BlockId, _Fetch] = {}
        self._writing: Counter[BlockId] = Counter()
        self._invalidations = 0  # bumped by every invalidation: batch reads cache nothing if it moved
        self.key_pool = key_pool  # threads for key-cache misses (None: the loop's default executor)
        self._last_version: OrderedDict[str, int] = OrderedDict()
        self._floors: OrderedDict[BlockId, int] = OrderedDict()  # LSN_FLOORS: no copy older than this installs
        # Every change up to this LSN has been seen by the tail (so invalidated here): a read asking for
        # X-Chronoshard-Min-Lsn <= seen_lsn may be answered from memory (docs/mirroring.md, read-your-writes).
        self.seen_lsn = 0
        metrics.budget.set(budget)

    # ---- decrypt -------------------------------------------------------------------------------
    def decrypt(self, bid: BlockId, fetched: FetchedFrame, unwrap: bool = True) -> bytes:
        """Open a fetched frame with whichever version it names; DecryptError if it must not be served.

        ``unwrap=False`` raises KeyNotHeld rather than unwrapping a wrapped version's table key here.
        """
        ring = self._keyring()
        if ring is None:
            raise DecryptError(503, "no_keyring", "no keyring is loaded")
        try:
            value = open_block(ring, bid[0], bid[1], fetched.frame, fetched.checksum, unwrap=unwrap)
        except MissingKeyVersion as exc:
            self.metrics.decrypt_failures.labels("missing_key").inc()
            raise DecryptError(503, "key_version_missing", str(exc), keyVersion=exc.version) from None
        except IntegrityError as exc:
            self.metrics.decrypt_failures.labels(exc.reason).inc()
            raise DecryptError(502, "integrity_error",
                               f"block {bid[0]}/{bid[1]} from the node failed verification: {exc}",
                               reason=exc.reason) from None
        self.metrics.decrypts.labels(str(fetched.key_version)).inc()
        return value

    async def open(self, bid: BlockId, fetched: FetchedFrame) -> bytes:
        """Decrypt on the loop when the table key is in memory; a key-cache miss unwraps (a KMS round trip in
        general) and decrypts in a worker thread, so other requests keep being served meanwhile."""
        try:
            value = self.decrypt(bid, fetched, unwrap=False)
        except KeyNotHeld:
            loop = asyncio.get_running_loop()
            value = await loop.run_in_executor(self.key_pool, self.decrypt, bid, fetched)
        self._note_version(bid[0], fetched.key_version)
        return value

    def _note_version(self, table: str, version: int) -> None:
        last = self._last_version
        last[table] = version
        last.move_to_end(table)
        if len(last) > LAST_VERSION_TABLES:
            last.popitem(last=False)

    def last_version(self, table: str) -> int | None:
        """The key version the last successful read of ``table`` used (None if not remembered)."""
        return self._last_version.get(table)

    # ---- membership ----------------------------------------------------------------------------
    def _raise_floor(self, bid: BlockId, lsn: int) -> None:
        floors = self._floors
        floors[bid] = max(lsn, floors.get(bid, 0))
        floors.move_to_end(bid)
        if len(floors) > LSN_FLOORS:
            floors.popitem(last=False)

    def _drop(self, bid: BlockId, evicted: bool) -> None:
        entry = self.entries.pop(bid, None)
        if entry is None:
            return
        self._raise_floor(bid, entry.lsn)
        self.policy.remove(bid)
        self.bytes -= len(entry.value)
        if entry.prefetched and not entry.used:
            self.unused_prefetch_bytes -= len(entry.value)
            self.metrics.prefetch_wasted.inc()
        if evicted:
            self.metrics.evictions.inc()

    def install(self, bid: BlockId, entry: Entry, score: float = 0.0) -> bool:
        """Cache ``entry`` (evicting until it fits); False if it can never fit or would overrun prefetch budget."""
        size = len(entry.value)
        if size > self.budget:
            return False
        current = self.entries.get(bid)
        if current is not None and current.lsn > entry.lsn:
            return False  # never replace a newer copy with an older one
        if entry.lsn < self._floors.get(bid, 0):
            return False  # a newer version was acknowledged or seen since this copy was read
        if entry.prefetched and self.unused_prefetch_bytes + size > self.prefetch_budget:
            self.metrics.prefetch_dropped.labels("budget").inc()
            return False
        self._drop(bid, evicted=False)
        while self.bytes + size > self.budget:
            self._drop(self.policy.victim(), evicted=True)  # type: ignore[arg-type]
        self.entries[bid] = entry
        self.policy.insert(bid, size, score)
        self.bytes += size
        if entry.prefetched:
            self.unused_prefetch_bytes += size
        self._gauges()
        return True

    def resize(self, budget: int, prefetch_budget_fraction: float) -> None:
        """Apply a new byte budget, evicting until the held blocks fit."""
        self.budget = budget
        self.prefetch_budget = int(budget * prefetch_budget_fraction)
        while self.bytes > self.budget and self.entries:
            self._drop(self.policy.victim(), evicted=True)  # type: ignore[arg-type]
        self.metrics.budget.set(budget)
        self._gauges()

    def replace_policy(self, policy: EvictionPolicy) -> None:
        """Switch eviction policy, keeping the cached blocks (their history starts afresh)."""
        for bid, entry in self.entries.items():
            policy.insert(bid, len(entry.value))
        self.policy = policy

    def invalidate(self, bid: BlockId, newer_than: int | None = None) -> None:
        """Forget a cached block (only if its LSN is older than ``newer_than`` when given)."""
        self._invalidations += 1
        if newer_than is not None:
            self._raise_floor(bid, newer_than)
        fetch = self._inflight.get(bid)
        if fetch is not None:
            if newer_than is None:
                fetch.stale = True
                del self._inflight[bid]
            else:
                fetch.min_lsn = max(fetch.min_lsn, newer_than)
        entry = self.entries.get(bid)
        if entry is not None and (newer_than is None or entry.lsn < newer_than):
            self._drop(bid, evicted=False)
            self._gauges()

    def invalidate_all(self) -> None:
        """Forget every cached block and keep no in-flight fetch's result."""
        for bid in list(self._inflight):
            self.invalidate(bid)
        for bid in list(self.entries):
            self.invalidate(bid)
        # Every fetch in flight is stale now, so no old copy can come back: the floors (which a node whose
        # log started again at a lower LSN would otherwise keep refusing) can go.
        self._floors.clear()

    def _gauges(self) -> None:
        self.metrics.bytes.set(self.bytes)
        self.metrics.entries.set(len(self.entries))

    # ---- reads ---------------------------------------------------------------------------------
    def lookup(self, bid: BlockId) -> Entry | None:
        """A hit (counts as an access for the policy and the prefetch metrics) or None."""
        entry = self.entries.get(bid)
        if entry is None:
            return None
        self.policy.touch(bid)
        if entry.prefetched and not entry.used:
            entry.used = True
            self.unused_prefetch_bytes -= len(entry.value)
            self.metrics.prefetch_used.inc()
        return entry

    def has_seen(self, min_lsn: int | None) -> bool:
        """True if memory may answer a read that needs the node's changes up to ``min_lsn`` (None: any read)."""
        return min_lsn is None or min_lsn <= self.seen_lsn

    async def get(self, table: str, key: str, min_lsn: int | None = None,
                  headers: dict[str, str] | None = None) -> tuple[bytes, bool]:
        """(plaintext, hit?) — from memory, else fetched, decrypted, verified and cached.

        ``min_lsn``: the read needs every change up to that LSN; unless the tail has seen it, the read goes to
        the node with ``headers`` (the Min-LSN and wait headers), whose refusal is raised as UpstreamError.
        """
        bid = (table, key)
        if not self.has_seen(min_lsn):
            self.metrics.misses.inc()
            return (await self._fetch_fresh(bid, headers or {})).value, False
        entry = self.lookup(bid)
        if entry is not None:
            self.metrics.hits.inc()
            return entry.value, True
        self.metrics.misses.inc()
        entry = await self._fetch(bid, prefetch=False)
        return entry.value, False

    async def _fetch(self, bid: BlockId, prefetch: bool, score: float = 0.0) -> Entry:
        fetch = self._inflight.get(bid)
        if fetch is not None and not fetch.stale:
            return await asyncio.shield(fetch.future)
        loop = asyncio.get_running_loop()
        fetch = _Fetch(loop.create_future())
        self._inflight[bid] = fetch
        try:
            fetched = await self.node.get_frame(*bid)
            if fetched is None:
                raise NotFound(f"no block {bid[0]}/{bid[1]}")
            entry = Entry(await self.open(bid, fetched), fetched.key_version, fetched.lsn, prefetched=prefetch)
        except BaseException as exc:
            if not fetch.future.done():
                fetch.future.set_exception(exc)
                fetch.future.exception()  # mark retrieved: waiters are optional
            raise
        finally:
            if self._inflight.get(bid) is fetch:
                del self._inflight[bid]
        if not fetch.stale and not self._writing[bid] and entry.lsn >= fetch.min_lsn:
            self.install(bid, entry, score)
        fetch.future.set_result(entry)
        return entry

    async def _fetch_fresh(self, bid: BlockId, headers: dict[str, str]) -> Entry:
        """A fetch of its own (a shared one may have been sent before the LSN the read needs was applied);
        cached only if nothing was invalidated meanwhile, as in ``get_many``."""
        epoch = self._invalidations
        fetched = await self.node.get_frame(*bid, headers=headers)
        if fetched is None:
            raise NotFound(f"no block {bid[0]}/{bid[1]}")
        entry = Entry(await self.open(bid, fetched), fetched.key_version, fetched.lsn)
        if epoch == self._invalidations and not self._writing[bid] and bid not in self._inflight:
            self.install(bid, entry)
        return entry

    async def get_many(self, table: str, keys: list[str], min_lsn: int | None = None,
                       headers: dict[str, str] | None = None) -> list[tuple[str, Any]]:
        """Batch read: per key ("hit"|"miss", plaintext) or ("absent", None) or ("error", DecryptError/dict).

        ``min_lsn``/``headers``: as for ``get``; memory answers nothing unless the tail has seen ``min_lsn``.
        """
        out: list[tuple[str, Any]] = [("", None)] * len(keys)
        missing: list[int] = []
        seen = self.has_seen(min_lsn)
        for i, k in enumerate(keys):
            entry = self.lookup((table, k)) if seen else None
            if entry is not None:
                self.metrics.hits.inc()
                out[i] = ("hit", entry.value)
            else:
                missing.append(i)
        if missing:
            self.metrics.misses.inc(len(missing))
            epoch = self._invalidations
            frames = await self.node.get_frames(table, [keys[i] for i in missing], headers)
            opened: list[tuple[int, BlockId, Entry]] = []
            for i, fetched in zip(missing, frames, strict=True):
                bid = (table, keys[i])
                if fetched is None:
                    out[i] = ("absent", None)
                elif isinstance(fetched, dict):
                    out[i] = ("error", fetched)
                else:
                    try:
                        opened.append((i, bid, Entry(await self.open(bid, fetched), fetched.key_version,
                                                     fetched.lsn)))
                    except DecryptError as exc:
                        out[i] = ("error", exc)
            # Anything invalidated meanwhile (a write, a change seen by the tail) may make these copies
            # stale in a way a per-block LSN check cannot see, so then they are returned but not cached.
            # Checked after the decrypts: a key-cache miss waits for an unwrap in a thread.
            cacheable = epoch == self._invalidations
            for i, bid, entry in opened:
                if cacheable and not self._writing[bid] and bid not in self._inflight:
                    self.install(bid, entry)
                out[i] = ("miss", entry.value)
        return out

    async def prefetch(self, table: str, key: str, score: float) -> bool:
        """Fetch into the cache ahead of a read; True if a node fetch was issued."""
        bid = (table, key)
        if bid in self.entries or bid in self._inflight:
            self.metrics.prefetch_dropped.labels("cached").inc()
            return False
        self.metrics.prefetch_issued.inc()
        try:
            await self._fetch(bid, prefetch=True, score=score)
        except (NotFound, DecryptError, UpstreamError):
            self.metrics.prefetch_wasted.inc()  # a wrong prediction or a bad block: fetched for nothing
            return True
        entry = self.entries.get(bid)
        if entry is None or not entry.prefetched:
            # Not kept (over the prefetch budget, overtaken by a write, or larger than the cache).
            self.metrics.prefetch_wasted.inc()
        return True

    async def prefetch_range(self, table: str, keys: list[str], scores: list[float]) -> int:
        """Fetch a read-ahead range (the next blocks of a run) in one node request; the blocks fetched.

        Blocks already cached or being fetched are left out; each one kept is admitted as prefetched on its own
        score (the policy lets a likelier block wait longer for its read). As in `get_many`, nothing is cached
        if an invalidation happened while the batch was in flight.
        """
        todo = [(k, s) for k, s in zip(keys, scores, strict=True)
                if (table, k) not in self.entries and (table, k) not in self._inflight]
        self.metrics.prefetch_dropped.labels("cached").inc(len(keys) - len(todo))
        if not todo:
            return 0
        self.metrics.prefetch_issued.inc()  # one node request, as the predictor's budget counts it
        epoch = self._invalidations
        try:
            frames = await self.node.get_frames(table, [k for k, _ in todo])
        except UpstreamError:
            self.metrics.prefetch_wasted.inc(len(todo))
            return len(todo)
        opened: list[tuple[BlockId, Entry, float]] = []
        for (k, score), fetched in zip(todo, frames, strict=True):
            if isinstance(fetched, FetchedFrame):
                try:
                    value = await self.open((table, k), fetched)
                except DecryptError:
                    continue
                opened.append(((table, k), Entry(value, fetched.key_version, fetched.lsn, prefetched=True), score))
        kept = 0
        for bid, entry, score in opened:
            if (epoch == self._invalidations and not self._writing[bid] and bid not in self._inflight
                    and bid not in self.entries):
                kept += self.install(bid, entry, score)
        self.metrics.prefetch_wasted.inc(len(todo) - kept)  # absent, bad, overtaken or over the prefetch budget
        return len(todo)

    # ---- writes --------------------------------------------------------------------------------
    async def put(self, table: str, key: str, body: bytes, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """Write through to the node; the acknowledged value is what the next read sees."""
        bid = (table, key)
        self.invalidate(bid)
        self._writing[bid] += 1
        try:
            result = await self.node.put(table, key, body, headers)
        except BaseException:
            self.invalidate(bid)  # the write may or may not have committed: read it back from the node
            raise
        finally:
            self._writing[bid] -= 1
            if not self._writing[bid]:
                del self._writing[bid]
        self._raise_floor(bid, int(result["lsn"]))
        if self._writing[bid] or result.get("replayed"):
            # another write to this key is in flight: its order is unknown here; or the node answered from its
            # idempotency record (docs/tokens.md): this body was not written, the block may hold another since
            self.invalidate(bid)
        else:
            self.install(bid, Entry(body, int(result["keyVersion"]), int(result["lsn"])))
        return result

    async def delete(self, table: str, key: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """Delete through to the node and drop the cached copy."""
        bid = (table, key)
        self.invalidate(bid)
        self._writing[bid] += 1
        try:
            return await self.node.delete(table, key, headers)
        finally:
            self.invalidate(bid)
            self._writing[bid] -= 1
            if not self._writing[bid]:
                del self._writing[bid]

    async def follow_changes(self, poll_wait: float = 10.0, after: int | None = None) -> None:
        """Invalidate blocks changed on the node by other writers (change-log tail); runs until cancelled.

        Starts at the node's newest LSN unless ``after`` is given.
        """
        while True:
            try:
                if after is None:
                    after = int((await self.node.changes(0, 1, wait=0))["lastLsn"])
                    # Anything cached or being fetched before we knew where to start may have missed a
                    # change at or below `after`; the tail only sees later ones, so start clean.
                    self.invalidate_all()
                self.seen_lsn = after
                page = await self.node.changes(after, 1000, wait=poll_wait)
                if page.get("gap"):
                    # Changes we never saw were trimmed: any cached block may be stale, so drop them all.
                    log.warning("change log trimmed past our position; invalidating the whole cache")
                    self.invalidate_all()
                for ch in page["changes"]:
                    if ch["op"] in ("put", "delete"):
                        self.invalidate((ch["table"], ch["key"]), newer_than=ch["lsn"])
                after = int(page["next"])
                # Only now is every change up to `after` invalidated here.
                self.seen_lsn = after
            except UpstreamError as exc:
                log.warning("change-log tail failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
