"""Pure, synchronous eviction policies (no I/O): the cache and trace replays drive them the same way.

Interface: ``insert(key, size, prefetch_score=0.0)``, ``touch(key)``, ``remove(key)``, ``victim()``
(next to evict, not removed), ``__contains__``, ``__len__``. The byte budget is the caller's job.
"""

from __future__ import annotations

import heapq
import itertools
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


class ScoredPolicy:
    """Frequency + recency + prefetch score, in the GreedyDual style (aging instead of scans).

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


POLICIES: dict[str, Callable[[], EvictionPolicy]] = {"lru": LRUPolicy, "scored": ScoredPolicy}


def make_policy(name: str) -> EvictionPolicy:
    """A fresh policy by config name ("lru" or "scored")."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r}; choose one of {sorted(POLICIES)}") from None
