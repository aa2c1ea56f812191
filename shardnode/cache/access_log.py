"""A bounded in-memory access log the predictor tails; appends are O(1) and never block the read path."""

from __future__ import annotations

import asyncio
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
        # Set (and replaced) on the next append while a long-polling reader waits; None when nobody waits,
        # so the read path pays nothing for it.
        self._appended: asyncio.Event | None = None

    def append(self, table: str, key: str, client: str, hit: bool, size: int) -> int:
        """Record one access; returns its sequence number."""
        seq = next(self._seq)
        self._ring.append(Access(seq, time.time(), table, key, client, hit, size))
        self.wake()
        return seq

    def wake(self) -> None:
        """Release every reader waiting in `wait_after` (an append, or a shutdown)."""
        if self._appended is not None:
            self._appended.set()
            self._appended = None

    async def wait_after(self, seq: int, timeout: float) -> None:
        """Return once an entry after ``seq`` exists, `wake` is called, or ``timeout`` seconds pass.

        Event loop only, like `append`.
        """
        if self.last_seq > seq or timeout <= 0:
            return
        if self._appended is None:
            self._appended = asyncio.Event()
        try:
            await asyncio.wait_for(self._appended.wait(), timeout)
        except TimeoutError:
            pass

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
