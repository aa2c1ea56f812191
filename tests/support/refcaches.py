"""Reference cache simulators for tests (unit-size objects), written plainly from the papers' descriptions.

LRU; SIEVE (Zhang et al., NSDI'24); S3-FIFO (Yang et al., SOSP'23: 10% small FIFO, 90% main 2-bit CLOCK,
ghost of main's size); ARC (Megiddo & Modha, FAST'03). Each returns the hit flags of a request sequence, so a
test can score any part of it. They are deliberately independent of shardnode/eviction.py.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence


def lru(trace: Sequence[Hashable], capacity: int) -> list[bool]:
    """Least recently used."""
    cache: OrderedDict[Hashable, None] = OrderedDict()
    hits = []
    for k in trace:
        if k in cache:
            cache.move_to_end(k)
            hits.append(True)
            continue
        hits.append(False)
        if len(cache) >= capacity:
            cache.popitem(last=False)
        cache[k] = None
    return hits


def sieve(trace: Sequence[Hashable], capacity: int) -> list[bool]:
    """SIEVE: a FIFO with a visited bit; the hand moves from old to new, clearing bits, and keeps its place."""
    newer: dict[Hashable, Hashable | None] = {}  # towards the head (newest)
    older: dict[Hashable, Hashable | None] = {}
    visited: dict[Hashable, bool] = {}
    head: Hashable | None = None  # newest
    tail: Hashable | None = None  # oldest
    hand: Hashable | None = None
    hits = []
    for k in trace:
        if k in visited:
            visited[k] = True
            hits.append(True)
            continue
        hits.append(False)
        if len(visited) >= capacity:
            h = hand if hand is not None else tail
            while visited[h]:
                visited[h] = False
                h = newer[h] if newer[h] is not None else tail
            hand = newer[h]
            o, n = older[h], newer[h]
            if o is not None:
                newer[o] = n
            else:
                tail = n
            if n is not None:
                older[n] = o
            else:
                head = o
            del newer[h], older[h], visited[h]
        visited[k] = False
        older[k], newer[k] = head, None
        if head is not None:
            newer[head] = k
        head = k
        if tail is None:
            tail = k
    return hits


class _S3FIFO:
    """S3-FIFO's state: small FIFO probation, main FIFO with reinsertion (freq capped at 3), ghost of evicted keys."""

    def __init__(self, capacity: int, small_ratio: float) -> None:
        self.capacity = capacity
        self.small_cap = max(1, int(capacity * small_ratio))
        self.main_cap = capacity - self.small_cap
        self.small: OrderedDict[Hashable, None] = OrderedDict()
        self.main: OrderedDict[Hashable, None] = OrderedDict()
        self.ghost: OrderedDict[Hashable, None] = OrderedDict()
        self.freq: dict[Hashable, int] = {}

    def evict_main(self) -> None:
        while True:
            k, _ = self.main.popitem(last=False)
            if self.freq[k] > 0:
                self.freq[k] -= 1
                self.main[k] = None
            else:
                del self.freq[k]
                return

    def evict_small(self) -> None:
        while self.small:
            k, _ = self.small.popitem(last=False)
            if self.freq[k] > 0:
                self.freq[k] = 0
                self.main[k] = None
                if len(self.main) > self.main_cap:
                    self.evict_main()
            else:
                del self.freq[k]
                self.ghost[k] = None
                if len(self.ghost) > self.main_cap:
                    self.ghost.popitem(last=False)
                return

    def request(self, k: Hashable) -> bool:
        if k in self.freq:
            self.freq[k] = min(self.freq[k] + 1, 3)
            return True
        while len(self.small) + len(self.main) >= self.capacity:
            if len(self.small) >= self.small_cap or not self.main:
                self.evict_small()
            else:
                self.evict_main()
        self.freq[k] = 0
        if k in self.ghost:
            del self.ghost[k]
            self.main[k] = None
        else:
            self.small[k] = None
        return False


def s3fifo(trace: Sequence[Hashable], capacity: int, small_ratio: float = 0.1) -> list[bool]:
    """S3-FIFO (a new key enters the small queue unless it is a ghost; an accessed one moves on to main)."""
    sim = _S3FIFO(capacity, small_ratio)
    return [sim.request(k) for k in trace]


def arc(trace: Sequence[Hashable], capacity: int) -> list[bool]:
    """Adaptive replacement cache: T1/T2 resident, B1/B2 ghosts, target p adapted on ghost hits."""
    c = capacity
    t1: OrderedDict[Hashable, None] = OrderedDict()
    t2: OrderedDict[Hashable, None] = OrderedDict()
    b1: OrderedDict[Hashable, None] = OrderedDict()
    b2: OrderedDict[Hashable, None] = OrderedDict()
    p = 0.0
    hits = []

    def replace(in_b2: bool) -> None:
        if t1 and (len(t1) > p or (in_b2 and len(t1) == p)):
            k, _ = t1.popitem(last=False)
            b1[k] = None
        else:
            k, _ = t2.popitem(last=False)
            b2[k] = None

    for k in trace:
        if k in t1 or k in t2:
            t1.pop(k, None)
            t2.pop(k, None)
            t2[k] = None
            hits.append(True)
            continue
        hits.append(False)
        if k in b1:
            p = min(c, p + max(1.0, len(b2) / len(b1)))
            replace(False)
            del b1[k]
            t2[k] = None
        elif k in b2:
            p = max(0.0, p - max(1.0, len(b1) / len(b2)))
            replace(True)
            del b2[k]
            t2[k] = None
        else:
            if len(t1) + len(b1) == c:
                if len(t1) < c:
                    b1.popitem(last=False)
                    replace(False)
                else:
                    t1.popitem(last=False)
            elif len(t1) + len(b1) < c and len(t1) + len(t2) + len(b1) + len(b2) >= c:
                if len(t1) + len(t2) + len(b1) + len(b2) == 2 * c:
                    b2.popitem(last=False)
                replace(False)
            t1[k] = None
    return hits


REFERENCES: dict[str, Callable[[Sequence[Hashable], int], list[bool]]] = {
    "LRU": lru, "SIEVE": sieve, "S3-FIFO": s3fifo, "ARC": arc}


def miss_ratio(hits: Sequence[bool], skip: int = 0) -> float:
    """Share of misses among requests [skip:]."""
    scored = hits[skip:]
    return 1.0 - sum(scored) / len(scored)


def replay_policy(policy: object, trace: Sequence[Hashable], capacity: int,
                  sizes: Callable[[Hashable], int] | None = None) -> list[bool]:
    """Drive a shardnode.eviction policy as the cache does (evict until the block fits, then insert); hit flags."""
    held: dict[Hashable, int] = {}
    used = 0
    hits = []
    for k in trace:
        if k in policy:  # type: ignore[operator]
            policy.touch(k)  # type: ignore[attr-defined]
            hits.append(True)
            continue
        hits.append(False)
        size = sizes(k) if sizes else 1
        if size > capacity:
            continue
        while used + size > capacity:
            v = policy.victim()  # type: ignore[attr-defined]
            policy.remove(v)  # type: ignore[attr-defined]
            used -= held.pop(v)
        policy.insert(k, size)  # type: ignore[attr-defined]
        held[k] = size
        used += size
    return hits
