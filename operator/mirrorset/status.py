"""The MirrorSet's status from one pass's observations (pure): per-shard copies, member summaries, phase and
conditions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..conditions import set_condition
from .health import DEGRADED, HEALTHY, UNAVAILABLE, UNKNOWN, CopyHealth, Sample, lag_seconds
from .plan import FAILOVER, Member

PENDING, REPLICATING, DEGRADED_PHASE, FAILING_OVER, SWITCHING_OVER, FAILED = (
    "Pending", "Replicating", "Degraded", "FailingOver", "SwitchingOver", "Failed")
ROLES = ("primary", "mirror", "fenced")
STATES = ("idle", "seeding", "rewinding", "streaming", "error", "stopped")
# Copy fields kept from the last status while a copy does not answer (its last reported LSNs: a failover's
# lsnFloor and lost-write range come from them).
CARRIED = ("appliedLSN", "lastLSN", "consistentAt")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return round(float(value), 3)
    return None


def _set(row: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        row[key] = value


def copy_row(s: Sample, verdict: CopyHealth, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """One entry of ``shards[].copies``: the node's role, health with reasons, replication figures."""
    rep, hl = s.replication or {}, s.health or {}
    role = rep.get("role") if rep.get("role") in ROLES else "unknown"
    row: dict[str, Any] = {"shardSet": s.member, "role": role, "health": verdict.health,
                           "reasons": list(verdict.reasons)}
    _set(row, "state", rep.get("state") if rep.get("state") in STATES else None)
    _set(row, "appliedLSN", _int(rep.get("appliedLsn")))
    _set(row, "lastLSN", _int(rep.get("lastLsn")))
    raw = rep.get("source")
    source: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    if role == "mirror":
        _set(row, "lagLSN", _int(source.get("lagLsn")))
        _set(row, "lagSeconds", _float(lag_seconds(s)))
    elif role == "primary":
        row["lagLSN"], row["lagSeconds"] = 0, 0.0
    _set(row, "latencyMs", _float(s.latency_ms))
    _set(row, "errorRate", _float((hl.get("requests") or {}).get("errorRate")))
    _set(row, "capacity", _float((hl.get("capacity") or {}).get("fraction")))
    _set(row, "restarts", _int(hl.get("restarts")))
    for key in CARRIED:
        if key not in row and previous and previous.get(key) is not None:
            row[key] = previous[key]
    return row


def previous_copies(status: Mapping[str, Any]) -> dict[tuple[str, int], Mapping[str, Any]]:
    """The copies of the last status by (member, shard)."""
    out: dict[tuple[str, int], Mapping[str, Any]] = {}
    for shard in status.get("shards") or []:
        for c in shard.get("copies") or []:
            out[(str(c.get("shardSet")), int(shard.get("shard", -1)))] = c
    return out


def shard_rows(members: Sequence[Member], shards: int, active: Member,
               samples: Mapping[tuple[str, int], Sample], verdicts: Mapping[tuple[str, int], CopyHealth],
               previous: Mapping[tuple[str, int], Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``status.shards``: for every shard, the primary and one row per member's copy."""
    rows = []
    for i in range(shards):
        copies = []
        for m in members:
            key = (m.key, i)
            s = samples.get(key) or Sample(m.key, i, pod_exists=False, pod_ready=False, error="not probed")
            copies.append(copy_row(s, verdicts.get(key) or CopyHealth(UNKNOWN), previous.get(key)))
        rows.append({"shard": i, "primary": active.key, "copies": copies})
    return rows


def mirror_summaries(members: Sequence[Member], active: Member, rows: Sequence[Mapping[str, Any]]
                     ) -> list[dict[str, Any]]:
    """``status.mirrors``: per member that is not active, healthy on every shard, its worst lag, lowest LSN."""
    out = []
    for m in members:
        if m.key == active.key:
            continue
        copies = [c for r in rows for c in r.get("copies") or [] if c.get("shardSet") == m.key]
        entry: dict[str, Any] = {"name": m.name, "namespace": m.namespace,
                                 "healthy": bool(copies) and all(c.get("health") == HEALTHY for c in copies)}
        lags = [float(c["lagSeconds"]) for c in copies if c.get("lagSeconds") is not None]
        applied = [int(c["appliedLSN"]) for c in copies if c.get("appliedLSN") is not None]
        _set(entry, "lagSeconds", max(lags) if lags else None)
        _set(entry, "appliedLSN", min(applied) if applied else None)
        out.append(entry)
    return out


def unhealthy_copies(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """``ns/name[i]: health (reasons)`` for every copy that is not healthy."""
    out = []
    for r in rows:
        for c in r.get("copies") or []:
            if c.get("health") != HEALTHY:
                why = "; ".join(c.get("reasons") or [])
                out.append(f"{c.get('shardSet')}[{r.get('shard')}]: {c.get('health')}" + (f" ({why})" if why else ""))
    return out


def unavailable_shards(rows: Sequence[Mapping[str, Any]], member: Member) -> list[int]:
    """The shards whose copy on ``member`` is unavailable."""
    return [int(r["shard"]) for r in rows for c in r.get("copies") or []
            if c.get("shardSet") == member.key and c.get("health") == UNAVAILABLE]


def phase_of(operation: Mapping[str, Any] | None, rows: Sequence[Mapping[str, Any]], sync_degraded: bool) -> str:
    """Failing over or switching over while an operation runs; else Replicating when every copy is healthy."""
    if operation:
        return FAILING_OVER if operation.get("kind") == FAILOVER else SWITCHING_OVER
    if not rows:
        return PENDING
    if sync_degraded or any(c.get("health") in (DEGRADED, UNAVAILABLE, UNKNOWN)
                            for r in rows for c in r.get("copies") or []):
        return DEGRADED_PHASE
    return REPLICATING


def conditions(status: Mapping[str, Any], gen: int, *, phase: str, active: Member,
               rows: Sequence[Mapping[str, Any]], sync_degraded: Sequence[int], manual_hint: str | None,
               now: str | None = None) -> list[dict[str, Any]]:
    """Ready, Replicating, SyncDegraded and Degraded from this pass (Consistent is set by the consistency check)."""
    conds = list(status.get("conditions") or [])
    bad = unhealthy_copies(rows)
    op = status.get("operation") or {}
    streaming = all(c.get("state") == "streaming" for r in rows for c in r.get("copies") or []
                    if c.get("shardSet") != active.key)
    conds = set_condition(conds, "Replicating", bool(rows) and streaming and not op,
                          "Streaming" if streaming else "NotStreaming",
                          "every mirror copy streams from the active ShardSet" if streaming
                          else "not every mirror copy is streaming", gen, now)
    conds = set_condition(conds, "SyncDegraded", bool(sync_degraded), "NoHealthyMirror" if sync_degraded else "Sync",
                          f"shard(s) {list(sync_degraded)} have no healthy mirror copy: their primary runs async "
                          "until one is healthy again" if sync_degraded else "no shard runs below its mode",
                          gen, now)
    message = "; ".join(bad[:8]) + (f" (+{len(bad) - 8} more)" if len(bad) > 8 else "")
    if manual_hint:
        message = f"{manual_hint}; {message}" if message else manual_hint
    conds = set_condition(conds, "Degraded", bool(bad) or bool(manual_hint), "CopiesUnhealthy" if bad else "Healthy",
                          message or "every copy is healthy", gen, now)
    ready = phase == REPLICATING
    reason = {REPLICATING: "Replicating", PENDING: "Pending", FAILING_OVER: "FailingOver",
              SWITCHING_OVER: "SwitchingOver", FAILED: "Failed"}.get(phase, "Degraded")
    text = (f"{op.get('kind')} to {op.get('to')}: {op.get('step')}" if op
            else f"{active.key} is active; every copy healthy" if ready else message or phase)
    return set_condition(conds, "Ready", ready, reason, text, gen, now)
