"""Pure, synchronous eviction policies (no I/O): the cache and trace replays drive them the same way.

Interface: ``insert(key, size, prefetch_score=0.0)``, ``touch(key)``, ``remove(key)``, ``victim()``
(next to evict, not removed), ``__contains__``, ``__len__``. The byte budget is the caller's job.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Protocol


class EvictionPolicy(Protocol):
    """What the cache needs from a policy."""

    def insert(self, key: Hashable, size: int, prefetch_score: float = 0.0) -> None: ...
    def touch(self, key: Hashable) -> None: ...
    def remove(self, key: Hashable) -> None: ...
    def victim(self) -> Hashable: ...
    def __contains__(self, key: object) -> bool: ...
    def __len__(self) -> int: ...


class LRUPolicy:
    """Least recently used: O(1) everything."""

    def __init__(self) -> None:
        self._order: OrderedDict[Hashable, None] = OrderedDict()

    def insert(self, key: Hashable, size: int, prefetch_score: float = 0.0) -> None:
        """Add (or refresh) ``key`` as most recent."""
        self._order[key] = None
        self._order.move_to_end(key)

    def touch(self, key: Hashable) -> None:
        """A hit: ``key`` becomes most recent."""
        self._order.move_to_end(key)

    def remove(self, key: Hashable) -> None:
        """Forget ``key`` (no error if absent)."""
        self._order.pop(key, None)

    def victim(self) -> Hashable:
        """The least recently used key; KeyError if empty."""
        if not self._order:
            raise KeyError("policy is empty")
        return next(iter(self._order))

    def __contains__(self, key: object) -> bool:
        return key in self._order

    def __len__(self) -> int:
        return len(self._order)


class GreedyDualPolicy:
    """Frequency + recency + prefetch score, in the GreedyDual style (aging instead of scans).

    The former ``scored`` policy, kept as ``greedydual``: on recency-heavy workloads it can miss far more
    than LRU (a block seen once ranks below any block seen twice, however old), hence `ScoredPolicy`.

    priority(k) = L + f(hits(k)) + prefetch_weight * score(k), where L (the "inflation" value) rises to the
    priority of each evicted victim, so entries not touched for a while fall behind new ones: recency.
    ``hits`` counts accesses since insertion (frequency); f(1) = ``first_access_weight`` (0.1) and f(n) = n
    otherwise, so a block seen once leaves before one seen twice (most blocks of a write-heavy trace are
    never read again; this is what S3-FIFO's probation queue exploits). A prefetched block starts with its
    predicted score, so a confident prediction survives until it is used. The lowest priority is evicted;
    ties go to the least recently touched. Stale heap entries are skipped lazily: every call is O(log n).
    """

    def __init__(self, prefetch_weight: float = 2.0, max_frequency: int = 64,
                 first_access_weight: float = 0.1) -> None:
        self.prefetch_weight = prefetch_weight
        self.max_frequency = max_frequency  # caps frequency so once-hot keys can still age out
        self.first_access_weight = first_access_weight
        self._inflation = 0.0
        self._entries: dict[Hashable, tuple[float, int, float]] = {}  # key -> (priority, hits, score)
        self._stamp: dict[Hashable, int] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._clock = itertools.count()

    def _push(self, key: Hashable, hits: int, score: float) -> None:
        prio = self._inflation + (self.first_access_weight if hits == 1 else hits) + self.prefetch_weight * score
        stamp = next(self._clock)
        self._entries[key] = (prio, hits, score)
        self._stamp[key] = stamp
        heapq.heappush(self._heap, (prio, stamp, key))
        if len(self._heap) > 4 * len(self._entries) + 64:
            self._compact()

    def _compact(self) -> None:
        self._heap = [(p, self._stamp[k], k) for k, (p, _, _) in self._entries.items()]
        heapq.heapify(self._heap)

    def insert(self, key: Hashable, size: int, prefetch_score: float = 0.0) -> None:
        """Add ``key``; a re-insert keeps its hit count (a write to a hot key keeps it hot)."""
        score = min(max(float(prefetch_score), 0.0), 1.0)
        prev = self._entries.get(key)
        hits = prev[1] if prev else 1
        self._push(key, hits, max(score, prev[2] if prev else 0.0))

    def touch(self, key: Hashable) -> None:
        """A hit: one more access; the prefetch score has done its job and is dropped."""
        prev = self._entries.get(key)
        if prev is None:
            return
        self._push(key, min(prev[1] + 1, self.max_frequency), 0.0)

    def _clean_top(self) -> None:
        heap = self._heap
        while heap and self._stamp.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)

    def victim(self) -> Hashable:
        """The key with the lowest priority; KeyError if empty."""
        self._clean_top()
        if not self._heap:
            raise KeyError("policy is empty")
        return self._heap[0][2]

    def remove(self, key: Hashable) -> None:
        """Forget ``key``; removing the current victim advances the aging clock to its priority."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._clean_top()
        if self._heap and self._heap[0][2] == key:
            self._inflation = max(self._inflation, entry[0])
        self._stamp.pop(key, None)

    def priority(self, key: Hashable) -> float:
        """Current priority of ``key`` (for tests and tracing)."""
        return self._entries[key][0]

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)


class _Entry:
    """A resident block of the adaptive policy."""

    __slots__ = ("size", "freq", "credit", "prefetched")

    def __init__(self, size: int, credit: int, prefetched: bool) -> None:
        self.size, self.freq, self.credit, self.prefetched = size, 0, credit, prefetched


SMALL, MAIN = 0, 1


class AdaptiveFifoPolicy:
    """S3-FIFO's queues with ARC's adaptation, and prefetched blocks admitted on their score.

    A new block enters the small FIFO (probation). Leaving it, a block read again meanwhile moves to the main
    FIFO; one that was not goes to the ghost list (key and size only). The main FIFO is a CLOCK: a block read
    since it last reached the head goes round again (its count, capped at ``max_freq``, drops by one), else it
    leaves for the ghost list too. A demand miss on a ghost goes straight to main.

    The small queue's share of the bytes adapts as ARC's T1/T2 split does: a miss on a block that left the
    small queue unread says probation was too short (recency: grow it); a miss on a block that left main says
    main was too small (frequency: shrink it). So a recency-heavy workload drifts towards a large FIFO with
    second chances (close to LRU), a frequency-heavy or scan-ridden one towards S3-FIFO's 10% probation.

    A prefetched block enters probation unread, with ``ceil(score * prefetch_passes)`` extra passes through it
    (a confident prediction waits longer for its read). Its first demand read counts as its arrival, not as a
    re-read; an unread prefetched block that is evicted does not steer the adaptation.
    """

    def __init__(self, small_fraction: float = 0.1, min_small: float = 0.01, max_small: float = 0.9,
                 max_freq: int = 3, prefetch_passes: int = 2) -> None:
        self.small_fraction = small_fraction
        self.min_small, self.max_small = min_small, max_small
        self.max_freq = max_freq
        self.prefetch_passes = prefetch_passes
        self._queues: tuple[OrderedDict[Hashable, _Entry], OrderedDict[Hashable, _Entry]] = (OrderedDict(),
                                                                                               OrderedDict())
        self._bytes = [0, 0]
        self._where: dict[Hashable, int] = {}
        # key -> (size, queue it left, whether its return should steer the split)
        self._ghost: OrderedDict[Hashable, tuple[int, int, bool]] = OrderedDict()
        self._ghost_bytes = [0, 0]
        self._victim: tuple[Hashable, int] | None = None

    # -- membership -----------------------------------------------------------------------------------
    def insert(self, key: Hashable, size: int, prefetch_score: float = 0.0) -> None:
        """Admit ``key`` after a miss (``prefetch_score`` > 0: ahead of a read); a resident key keeps its place."""
        size = max(int(size), 1)
        q = self._where.get(key)
        if q is not None:
            e = self._queues[q][key]
            self._bytes[q] += size - e.size
            e.size = size
            return
        score = min(max(float(prefetch_score), 0.0), 1.0)
        ghost = self._pop_ghost(key)
        if score > 0.0:
            credit = math.ceil(score * self.prefetch_passes)
            target = MAIN if ghost is not None and ghost[1] == MAIN else SMALL
            self._add(key, _Entry(size, credit, True), target)
            return
        if ghost is None:
            self._add(key, _Entry(size, 0, False), SMALL)
            return
        if ghost[2]:
            self._adapt(ghost[1], size)
        self._add(key, _Entry(size, 0, False), MAIN)

    def touch(self, key: Hashable) -> None:
        """A hit; the first read of a prefetched block counts as its arrival."""
        q = self._where.get(key)
        if q is None:
            return
        e = self._queues[q][key]
        if e.prefetched:
            e.prefetched, e.credit = False, 0
            self._queues[q].move_to_end(key)  # arrives now, with no extra credit
            return
        e.freq = min(e.freq + 1, self.max_freq)

    def remove(self, key: Hashable) -> None:
        """Forget ``key``; the victim just named goes to the ghost list, any other removal is remembered without
        steering (a rewritten hot block comes back to main)."""
        q = self._where.pop(key, None)
        if q is None:
            return
        e = self._queues[q].pop(key)
        self._bytes[q] -= e.size
        evicted = self._victim is not None and self._victim[0] == key
        self._victim = None
        self._remember(key, e.size, q, steer=evicted and not e.prefetched)

    def victim(self) -> Hashable:
        """The next block to evict (not removed); second chances are given here. KeyError if empty."""
        if not self._where:
            raise KeyError("policy is empty")
        small, main = self._queues
        while True:
            if small and (self._bytes[SMALL] > self._small_target() or not main):
                key, e = next(iter(small.items()))
                if e.freq > 0:
                    self._move(key, SMALL, MAIN)
                    e.freq = 0
                    continue
                if e.credit > 0:
                    e.credit -= 1
                    small.move_to_end(key)
                    continue
                self._victim = (key, SMALL)
                return key
            key, e = next(iter(main.items()))
            if e.freq > 0 or e.credit > 0:
                if e.freq > 0:
                    e.freq -= 1
                else:
                    e.credit -= 1
                main.move_to_end(key)
                continue
            self._victim = (key, MAIN)
            return key

    # -- internals ------------------------------------------------------------------------------------
    def _small_target(self) -> float:
        return self.small_fraction * (self._bytes[SMALL] + self._bytes[MAIN])

    def _adapt(self, left: int, size: int) -> None:
        """ARC's rule on byte shares: a return from the small queue's ghosts grows probation, from main's shrinks it."""
        resident = self._bytes[SMALL] + self._bytes[MAIN]
        if resident <= 0:
            return
        gs, gm = self._ghost_bytes
        if left == SMALL:
            step = size * max(1.0, gm / gs if gs else 1.0) / resident
            self.small_fraction = min(self.max_small, self.small_fraction + step)
        else:
            step = size * max(1.0, gs / gm if gm else 1.0) / resident
            self.small_fraction = max(self.min_small, self.small_fraction - step)

    def _add(self, key: Hashable, e: _Entry, q: int) -> None:
        self._queues[q][key] = e
        self._bytes[q] += e.size
        self._where[key] = q

    def _move(self, key: Hashable, src: int, dst: int) -> None:
        e = self._queues[src].pop(key)
        self._bytes[src] -= e.size
        self._add(key, e, dst)

    def _pop_ghost(self, key: Hashable) -> tuple[int, int, bool] | None:
        g = self._ghost.pop(key, None)
        if g is not None:
            self._ghost_bytes[g[1]] -= g[0]
        return g

    def _remember(self, key: Hashable, size: int, q: int, steer: bool) -> None:
        self._ghost[key] = (size, q, steer)
        self._ghost_bytes[q] += size
        # As many ghost bytes as resident ones (ARC keeps c ghosts beside c blocks).
        limit = max(self._bytes[SMALL] + self._bytes[MAIN], size)
        while self._ghost_bytes[SMALL] + self._ghost_bytes[MAIN] > limit:
            _, (gsize, gq, _) = self._ghost.popitem(last=False)
            self._ghost_bytes[gq] -= gsize

    def small_share(self) -> float:
        """The small queue's current target share of the resident bytes (for tests and tracing)."""
        return self.small_fraction

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)


class _Shadow:
    """A policy run on keys only, under the byte budget the real cache has now: what it would hold and hit."""

    __slots__ = ("policy", "sizes", "bytes")

    def __init__(self, policy: EvictionPolicy) -> None:
        self.policy = policy
        self.sizes: dict[Hashable, int] = {}
        self.bytes = 0

    def request(self, key: Hashable, size: int) -> bool:
        """A demand read: True if this policy would have hit."""
        if key in self.sizes:
            self.policy.touch(key)
            return True
        self.admit(key, size)
        return False

    def admit(self, key: Hashable, size: int, score: float = 0.0) -> None:
        """Hold ``key`` (a miss, or a prefetch with ``score``)."""
        if key in self.sizes:
            return
        self.policy.insert(key, size, score)
        self.sizes[key] = size
        self.bytes += size

    def drop(self, key: Hashable) -> None:
        """Forget ``key`` (after the policy named it as victim, or an invalidation)."""
        size = self.sizes.pop(key, None)
        if size is not None:
            self.policy.remove(key)
            self.bytes -= size

    def trim(self, limit: int) -> list[Hashable]:
        """Evict down to ``limit`` bytes; the keys evicted."""
        out = []
        while self.bytes > limit and len(self.sizes) > 1:
            v = self.policy.victim()
            self.drop(v)
            out.append(v)
        return out


def s3fifo_policy() -> AdaptiveFifoPolicy:
    """Plain S3-FIFO: the adaptive FIFO with its probation share fixed at 10%."""
    return AdaptiveFifoPolicy(small_fraction=0.1, min_small=0.1, max_small=0.1)


DEFAULT_EXPERTS: tuple[Callable[[], EvictionPolicy], ...] = (AdaptiveFifoPolicy, s3fifo_policy, LRUPolicy)


class ScoredPolicy:
    """The default: follows whichever of two experts hits more lately, LRU or `AdaptiveFifoPolicy`.

    Neither expert wins everywhere: the adaptive FIFO (S3-FIFO with ARC's split) handles one-hit wonders,
    scans and skewed popularity, but when reuse depends on recency alone (the re-read probability falls
    with the time since the last read, whatever happened before) LRU keeps the better set. So both run as
    shadows on keys only, under the real cache's current bytes, and count the hits each would have had
    (decayed over about two cache turnovers). The real cache evicts for the leader: first the resident
    blocks the leader no longer holds (in the order it dropped them), then the leader's own victim; after a
    switch the real contents converge to the leader's within one turnover. Costs three key sets instead of one.

    Prefetched blocks reach both experts with their score (the adaptive FIFO admits them on it, LRU as most
    recent); only demand reads count as hits.
    """

    def __init__(self, experts: tuple[Callable[[], EvictionPolicy], ...] | None = None,
                 margin: float = 0.002) -> None:
        makers = experts or DEFAULT_EXPERTS
        self._shadows = [_Shadow(make()) for make in makers]
        self._hits = [0.0] * len(self._shadows)
        self._leader = 0
        self.margin = margin  # share of the window's requests a challenger must lead by (no flapping)
        self._sizes: dict[Hashable, int] = {}
        self._bytes = 0
        self._recency: OrderedDict[Hashable, None] = OrderedDict()
        # Per expert: resident blocks it does not hold, in the order it dropped them (evicted first).
        self._extra: list[OrderedDict[Hashable, None]] = [OrderedDict() for _ in self._shadows]
        self._victim: Hashable | None = None
        self._victim_from_leader = False

    @property
    def leader(self) -> str:
        """The class name of the expert the real cache follows now."""
        return type(self._shadows[self._leader].policy).__name__

    def insert(self, key: Hashable, size: int, prefetch_score: float = 0.0) -> None:
        """A demand miss (or, with a score, a prefetch) being cached."""
        size = max(int(size), 1)
        if key in self._sizes:
            return
        self._sizes[key] = size
        self._bytes += size
        self._recency[key] = None
        if prefetch_score > 0.0:
            for i, sh in enumerate(self._shadows):
                sh.admit(key, size, prefetch_score)
                self._settle(i, key)
            return
        self._request(key, size)

    def touch(self, key: Hashable) -> None:
        """A hit in the real cache: a demand read for every expert."""
        size = self._sizes.get(key)
        if size is None:
            return
        self._recency.move_to_end(key)
        self._request(key, size)

    def _request(self, key: Hashable, size: int) -> None:
        n = len(self._shadows)
        decay = 1.0 - 1.0 / max(512, 2 * len(self._sizes))
        for i in range(n):
            sh = self._shadows[i]
            self._hits[i] = self._hits[i] * decay + (1.0 if sh.request(key, size) else 0.0)
            self._settle(i, key)
        best = max(range(n), key=self._hits.__getitem__)
        window = 1.0 / (1.0 - decay)
        if self._hits[best] > self._hits[self._leader] + self.margin * window:
            self._leader = best

    def _settle(self, i: int, key: Hashable) -> None:
        """Expert ``i`` was just told about ``key``: trim it to the real bytes and note what it let go."""
        sh = self._shadows[i]
        extra = self._extra[i]
        if key in sh.sizes:
            extra.pop(key, None)
        for v in sh.trim(self._bytes):
            if v in self._sizes:
                extra[v] = None

    def remove(self, key: Hashable) -> None:
        """Forget ``key``: the victim just named, or an invalidation (then no expert keeps it either)."""
        size = self._sizes.pop(key, None)
        if size is None:
            return
        self._bytes -= size
        del self._recency[key]
        for extra in self._extra:
            extra.pop(key, None)
        if key == self._victim:
            if self._victim_from_leader:
                self._shadows[self._leader].drop(key)
        else:
            for sh in self._shadows:
                sh.drop(key)
        self._victim = None

    def victim(self) -> Hashable:
        """What the leader would evict among the resident blocks; KeyError if empty."""
        if not self._sizes:
            raise KeyError("policy is empty")
        extra = self._extra[self._leader]
        from_leader = False
        if extra:
            key = next(iter(extra))
        else:
            sh = self._shadows[self._leader]
            key = sh.policy.victim() if len(sh.sizes) else None
            from_leader = key in self._sizes
            if not from_leader:
                key = next(iter(self._recency))
        self._victim, self._victim_from_leader = key, from_leader
        return key

    def __contains__(self, key: object) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)


POLICIES: dict[str, Callable[[], EvictionPolicy]] = {"lru": LRUPolicy, "scored": ScoredPolicy,
                                                      "greedydual": GreedyDualPolicy,
                                                      "adaptive-fifo": AdaptiveFifoPolicy}


def make_policy(name: str) -> EvictionPolicy:
    """A fresh policy by config name ("scored", the default, "lru" or "greedydual")."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r}; choose one of {sorted(POLICIES)}") from None
