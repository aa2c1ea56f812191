"""Reversion decisions (pure): the phases and their transitions, the plan request sent to every shard's shadow,
the overall plan and digest built from the per-shard plans, approval, and progress.

    Planning → AwaitingApproval → Running → Completed
        ↘ Failed        ↘ Failed      ↘ Failed

A Reversion is planned on every shard's shadow under one name (``NAMESPACE.NAME``); each shard answers with its
own plan and digest. The Reversion's digest is sha256 over the per-shard digests in shard order, so approving it
approves exactly the set of per-shard plans the status shows; each shard's run is then started with that
shard's own digest, which the shadow checks again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from ..spec.reversion import ReversionSpec

SHORT_DIGEST = 12
SHADOW_PHASES = ("planned", "running", "completed", "failed")


class Phase(StrEnum):
    """A Reversion's ``status.phase``."""

    PLANNING = "Planning"
    AWAITING_APPROVAL = "AwaitingApproval"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"


class Event(StrEnum):
    """What a pass observed that moves a Reversion on (the values are the events' reasons)."""

    PLANNED = "Planned"
    APPROVED = "Approved"
    COMPLETED = "Completed"
    FAILED = "Failed"


TERMINAL = frozenset({Phase.COMPLETED, Phase.FAILED})

_TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    (Phase.PLANNING, Event.PLANNED): Phase.AWAITING_APPROVAL,
    (Phase.PLANNING, Event.FAILED): Phase.FAILED,
    (Phase.AWAITING_APPROVAL, Event.APPROVED): Phase.RUNNING,
    (Phase.AWAITING_APPROVAL, Event.FAILED): Phase.FAILED,
    (Phase.RUNNING, Event.COMPLETED): Phase.COMPLETED,
    (Phase.RUNNING, Event.FAILED): Phase.FAILED,
}


def parse_phase(text: str | None) -> Phase | None:
    """``status.phase`` as a Phase (unset is Planning); None for a value no version of us wrote."""
    try:
        return Phase(text or Phase.PLANNING)
    except ValueError:
        return None


def transition(phase: Phase, event: Event) -> Phase:
    """The phase after ``event`` in ``phase``; ValueError for a move the state machine does not have (e.g. a
    Completed Reversion never runs again, a refused approval is no event at all)."""
    try:
        return _TRANSITIONS[(phase, event)]
    except KeyError:
        raise ValueError(f"a Reversion in phase {phase.value} cannot take event {event.value}") from None


def shard_plan_name(namespace: str, name: str) -> str:
    """The plan's name on every shard's shadow: one per Reversion, the same on every shard."""
    return f"{namespace}.{name}"


def plan_request(namespace: str, name: str, spec: ReversionSpec) -> dict[str, Any]:
    """The ``POST /v1/reversions`` body: the same spec always gives the same body (the shadow answers 409 to the
    same name with another body)."""
    body: dict[str, Any] = {
        "name": shard_plan_name(namespace, name),
        "time": rfc3339(spec.point_in_time),
        "overwriteLater": spec.overwrite_later_writes,
    }
    if spec.tables is not None:
        body["tables"] = sorted(spec.tables)
    if spec.keys is not None:
        body["keys"] = sorted(spec.keys)
    if spec.key_range is not None:
        body["range"] = {"start": spec.key_range.start, "end": spec.key_range.end}
    if spec.incident is not None:
        # Every shard gets it; only the shadow of incident.shard plans keys (the others answer an empty plan).
        body["incident"] = {"shard": spec.incident.shard, "table": spec.incident.table, "id": spec.incident.id}
    if spec.partition is not None:
        # Every shard plans the keys of the partition's ranges its history holds (and says which base it used).
        body["partition"] = spec.partition
    return body


def rfc3339(t: datetime) -> str:
    """``t`` in UTC as RFC 3339 with a ``Z`` (microseconds only when it has some)."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def selection_problem(spec: ReversionSpec) -> str | None:
    """Why the shadows cannot plan this spec, if they cannot (they take keys or a range, not both)."""
    if spec.keys is not None and spec.key_range is not None:
        return "give spec.keys or spec.range, not both (the shadows select by one of them)"
    if spec.incident is not None and (spec.keys is not None or spec.key_range is not None):
        return "spec.incident selects the keys itself; it cannot be given with keys or range"
    if spec.partition is not None and (spec.keys is not None or spec.key_range is not None
                                       or spec.incident is not None):
        return "spec.partition selects the keys itself; it cannot be given with keys, range or incident"
    return None


@dataclass(frozen=True)
class ShardPlan:
    """One shard's plan as its shadow answered ``POST /v1/reversions``."""

    shard: int
    name: str
    digest: str
    plan_lsn: int
    point_lsn: int
    point_time: float | None
    restore: int
    create: int
    delete: int
    bytes: int
    conflicts: int
    base: dict[str, Any] | None = None  # a partition plan's base on this shard: {kind, id, time, lsn}

    @property
    def keys(self) -> int:
        """Keys this shard's plan writes."""
        return self.restore + self.create + self.delete

    def to_status(self) -> dict[str, Any]:
        """The shard's row in ``status.plan.perShard``."""
        return {"shard": self.shard, "name": self.name, "digest": self.digest, "planLsn": self.plan_lsn,
                "pointLsn": self.point_lsn, "restore": self.restore, "create": self.create, "delete": self.delete,
                "bytes": self.bytes, "conflicts": self.conflicts,
                **({"base": self.base} if self.base is not None else {})}


def _int(doc: Mapping[str, Any], key: str) -> int:
    value = doc.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
    return value


def shard_plan_from_json(shard: int, doc: Mapping[str, Any]) -> ShardPlan:
    """Read a shadow's plan answer; ValueError if it is not the contract's shape (a 64-hex digest, counts)."""
    digest = doc.get("digest")
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"digest must be 64 lower-case hex characters, got {digest!r}")
    raw_point = doc.get("point")
    point: Mapping[str, Any] = raw_point if isinstance(raw_point, Mapping) else {}
    point_time = point.get("time")
    return ShardPlan(
        shard=shard, name=str(doc.get("name", "")), digest=digest, plan_lsn=_int(doc, "planLsn"),
        point_lsn=_int(point, "lsn"),
        point_time=float(point_time) if isinstance(point_time, int | float) and not isinstance(point_time, bool)
        else None,
        restore=_int(doc, "restore"), create=_int(doc, "create"), delete=_int(doc, "delete"),
        bytes=_int(doc, "bytes"), conflicts=_int(doc, "conflicts"), base=_base(doc.get("base")))


BASE_KINDS = ("woven", "snapshot", "none")


def _base(raw: Any) -> dict[str, Any] | None:
    """A shadow's ``base`` answer, kept to its known fields; ValueError if malformed (None: not a partition plan)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or raw.get("kind") not in BASE_KINDS:
        raise ValueError(f"base must be an object with kind in {BASE_KINDS}, got {raw!r}")
    ident, t = raw.get("id"), raw.get("time")
    return {"kind": raw["kind"], "id": ident if isinstance(ident, int) and not isinstance(ident, bool) else None,
            "time": float(t) if isinstance(t, int | float) and not isinstance(t, bool) else None,
            "lsn": _int(raw, "lsn")}


def overall_base(plans: Sequence[ShardPlan]) -> dict[str, Any] | None:
    """``status.plan.base``: the first shard's (by index) woven base, else shard 0's; None for other plans."""
    ordered = [p for p in sorted(plans, key=lambda p: p.shard) if p.base is not None]
    woven = [p for p in ordered if p.base is not None and p.base["kind"] == "woven"]
    chosen = woven[0] if woven else (ordered[0] if ordered else None)
    return None if chosen is None or chosen.base is None else {**chosen.base, "shard": chosen.shard}


def overall_digest(plans: Sequence[ShardPlan]) -> str:
    """sha256 hex over the per-shard digests in shard order, each followed by a newline."""
    ordered = sorted(plans, key=lambda p: p.shard)
    return hashlib.sha256("".join(f"{p.digest}\n" for p in ordered).encode()).hexdigest()


def combine(plans: Sequence[ShardPlan], shards: int) -> dict[str, Any]:
    """``status.plan`` from one plan per shard 0..shards-1; ValueError if a shard is missing or doubled."""
    if sorted(p.shard for p in plans) != list(range(shards)):
        raise ValueError(f"need one plan per shard 0..{shards - 1}, got shards {sorted(p.shard for p in plans)}")
    ordered = sorted(plans, key=lambda p: p.shard)
    total = {k: sum(getattr(p, k) for p in ordered) for k in ("restore", "create", "delete", "bytes", "conflicts")}
    base = overall_base(ordered)
    return {"keys": total["restore"] + total["create"] + total["delete"], **total,
            **({"base": base} if base is not None else {}), "perShard": [p.to_status() for p in ordered]}


def plans_from_status(plan: Mapping[str, Any] | None) -> list[ShardPlan]:
    """The per-shard plans recorded in ``status.plan`` (what a resumed pass runs)."""
    out = []
    for row in (plan or {}).get("perShard") or []:
        out.append(ShardPlan(
            shard=int(row["shard"]), name=str(row.get("name", "")), digest=str(row.get("digest", "")),
            plan_lsn=int(row.get("planLsn", 0)), point_lsn=int(row.get("pointLsn", 0)), point_time=None,
            restore=int(row.get("restore", 0)), create=int(row.get("create", 0)), delete=int(row.get("delete", 0)),
            bytes=int(row.get("bytes", 0)), conflicts=int(row.get("conflicts", 0)), base=row.get("base")))
    return out


class Verdict(StrEnum):
    """What the approval check decided."""

    APPROVED = "Approved"  # spec.approve carries the digest
    AUTO = "AutoApproved"  # the ShadowPolicy's reversion.mode auto, within maxBlocks
    REFUSED = "ApprovalRefused"  # spec.approve carries another digest: nothing runs
    WAITING = "AwaitingApproval"  # nothing to act on yet


@dataclass(frozen=True)
class Approval:
    """The approval check's verdict and what to tell the user."""

    verdict: Verdict
    message: str

    @property
    def runs(self) -> bool:
        """True when the plan may run now."""
        return self.verdict in (Verdict.APPROVED, Verdict.AUTO)


def check_approval(approve: str | None, digest: str, keys: int, mode: str | None, max_blocks: int | None,
                   name: str) -> Approval:
    """Decide whether the plan with ``digest`` (``keys`` keys) runs. ``mode``: the ShadowPolicy's reversion mode
    (None: no policy). An explicit approval must match the digest exactly; a stale one never runs, even in auto."""
    if approve:
        if approve == digest:
            return Approval(Verdict.APPROVED, f"spec.approve matches the plan's digest {digest[:SHORT_DIGEST]}")
        return Approval(Verdict.REFUSED, f"spec.approve {approve[:SHORT_DIGEST]}… is not the plan's digest "
                                         f"{digest[:SHORT_DIGEST]}…; nothing runs (kubectl chronoshard approve "
                                         f"{name} shows the plan and approves its digest)")
    if mode == "auto":
        if max_blocks is None or keys <= max_blocks:
            return Approval(Verdict.AUTO, f"ShadowPolicy reversion.mode auto: {keys} key(s) run without approval")
        return Approval(Verdict.WAITING, f"{keys} key(s) exceed the ShadowPolicy's reversion.maxBlocks "
                                         f"{max_blocks}: set spec.approve to the digest to run it "
                                         f"(kubectl chronoshard approve {name})")
    return Approval(Verdict.WAITING, f"set spec.approve to the digest to run it (kubectl chronoshard approve {name})")


@dataclass(frozen=True)
class ShardProgress:
    """One shard's run as its shadow answered ``GET /v1/reversions/{name}`` (phase None: not reachable)."""

    shard: int
    phase: str | None
    done: int = 0
    skipped: int = 0
    conflicts: int = 0
    remaining: int = 0
    message: str | None = None

    def to_status(self) -> dict[str, Any]:
        """The shard's row in ``status.progress.perShard``."""
        row: dict[str, Any] = {"shard": self.shard, "phase": self.phase or "unknown", "done": self.done,
                               "skipped": self.skipped, "conflicts": self.conflicts, "remaining": self.remaining}
        if self.message:
            row["message"] = self.message
        return row


def shard_progress_from_json(shard: int, doc: Mapping[str, Any]) -> ShardProgress:
    """Read a shadow's ``GET /v1/reversions/{name}`` answer; ValueError for an unknown phase."""
    phase = doc.get("phase")
    if phase not in SHADOW_PHASES:
        raise ValueError(f"phase must be one of {SHADOW_PHASES}, got {phase!r}")
    return ShardProgress(shard, str(phase), _int(doc, "done"), _int(doc, "skipped"), _int(doc, "conflicts"),
                         _int(doc, "remaining"))


@dataclass(frozen=True)
class Progress:
    """The run over all shards: the status block, and the event it amounts to (None: still running)."""

    status: dict[str, Any]
    event: Event | None
    message: str


def combine_progress(rows: Sequence[ShardProgress], total_keys: int) -> Progress:
    """``status.progress`` from every shard's run; Completed once all completed, Failed once all ended and one
    failed (the other shards' runs are left to finish, so the status says what each one did)."""
    ordered = sorted(rows, key=lambda r: r.shard)
    sums = {k: sum(getattr(r, k) for r in ordered) for k in ("done", "skipped", "conflicts", "remaining")}
    status = {"summary": f"{sums['done'] + sums['skipped']}/{total_keys}", **sums,
              "perShard": [r.to_status() for r in ordered]}
    failed = [r.shard for r in ordered if r.phase == "failed"]
    ended = all(r.phase in ("completed", "failed") for r in ordered)
    if ended and failed:
        return Progress(status, Event.FAILED, f"the run failed on shard(s) {failed}; {sums['done']} key(s) written, "
                                              f"{sums['skipped']} skipped")
    if ended:
        return Progress(status, Event.COMPLETED, f"{sums['done']} key(s) written, {sums['skipped']} skipped "
                                                 f"({sums['conflicts']} conflict(s))")
    waiting = [r for r in ordered if r.phase not in ("completed", "failed")]
    return Progress(status, None, f"{sums['remaining']} key(s) left on shard(s) {[r.shard for r in waiting]}")
