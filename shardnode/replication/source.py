"""The primary's write gates towards its mirrors (docs/mirroring.md, "sync means at least one mirror", "async bounds
the lag"): the sync wait after a commit and the async lag hold before one.

The consumer slots' acknowledgements are kept in memory (``SlotAcks``): the node feeds every register, ack and drop
of a slot to it as it answers, and a background pass re-reads every slot every 250 ms (the lag in seconds, and the
slots that retention put ``behind``). A write in sync mode then waits on an event set by each ack: no SQLite read
per write. The decisions (``write_policy``, ``acked_by_a_mirror``, ``smallest_lag``, ``holding``) are pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from chronoshard.shardnode.serving.http_common import ApiError

from .role import PRIMARY, Role

log = logging.getLogger(__name__)

SYNC_TIMEOUT_SECONDS = 10.0  # the role document's syncTimeoutSeconds when it names none
HOLD_TIMEOUT_SECONDS = 5.0  # holdTimeoutSeconds likewise
LAG_INTERVAL_SECONDS = 0.25
ACTIVE = "active"  # shardnode/node/consumers.py's state of a slot that holds the log


# ---- pure decisions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class WritePolicy:
    """What a primary's role document asks of its client writes."""

    sync: bool
    mirrors: tuple[str, ...]
    sync_timeout: float
    max_lag: float | None  # async only: hold new writes while the most caught-up mirror lags more
    hold_timeout: float


def write_policy(role: Role) -> WritePolicy | None:
    """The gating a role document asks for; None when there is none (not a primary, or no mirrors listed)."""
    if role.role != PRIMARY or not role.mirrors:
        return None
    doc = role.doc
    sync = doc.get("mode") == "sync"
    max_lag = doc.get("maxLagSeconds")
    return WritePolicy(sync=sync, mirrors=role.mirrors,
                       sync_timeout=float(doc.get("syncTimeoutSeconds") or SYNC_TIMEOUT_SECONDS),
                       max_lag=None if sync or max_lag is None else float(max_lag),
                       hold_timeout=float(doc.get("holdTimeoutSeconds") or HOLD_TIMEOUT_SECONDS))


def acked_by_a_mirror(acks: Mapping[str, tuple[int, str]], mirrors: Iterable[str], lsn: int) -> bool:
    """True once an active slot of one of ``mirrors`` has acknowledged ``lsn`` (``acks``: name -> (LSN, state))."""
    for name in mirrors:
        ack = acks.get(name)
        if ack is not None and ack[1] == ACTIVE and ack[0] >= lsn:
            return True
    return False


def smallest_lag(slots: Iterable[Mapping[str, Any]], mirrors: Iterable[str]) -> float | None:
    """The lag in seconds of the most caught-up listed mirror slot that holds the log (None: no such slot).

    A slot retention put ``behind`` is re-seeding: it says nothing about how much a failover would lose now."""
    wanted = set(mirrors)
    lags = [float(s["lagSeconds"]) for s in slots if s["name"] in wanted and s["state"] == ACTIVE]
    return min(lags) if lags else None


def holding(policy: WritePolicy | None, lag: float | None) -> bool:
    """Whether new writes wait now: async mode with maxLagSeconds, and the most caught-up mirror is further behind.

    No listed slot at all holds nothing: the operator lists a mirror only once its slot exists, and takes it off
    the list when it is lost."""
    return policy is not None and policy.max_lag is not None and lag is not None and lag > policy.max_lag


# ---- the in-memory acknowledgements ------------------------------------------------------------------
class SlotAcks:
    """Every consumer slot's acknowledged LSN and state, as the node last wrote or read them; each change wakes the
    writes waiting for a mirror."""

    def __init__(self) -> None:
        self.slots: dict[str, tuple[int, str]] = {}
        self._changed = asyncio.Event()
        # Each update or drop gets the next version: a read begun before it must not overwrite it.
        self.version = 0
        self._touched: dict[str, int] = {}

    def changed(self) -> asyncio.Event:
        """The event the next change sets (take it before checking, so a change in between still wakes)."""
        return self._changed

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def update(self, slot: Mapping[str, Any]) -> None:
        """One slot's API form (``name``, ``ackedLsn``, ``state``) after a register or an ack."""
        name = str(slot["name"])
        self.slots[name] = (int(slot["ackedLsn"]), str(slot["state"]))
        self._touch(name)
        self._wake()

    def drop(self, name: str) -> None:
        """A slot was deleted."""
        self._touch(name)
        if self.slots.pop(name, None) is not None:
            self._wake()

    def _touch(self, name: str) -> None:
        self.version += 1
        self._touched[name] = self.version

    def replace(self, slots: Iterable[Mapping[str, Any]], read_from: int) -> None:
        """Every slot as read from the store by a read begun at ``version`` ``read_from`` (catches what only the
        store changed: a slot put behind, a slot a promotion made); what the handlers told since is newer."""
        fresh = {str(s["name"]): (int(s["ackedLsn"]), str(s["state"])) for s in slots}
        for name, at in self._touched.items():
            if at > read_from:  # registered, acked (a reset may move it back) or dropped during the read
                fresh.pop(name, None)
                if name in self.slots:
                    fresh[name] = self.slots[name]
        self._touched = {n: at for n, at in self._touched.items() if at > read_from}
        if fresh != self.slots:
            self.slots = fresh
            self._wake()


# ---- the gates ---------------------------------------------------------------------------------------
class SourceGates:
    """The sync wait and the lag hold of one node; ``role()`` is the role document in force and ``read_slots()``
    every consumer slot's API form (with ``lagSeconds``) from one read."""

    def __init__(self, role: Callable[[], Role], read_slots: Callable[[], Awaitable[list[dict[str, Any]]]],
                 interval: float = LAG_INTERVAL_SECONDS) -> None:
        self.role, self.read_slots, self.interval = role, read_slots, interval
        self.acks = SlotAcks()
        self.mirror_slots: list[dict[str, Any]] = []  # the listed mirrors' slots at the last pass
        self.lag: float | None = None
        self.lagging = False
        self._lag_cleared = asyncio.Event()
        self.sync_timeouts = 0
        self.lag_refusals = 0

    # ---- the background pass ----
    async def refresh(self) -> None:
        """One pass: re-read the slots, recompute the lag and whether writes wait."""
        policy = write_policy(self.role())
        read_from = self.acks.version
        slots = await self.read_slots()
        self.acks.replace(slots, read_from)
        mirrors = set(policy.mirrors) if policy else set()
        self.mirror_slots = [s for s in slots if s["name"] in mirrors]
        self.lag = smallest_lag(slots, mirrors)
        was, self.lagging = self.lagging, holding(policy, self.lag)
        if was and not self.lagging:
            self._lag_cleared.set()
            self._lag_cleared = asyncio.Event()
        if was != self.lagging:
            log.warning("writes %s: the most caught-up mirror is %s s behind (maxLagSeconds %s)",
                        "held" if self.lagging else "resumed", self.lag, policy.max_lag if policy else None)

    async def run(self) -> None:
        """Refresh every ``interval`` until cancelled (an error is logged and the next pass tries again)."""
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("mirror lag pass failed: %s", type(exc).__name__)
            await asyncio.sleep(self.interval)

    # ---- before and after a client write ----
    async def wait_writable(self) -> None:
        """Hold a new write while the lag exceeds maxLagSeconds: up to holdTimeoutSeconds, then 503 mirror_lag."""
        if not self.lagging:
            return
        policy = write_policy(self.role())
        if policy is None or policy.max_lag is None:
            return
        cleared = self._lag_cleared
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cleared.wait(), timeout=policy.hold_timeout)
        if self.lagging:
            self.lag_refusals += 1
            raise ApiError(503, "mirror_lag", f"the most caught-up mirror is {self.lag:.1f} s behind (more than "
                           f"maxLagSeconds {policy.max_lag:g}); writes resume once it catches up", lagSeconds=self.lag)

    async def wait_acked(self, lsn: int) -> None:
        """In sync mode, return once a listed mirror has acknowledged ``lsn``; after syncTimeoutSeconds 503
        sync_timeout (the write is committed here: ``committed: true``)."""
        policy = write_policy(self.role())
        if policy is None or not policy.sync:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.sync_timeout
        while True:
            changed = self.acks.changed()
            if acked_by_a_mirror(self.acks.slots, policy.mirrors, lsn):
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=remaining)
        self.sync_timeouts += 1
        raise ApiError(503, "sync_timeout", f"no mirror acknowledged LSN {lsn} within {policy.sync_timeout:g} s; "
                       "the write is committed on the primary but not acknowledged", lsn=lsn, committed=True)

    # ---- GET /v1/replication ----
    def describe(self, writes: dict[str, Any] | None = None) -> dict[str, Any]:
        """``mirrors`` (each listed slot: consumer, ackedLsn, lagLsn, lagSeconds, state) and, when writes would
        be held now, ``writes`` with reason mirror_lag (``writes``: the role's own answer, which comes first)."""
        body: dict[str, Any] = {"mirrors": [
            {"consumer": s["name"], "ackedLsn": s["ackedLsn"], "lagLsn": s["lagLsn"], "lagSeconds": s["lagSeconds"],
             "state": s["state"]} for s in self.mirror_slots]}
        if self.lagging and (writes is None or writes.get("accepting")):
            body["writes"] = {"accepting": False, "reason": "mirror_lag"}
        return body
