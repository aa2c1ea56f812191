"""Test helper: a writer's own account of what a node acknowledged, the reference that the shadow's history and
time travel are checked against (used by the real-process integration test and the local-cluster e2e test)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Op:
    """One write the node acknowledged (or that a log check after a crash proved committed)."""

    lsn: int
    key: str
    op: str  # put | delete
    value: bytes | None
    sent: float  # wall clock before sending and after the answer: the commit time lies between
    answered: float


@dataclass
class WriterLog:
    """The writer's own account of what the node holds."""

    ops: list[Op] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def last_lsn(self) -> int:
        with self.lock:
            return self.ops[-1].lsn if self.ops else 0

    def state_at(self, lsn: int) -> dict[str, bytes]:
        """The reference: live keys and values after every op at or below ``lsn``."""
        state: dict[str, bytes] = {}
        with self.lock:
            for op in self.ops:
                if op.lsn > lsn:
                    break
                if op.op == "put":
                    assert op.value is not None
                    state[op.key] = op.value
                else:
                    state.pop(op.key, None)
        return state

    def quiet_time(self, i: int) -> float:
        """A time between op ``i``'s answer and the next op's sending: the node's log ends at op ``i`` then."""
        with self.lock:
            return (self.ops[i].answered + self.ops[i + 1].sent) / 2

    def lsn_at_time(self, t: float) -> int | None:
        """The LSN the node's log ends at time ``t`` if the log proves it (no op in flight at ``t``)."""
        with self.lock:
            ops = list(self.ops)
        last = 0
        for op in ops:
            if op.sent <= t <= op.answered:
                return None
            if op.answered < t:
                last = op.lsn
        return last
