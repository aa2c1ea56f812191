"""The MirrorSet-aware client's decisions (docs/mirroring.md, "Clients and the CLI during trouble"), pure: which
copy of a shard a request goes to, which refusals are worth sending a write again for, and the read-your-writes
bookkeeping. The I/O around them is ``mirrorrouting`` (state, static sources) and ``discovery`` (the Kubernetes API).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chronoshard.shardnode.client.errors import Unavailable

MIN_LSN_HEADER = "X-Chronoshard-Min-Lsn"
MIN_TERM_HEADER = "X-Chronoshard-Min-Term"
WAIT_MS_HEADER = "X-Chronoshard-Wait-Ms"
# Refusals a node gives *before* committing (the write was not made): sending it again to the primary the
# MirrorSet names now is no duplicate. sync_timeout is not here: that write is committed on the old primary.
RESEND_WRITE_ERRORS = frozenset({"not_primary", "fenced", "lease_lost"})
BACKOFF = (0.05, 1.0)  # first and longest pause between attempts of a write
MAX_WRITE_ATTEMPTS = 10
# A read answered by a mirror copy reads the status again if it is older than this (has the MirrorSet failed over?).
STATUS_MAX_AGE = 5.0


@dataclass(frozen=True)
class Copy:
    """One copy of a shard as the MirrorSet status reports it."""

    shard_set: str  # namespace/name
    role: str
    health: str
    applied_lsn: int


@dataclass(frozen=True)
class MirrorView:
    """What the client routes by: the term, the active ShardSet and every shard's copies."""

    term: int
    active: str
    shards: Mapping[int, tuple[Copy, ...]] = field(default_factory=dict)

    @classmethod
    def from_status(cls, status: Mapping[str, Any], where: str) -> MirrorView:
        """Read a MirrorSet's ``status``; Unavailable while it names no active ShardSet (a new MirrorSet)."""
        active = status.get("activeShardSet")
        if not isinstance(active, str) or "/" not in active:
            raise Unavailable(where, "its status names no activeShardSet yet (is the MirrorSet controller running?)")
        shards: dict[int, tuple[Copy, ...]] = {}
        for sh in status.get("shards") or []:
            if not isinstance(sh, Mapping) or not isinstance(sh.get("shard"), int):
                continue
            shards[sh["shard"]] = tuple(
                Copy(str(c["shardSet"]), str(c.get("role", "unknown")), str(c.get("health", "unknown")),
                     _int(c.get("appliedLSN")))
                for c in sh.get("copies") or [] if isinstance(c, Mapping) and c.get("shardSet"))
        return cls(_int(status.get("term")), active, shards)

    def read_fallbacks(self, shard: int) -> list[str]:
        """The healthy mirror copies of ``shard`` a read may go to when the active's fails, most caught-up first."""
        copies = [c for c in self.shards.get(shard, ()) if c.shard_set != self.active and c.role == "mirror"
                  and c.health == "healthy"]
        return [c.shard_set for c in sorted(copies, key=lambda c: -c.applied_lsn)]

    def members(self) -> set[str]:
        """Every ShardSet the status names (the active and every copy)."""
        return {self.active} | {c.shard_set for copies in self.shards.values() for c in copies}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def write_refusal(status: int, doc: Mapping[str, Any]) -> str | None:
    """The error of a write refused before it was committed because the node is not the active primary (sending
    it again after re-resolving is safe), else None."""
    error = doc.get("error")
    return error if status == 503 and error in RESEND_WRITE_ERRORS else None


def next_write_target(view: MirrorView, refused_by: str | None, doc: Mapping[str, Any]) -> str:
    """Where the next attempt of a refused write goes: the active the MirrorSet names, unless that is still the
    ShardSet that just refused it and the refusal's ``primaryShardSet`` names another member (the status lags the
    nodes' roles; the hint is only taken for a member)."""
    hint = doc.get("primaryShardSet")
    if refused_by == view.active and isinstance(hint, str) and hint != refused_by and hint in view.members():
        return hint
    return view.active


def backoff(attempt: int) -> float:
    """The pause before attempt ``attempt`` (1, 2, ...) of a write: doubling from the first to the longest."""
    first, longest = BACKOFF
    return float(min(longest, first * 2 ** max(0, attempt - 1)))


def read_needs_primary(status: int, doc: Mapping[str, Any]) -> bool:
    """A mirror's 409 ``lsn_not_reached``: it has not applied our last write; the primary has."""
    return status == 409 and doc.get("error") == "lsn_not_reached"


def read_failed(status: int) -> bool:
    """A read answer that sends the read on to a mirror copy: any 5xx (the copy, or its node, is in trouble)."""
    return status >= 500


class WriteMarks:
    """Read-your-writes bookkeeping: per shard the highest LSN of this client's acknowledged writes and the term
    that acknowledged it. Mirrors keep the source's LSNs; the term tells a copy whether its LSNs are the ones that
    write was given (after a failover an old primary may hold other writes under the same numbers)."""

    def __init__(self) -> None:
        self._lsn: dict[int, int] = {}
        self._term: dict[int, int] = {}

    def note(self, shard: int, ack: Mapping[str, Any]) -> None:
        """Remember the LSN (and term) of an acknowledged write (its answer's ``lsn`` and ``term``)."""
        lsn, term = ack.get("lsn"), ack.get("term")
        if isinstance(term, int) and not isinstance(term, bool) and term > self._term.get(shard, -1):
            self._term[shard] = term
        if isinstance(lsn, int) and not isinstance(lsn, bool) and lsn > self._lsn.get(shard, 0):
            self._lsn[shard] = lsn

    def min_lsn(self, shard: int) -> int | None:
        """The LSN a read of ``shard`` from a non-primary copy must wait for (None: no write acknowledged yet)."""
        return self._lsn.get(shard)

    def headers(self, shard: int, wait_ms: int | None) -> dict[str, str]:
        """The read-your-writes headers for a read of ``shard`` from a mirror copy (empty without a mark)."""
        mark = self._lsn.get(shard)
        if mark is None:
            return {}
        term = self._term.get(shard)
        return ({MIN_LSN_HEADER: str(mark)} | ({WAIT_MS_HEADER: str(wait_ms)} if wait_ms is not None else {})
                | ({MIN_TERM_HEADER: str(term)} if term is not None else {}))
