"""The source side's write fence of a move's cutover (docs/resharding.md, "CuttingOver"): while a fence stands, client
writes to keys in its keyspace ranges are held (reads are not); ``PUT /v1/fences/{name}`` answers the fence LSN F once
every write to those ranges already let through has committed, so every acknowledged write in them has an LSN <= F.

A held write goes on when the fence is lifted or lapses (``holdSeconds``), or when the map in force changes; either
way it is then checked against the map in force: a key the map moved away is answered 421 naming the new owner and
stored nowhere. Every client write passes ``FenceGate.admit`` right before it is queued for the store: the owner
check and the in-flight registration happen in the same step of the event loop as the fence check, so a fence (or a
map push) can never fall between them. Fences live in memory only: a restarted node has none (safe: the operator
pushes the map only after it saw F, and a lapse only means the cutover is retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from chronoshard.shardnode.keyspace.partitioning import PartitionMap, keyspace_id, parse_id
from chronoshard.shardnode.serving.http_common import ApiError
from chronoshard.shardnode.serving.routing import EPOCH_HEADER, MISDIRECTED, Misdirection, PartitionMapSource

log = logging.getLogger(__name__)

Range = tuple[int, int]  # keyspace ids, inclusive
DEFAULT_HOLD_SECONDS = 5.0
MAX_HOLD_SECONDS = 60.0
MAX_RANGES = 256
# A held write re-reads the mounted map this often (a file change has no event; a push does).
RECHECK_SECONDS = 0.25


# ---- pure ----------------------------------------------------------------------------------------------------
def parse_ranges(raw: object) -> tuple[Range, ...]:
    """``[["<start hex>", "<end hex>"], ...]`` (16 hex digits each, inclusive, start <= end); ValueError otherwise."""
    if not isinstance(raw, list) or not raw or len(raw) > MAX_RANGES:
        raise ValueError(f"ranges must be a list of 1-{MAX_RANGES} [start, end] pairs of hex keyspace ids")
    out: list[Range] = []
    for pair in raw:
        if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(x, str) for x in pair):
            raise ValueError("each range must be [\"<start hex>\", \"<end hex>\"]")
        start, end = parse_id(pair[0]), parse_id(pair[1])
        if start > end:
            raise ValueError(f"range {pair[0]}-{pair[1]} ends before it starts")
        out.append((start, end))
    return tuple(out)


def in_ranges(kid: int, ranges: Iterable[Range]) -> bool:
    """Whether keyspace id ``kid`` is in one of ``ranges``."""
    return any(lo <= kid <= hi for lo, hi in ranges)


def merge_ranges(ranges: Iterable[Range]) -> list[Range]:
    """The same keyspace as sorted, disjoint, non-adjacent ranges."""
    out: list[Range] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def owned_overlap(pmap: PartitionMap, shard: int, ranges: Iterable[Range]) -> list[Range]:
    """The parts of ``ranges`` that ``shard`` owns under ``pmap`` (empty: it owns none of them)."""
    out: list[Range] = []
    for lo, hi in ranges:
        for p in pmap.partitions_of(shard):
            if p.start <= hi and lo <= p.end:
                out.append((max(lo, p.start), min(hi, p.end)))
    return merge_ranges(out)


@dataclass(frozen=True)
class Fence:
    """One fence: its ranges and when it lapses (``time.monotonic``)."""

    name: str
    ranges: tuple[Range, ...]
    hold_seconds: float
    expires: float


# ---- the gate --------------------------------------------------------------------------------------------------
class FenceGate:
    """The fences of one node and the client writes in flight; ``source``/``shard`` the map in force and this
    shard's index (None: no partition map, every key is owned); ``last_lsn()`` reads the store's last LSN."""

    def __init__(self, source: PartitionMapSource | None, shard: int | None,
                 last_lsn: Callable[[], Awaitable[int]] | None = None) -> None:
        self.source, self.shard = source, shard
        self.last_lsn = last_lsn
        self.fences: dict[str, Fence] = {}
        self._inflight: dict[int, int] = {}  # write token -> keyspace id, from admission until the write ended
        self._tokens = itertools.count(1)
        self._changed = asyncio.Event()  # a fence went or came, or the map in force changed
        self._ended = asyncio.Event()  # a write in flight ended (only waited on while a fence is being put)
        self.held = 0  # writes waiting now (metrics, tests)
        self.held_total = 0
        self.refused_total = 0  # held writes answered 421
        if source is not None:
            source.listeners.append(self._wake)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def active(self) -> list[Fence]:
        """The fences in force now (lapsed ones are dropped)."""
        now = time.monotonic()
        for name in [n for n, f in self.fences.items() if f.expires <= now]:
            log.warning("fence %s lapsed after %.1f s without being lifted; writes to its ranges go on",
                        name, self.fences[name].hold_seconds)
            del self.fences[name]
        return list(self.fences.values())

    def _fencing(self, kid: int) -> list[Fence]:
        return [f for f in self.active() if in_ranges(kid, f.ranges)] if self.fences else []

    # ---- fences ----
    async def put(self, name: str, ranges: Sequence[Range], hold_seconds: float) -> int:
        """Put (or renew) a fence and return F once every write to its ranges let through before has ended."""
        self.fences[name] = Fence(name, tuple(ranges), hold_seconds, time.monotonic() + hold_seconds)
        self._wake()
        waiting = {t for t, kid in self._inflight.items() if in_ranges(kid, ranges)}
        while waiting & self._inflight.keys():
            ended = self._ended
            await ended.wait()
        # Every write to the ranges that was admitted has committed (or failed): the last LSN now is at or after
        # each of them. Writes admitted later are held, so none in the ranges can commit between here and F.
        return await self.last_lsn() if self.last_lsn is not None else 0

    def renew(self, name: str) -> bool:
        """Restart a standing fence's lapse clock (False: it does not stand); a map push conditioned on it calls this
        right before the map is stored, so the fence holds until the map is in force."""
        fence = next((f for f in self.active() if f.name == name), None)
        if fence is None:
            return False
        self.fences[name] = Fence(name, fence.ranges, fence.hold_seconds, time.monotonic() + fence.hold_seconds)
        return True

    def lift(self, name: str) -> bool:
        """Remove a fence (False: there was none); its held writes go on, or get 421 under the map in force."""
        gone = self.fences.pop(name, None) is not None
        if gone:
            self._wake()
        return gone

    # ---- writes ----
    def _misdirection(self, table: str, key: str, kid: int) -> Misdirection | None:
        if self.source is None or self.shard is None:
            return None
        pmap = self.source.map
        if pmap is None:
            return None  # the ownership middleware answers 503 before a write gets here
        owner = pmap.owner_of(kid).shard
        return None if owner == self.shard else Misdirection(table, key, owner, pmap.epoch)

    async def _hold(self, kid: int) -> None:
        self.held += 1
        self.held_total += 1
        try:
            while fencing := self._fencing(kid):
                if self.source is not None and self.shard is not None:
                    pmap = self.source.map  # a mounted file changes without an event: read it as we wait
                    if pmap is not None and pmap.owner_of(kid).shard != self.shard:
                        return  # moved away: the caller answers 421
                changed = self._changed
                timeout = min(min(f.expires for f in fencing) - time.monotonic(), RECHECK_SECONDS)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=max(timeout, 0.0))
        finally:
            self.held -= 1

    @contextlib.asynccontextmanager
    async def admit(self, table: str, key: str) -> AsyncIterator[None]:
        """Around one client write, right before it is queued: hold it while a fence covers its key, refuse it
        (421) when the map in force gives the key to another shard, and count it in flight until it ends."""
        kid = keyspace_id(table, key)
        if self.fences and self._fencing(kid):
            await self._hold(kid)
        wrong = self._misdirection(table, key, kid)
        if wrong is not None:
            self.refused_total += 1
            MISDIRECTED.inc()
            raise ApiError(421, "misdirected", str(wrong.body()["message"]), owner=wrong.owner,
                           epoch=wrong.epoch).with_headers(**{EPOCH_HEADER: str(wrong.epoch)})
        token = next(self._tokens)
        self._inflight[token] = kid
        try:
            yield
        finally:
            del self._inflight[token]
            self._ended.set()
            self._ended = asyncio.Event()

    def describe(self) -> list[dict[str, object]]:
        """The fences in force (names, ranges as hex, seconds left)."""
        now = time.monotonic()
        return [{"name": f.name, "ranges": [[f"{lo:016x}", f"{hi:016x}"] for lo, hi in f.ranges],
                 "holdSeconds": f.hold_seconds, "remainingSeconds": round(max(f.expires - now, 0.0), 3)}
                for f in self.active()]
