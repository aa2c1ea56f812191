"""A bounded in-memory access log the predictor tails; appends are O(1) and never block the read path."""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Access:
    """One client read."""

    seq: int
    time: float
    table: str
    key: str
    client: str
    hit: bool
    size: int

    def to_json(self) -> dict[str, Any]:
        """JSON form for `GET /v1/access-log`."""
        return {"seq": self.seq, "time": self.time, "table": self.table, "key": self.key, "client": self.client,
                "hit": self.hit, "size": self.size}


class AccessLog:
    """Ring buffer of the last ``capacity`` accesses with increasing sequence numbers (oldest dropped)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._ring: deque[Access] = deque(maxlen=capacity)
        self._seq = itertools.count(1)
        self.capacity = capacity

    def append(self, table: str, key: str, client: str, hit: bool, size: int) -> int:
        """Record one access; returns its sequence number."""
        seq = next(self._seq)
        self._ring.append(Access(seq, time.time(), table, key, client, hit, size))
        return seq

    @property
    def last_seq(self) -> int:
        """The newest sequence number (0 if empty)."""
        return self._ring[-1].seq if self._ring else 0

    @property
    def first_seq(self) -> int:
        """The oldest sequence number still held (0 if empty)."""
        return self._ring[0].seq if self._ring else 0

    def after(self, seq: int, limit: int) -> list[Access]:
        """Up to ``limit`` entries with sequence number > ``seq``, oldest first."""
        ring = self._ring
        if not ring or ring[-1].seq <= seq:
            return []
        # Sequence numbers in the ring are contiguous, so the start index is arithmetic.
        start = max(0, seq - ring[0].seq + 1)
        return list(itertools.islice(ring, start, start + limit))


__all__ = ["Access", "AccessLog"]
