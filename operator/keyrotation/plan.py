"""KeyRotation decisions (pure): when a rotation is due, and whether every process is ready for the next step.

The rotation runs in the order Tink and Strimzi use — a process can decrypt with a key before any process
encrypts with it, and a key is removed only when nothing needs it:

    Distributing → AwaitingLoad → Promoting → AwaitingPromotion → Rewrapping → Transition → Verifying
    → Retiring → Completed

Every step is idempotent against the keyring Secret, so an operator restarted in any phase repeats at most
the step it was in.

A shard pod that runs a ``shadow`` container (a ShadowPolicy targets the ShardSet) has a third process holding
table keys: its history is sealed under them. It is waited for like the node and cache at every step, its history
is rewrapped like the node's blocks, and a version is retired only when neither the node nor the shadow of any
shard still holds data under it.

A pod that runs a ``weaver`` container (a WeavePlan) holds woven snapshots sealed under table keys
(docs/weaving.md): it is an optional key holder the same way, its rewrap drops the woven rows of other versions
(rebuilt from the rewrapped history), and a version is retired only when no woven snapshot still needs it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from croniter import croniter

from ..podcontract import CACHE, NODE, SHADOW, WEAVER


class Phase(StrEnum):
    """A KeyRotation's ``status.phase`` (the values are the strings the status and the events carry)."""

    PENDING = "Pending"
    WAITING = "Waiting"
    DISTRIBUTING = "Distributing"
    AWAITING_LOAD = "AwaitingLoad"
    PROMOTING = "Promoting"
    AWAITING_PROMOTION = "AwaitingPromotion"
    REWRAPPING = "Rewrapping"
    TRANSITION = "Transition"
    VERIFYING = "Verifying"
    RETIRING = "Retiring"
    COMPLETED = "Completed"
    FAILED = "Failed"


# No rotation in progress: the loop only looks for a due trigger.
IDLE_PHASES = frozenset({Phase.PENDING, Phase.WAITING, Phase.COMPLETED, Phase.FAILED})


def parse_phase(text: str | None) -> Phase | None:
    """``status.phase`` as a Phase (unset or empty is Pending); None for a value no version of us wrote."""
    try:
        return Phase(text or Phase.PENDING)
    except ValueError:
        return None


# The processes that hold table keys and answer ``GET /v1/keys``; the shadow and the weaver only in pods that run
# one.
ROLES = (NODE, CACHE)
OPTIONAL_ROLES = (SHADOW, WEAVER)
# The processes whose ``GET /v1/keys`` counts data per key version (node: blocks; shadow: history versions;
# weaver: woven rows).
DATA_ROLES = (NODE, SHADOW, WEAVER)
# The processes of a MirrorSet's mirror member a rotation of the active member waits for: the node, which stores
# the blocks sealed with the copied keyring (docs/mirroring.md, "Keys").
MEMBER_ROLES = (NODE,)


@dataclass(frozen=True)
class ProcessReport:
    """What one process (a shard's ``node`` or ``cache``) said at ``GET /v1/keys``."""

    shard: int
    role: str
    reachable: bool
    generation: int | None = None
    primary: int | None = None
    versions: frozenset[int] = frozenset()
    # node: blocks per key version; shadow: history versions per key version; cache: none
    blocks: Mapping[int, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def name(self) -> str:
        """``shard 2 node`` — how conditions and events name a process."""
        return f"shard {self.shard} {self.role}"


@dataclass(frozen=True)
class Readiness:
    """Whether every expected process satisfies a step's condition, and who is holding it up."""

    ready: bool
    waiting: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        """A one-line explanation for a condition."""
        if self.ready:
            return "every process is ready"
        shown = "; ".join(self.waiting[:5])
        more = f" (+{len(self.waiting) - 5} more)" if len(self.waiting) > 5 else ""
        return f"waiting for {shown}{more}"


def _check(reports: Sequence[ProcessReport], shards: int, roles: Iterable[str], ok: Callable[[ProcessReport], bool],
           why: Callable[[ProcessReport], str]) -> Readiness:
    """Every shard's processes of ``roles`` satisfy ``ok``; an optional role (the shadow) counts where the probe
    found one in the pod (it then reports, reachable or not)."""
    by_key = {(r.shard, r.role): r for r in reports}
    roles = tuple(roles)
    waiting: list[str] = []
    for shard in range(shards):
        present = [o for o in OPTIONAL_ROLES if o in roles and (shard, o) in by_key]
        for role in [r for r in roles if r not in OPTIONAL_ROLES] + present:
            r = by_key.get((shard, role))
            if r is None:
                waiting.append(f"shard {shard} {role}: no pod")
            elif not r.reachable:
                waiting.append(f"{r.name}: unreachable ({r.error or 'no answer'})")
            elif not ok(r):
                waiting.append(f"{r.name}: {why(r)}")
    return Readiness(not waiting, tuple(waiting))


def loaded(reports: Sequence[ProcessReport], shards: int, version: int, generation: int,
           roles: Sequence[str] = ROLES + OPTIONAL_ROLES) -> Readiness:
    """Every node, cache and shadow (``roles``) has loaded a keyring of at least ``generation`` that holds
    ``version``."""
    return _check(
        reports, shards, roles,
        lambda r: (r.generation or 0) >= generation and version in r.versions,
        lambda r: f"has keyring generation {r.generation}, needs {generation} with version {version}",
    )


def promoted(reports: Sequence[ProcessReport], shards: int, version: int, generation: int) -> Readiness:
    """Every node, cache and shadow uses ``version`` as primary."""
    return _check(
        reports, shards, ROLES + OPTIONAL_ROLES,
        lambda r: r.primary == version and (r.generation or 0) >= generation,
        lambda r: f"primary is still version {r.primary}",
    )


def dropped(reports: Sequence[ProcessReport], shards: int, versions: Iterable[int], generation: int,
            roles: Sequence[str] = ROLES + OPTIONAL_ROLES) -> Readiness:
    """No node, cache or shadow (``roles``) still holds any of ``versions``."""
    gone = frozenset(versions)
    return _check(
        reports, shards, roles,
        lambda r: not (r.versions & gone) and (r.generation or 0) >= generation,
        lambda r: f"still holds version(s) {sorted(r.versions & gone)}",
    )


def old_data(reports: Sequence[ProcessReport], keep: int, role: str) -> dict[int, int]:
    """Per shard, what ``role``'s reachable process holds under any version other than ``keep`` (node: blocks;
    shadow: history versions)."""
    return {r.shard: sum(n for v, n in r.blocks.items() if v != keep)
            for r in reports if r.role == role and r.reachable}


def old_blocks(reports: Sequence[ProcessReport], shards: int, keep: int) -> tuple[Readiness, dict[int, int]]:
    """Node blocks per shard on any version other than ``keep``; ready when every shard's node, and its shadow if
    it runs one, reports zero (a version the history still needs must not be retired)."""
    counts = {role: old_data(reports, keep, role) for role in DATA_ROLES}
    what = {NODE: "block(s)", SHADOW: "history version(s)", WEAVER: "woven row(s)"}
    readiness = _check(
        reports, shards, DATA_ROLES,
        lambda r: counts[r.role].get(r.shard, 0) == 0,
        lambda r: f"{counts[r.role].get(r.shard, 0)} {what[r.role]} still on an old key version",
    )
    return readiness, counts[NODE]


def with_members(own: Readiness, members: Mapping[str, Readiness]) -> Readiness:
    """``own`` and every MirrorSet member's readiness (keyed ``namespace/name``): a rotation of the active member
    moves on only when the mirrors' nodes, which hold copies of its keyring, are ready too."""
    waiting = own.waiting + tuple(f"{key} {w}" for key, r in sorted(members.items()) for w in r.waiting)
    return Readiness(not waiting, waiting)


# ---- triggers --------------------------------------------------------------------------------------------
def threat_id(threat: Mapping[str, Any] | None) -> str | None:
    """A stable identity of a threat report, so the same report rotates once and a new one rotates again."""
    if not threat:
        return None
    return "|".join(str(threat.get(k, "")) for k in ("reason", "compromisedVersion", "detectedAt", "description"))


def parse_time(text: str | None) -> dt.datetime | None:
    """An RFC 3339 timestamp as an aware datetime (None stays None)."""
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def format_time(when: dt.datetime) -> str:
    """An aware datetime as Kubernetes' RFC 3339 with seconds."""
    return when.astimezone(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def next_schedule(schedule: str, after: dt.datetime) -> dt.datetime:
    """The first cron time strictly after ``after`` (UTC)."""
    when = croniter(schedule, after.astimezone(dt.UTC)).get_next(dt.datetime)
    if not isinstance(when, dt.datetime):  # croniter ships no types; get_next(datetime) returns one
        raise TypeError(f"croniter returned {type(when).__name__} for a datetime")
    return when


def valid_schedule(schedule: str) -> bool:
    """True when croniter accepts ``schedule``."""
    return bool(croniter.is_valid(schedule))


@dataclass(frozen=True)
class Due:
    """A rotation that should start now."""

    reason: str  # scheduled | manual | compromise | suspected-compromise
    marker: str  # what to record so the same trigger does not fire twice


def due_rotation(spec: Mapping[str, Any], status: Mapping[str, Any], created: dt.datetime,
                 now: dt.datetime) -> Due | None:
    """Which trigger (threat first, then manual, then schedule) wants a rotation now, if any."""
    tid = threat_id(spec.get("threat"))
    if tid is not None and tid != status.get("lastThreat"):
        return Due(str(spec["threat"].get("reason", "compromise")), tid)
    if spec.get("suspend"):
        return None
    trigger = spec.get("trigger")
    if trigger and trigger != status.get("lastTrigger"):
        return Due("manual", str(trigger))
    schedule = spec.get("schedule")
    if schedule and valid_schedule(schedule):
        base = parse_time(status.get("lastScheduleTime")) or created
        when = next_schedule(schedule, base)
        if when <= now:
            return Due("scheduled", format_time(when))
    return None


def upcoming_schedule(spec: Mapping[str, Any], status: Mapping[str, Any], created: dt.datetime) -> str | None:
    """``status.nextScheduleTime``: the next cron time, or None without a (valid, unsuspended) schedule."""
    schedule = spec.get("schedule")
    if not schedule or spec.get("suspend") or not valid_schedule(schedule):
        return None
    base = parse_time(status.get("lastScheduleTime")) or created
    return format_time(next_schedule(schedule, base))


def history_entry(status: Mapping[str, Any], outcome: str, now: dt.datetime, blocks: int) -> dict[str, Any]:
    """One ``status.history`` record of the rotation that just ended."""
    started = parse_time(status.get("startTime")) or now
    return {
        "startTime": status.get("startTime") or format_time(now),
        "completionTime": format_time(now),
        "fromVersion": status.get("fromVersion"),
        "toVersion": status.get("toVersion"),
        "reason": status.get("reason"),
        "durationSeconds": round((now - started).total_seconds(), 3),
        "blocksRewrapped": blocks,
        "outcome": outcome,
    }


def append_history(history: Sequence[Mapping[str, Any]] | None, entry: Mapping[str, Any], limit: int
                   ) -> list[dict[str, Any]]:
    """The newest ``limit`` entries, newest last."""
    out = [dict(h) for h in history or []] + [dict(entry)]
    return out[-max(1, limit):]
