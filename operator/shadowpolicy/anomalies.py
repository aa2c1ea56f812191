"""Shadow anomaly reports → the ShadowPolicy's ``status.anomalies`` and ``status.detector``, and which incidents
get a Reversion (pure).

Each shard's shadow answers ``GET :7403/v1/anomalies`` with its detector's state and its newest incidents (ids are
unique per shard only, so an incident is ``(shard, id)``). The status keeps the ``MAX_ROWS`` newest over all
shards; a shard that does not answer keeps the rows it had, so an incident never leaves and comes back (which
would post its event and propose its Reversion again).

Reversion by policy: an incident gets a Reversion when it is seen ``closed`` for the first time (new, or open in
the last status) with ``severity >= severityThreshold`` and ``reversion.mode`` is not ``off``. The decision is made
once: an incident already closed in the last status is never reconsidered (switching the mode later does not
revert old incidents) unless creating its Reversion failed (``proposalError``), and a row that names a Reversion
keeps it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .status import rfc3339, to_time

MAX_ROWS = 20
MAX_IDENTITIES = 5
MAX_DRIVERS = 3
MAX_NAME = 63
MAX_ID = 320
STATES_WORST_FIRST = ("fallback", "training", "trained")
ACTIONS = ("reported", "proposed", "reverting")
POLICY_LABEL = "chronoshard.io/shadow-policy"
INCIDENT_LABEL = "chronoshard.io/incident"
SHARD_LABEL = "chronoshard.io/incident-shard"
INCIDENT_ANNOTATION = "chronoshard.io/incident"


@dataclass(frozen=True)
class ShardAnomalies:
    """What one shard's shadow answered at ``GET /v1/anomalies`` (``report`` None: no answer, or 404)."""

    shard: int
    report: Mapping[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class Incident:
    """One incident as a shard's shadow reported it (times in unix seconds)."""

    shard: int
    id: str
    table: str
    state: str
    kind: str
    start: float | None
    end: float | None
    detected: float | None
    known_good: float | None
    keys: int
    bytes: int
    identities: tuple[str, ...]
    score: float
    severity: float
    drivers: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def ref(self) -> tuple[int, str]:
        """The incident's identity over all shards."""
        return (self.shard, self.id)

    @property
    def when(self) -> float:
        """What orders incidents newest first: detection, else the start."""
        return self.detected if self.detected is not None else (self.start or 0.0)

    def row(self) -> dict[str, Any]:
        """The incident's ``status.anomalies`` entry (action ``reported`` until a Reversion is made)."""
        out: dict[str, Any] = {"shard": self.shard, "id": self.id, "table": self.table, "state": self.state,
                               "kind": self.kind}
        for name, t in (("startTime", self.start), ("endTime", self.end), ("detectedTime", self.detected),
                        ("knownGoodTime", self.known_good)):
            if t is not None:
                out[name] = rfc3339(datetime.fromtimestamp(t, UTC))
        out.update(keys=self.keys, bytes=self.bytes, identities=list(self.identities[:MAX_IDENTITIES]),
                   score=round(self.score, 4), severity=round(self.severity, 4), drivers=list(self.drivers),
                   action="reported")
        return out


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _count(v: Any) -> int:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 else 0


def _driver(d: Any) -> dict[str, Any] | None:
    if not isinstance(d, Mapping) or not isinstance(d.get("feature"), str):
        return None
    out: dict[str, Any] = {"feature": d["feature"][:64]}
    for k in ("value", "usual", "weight"):
        n = _num(d.get(k))
        if n is not None:
            out[k] = round(n, 4)
    return out


def incident_from_json(shard: int, doc: Any) -> Incident | None:
    """An incident of the shadow's contract; None when it has no id (nothing could name it) or one longer than a
    Reversion's ``spec.incident.id`` takes (320 characters: the contract's ids are far shorter)."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("id"), str) or not 0 < len(doc["id"]) <= MAX_ID:
        return None
    raw_ids = doc.get("identities")
    identities = tuple(str(i) for i in raw_ids if isinstance(i, str)) if isinstance(raw_ids, list) else ()
    raw_drivers = doc.get("drivers")
    drivers = [d for d in (_driver(x) for x in raw_drivers) if d is not None] if isinstance(raw_drivers, list) else []
    drivers.sort(key=lambda d: -abs(d.get("weight", 0.0)))
    return Incident(shard=shard, id=doc["id"], table=str(doc.get("table") or "")[:63],
                    state="open" if doc.get("state") == "open" else "closed", kind=str(doc.get("kind") or "")[:64],
                    start=_num(doc.get("startTime")), end=_num(doc.get("endTime")),
                    detected=_num(doc.get("detectedTime")), known_good=_num(doc.get("knownGoodTime")),
                    keys=_count(doc.get("keys")), bytes=_count(doc.get("bytes")), identities=identities,
                    score=_num(doc.get("score")) or 0.0, severity=_num(doc.get("severity")) or 0.0,
                    drivers=tuple(drivers[:MAX_DRIVERS]))


def incidents(reports: Iterable[ShardAnomalies]) -> dict[tuple[int, str], Incident]:
    """Every incident the answering shards reported, by (shard, id)."""
    out: dict[tuple[int, str], Incident] = {}
    for r in reports:
        raw = (r.report or {}).get("incidents")
        for doc in raw if isinstance(raw, list) else []:
            inc = incident_from_json(r.shard, doc)
            if inc is not None:
                out[inc.ref] = inc
    return out


def _ref(row: Mapping[str, Any]) -> tuple[int, str]:
    return (int(row.get("shard", -1)), str(row.get("id", "")))


def _row_when(row: Mapping[str, Any]) -> float:
    t = to_time(row.get("detectedTime")) or to_time(row.get("startTime"))
    return t.timestamp() if t is not None else 0.0


def merge(old_rows: Sequence[Mapping[str, Any]], reports: Sequence[ShardAnomalies],
          found: Mapping[tuple[int, str], Incident]) -> list[dict[str, Any]]:
    """The new ``status.anomalies``: the answering shards' incidents and the old rows of the shards that did not
    answer, newest first, at most MAX_ROWS; each keeps the action and Reversion its old row had."""
    answered = {r.shard for r in reports if r.report is not None}
    old = {_ref(r): r for r in old_rows}
    rows: list[tuple[float, dict[str, Any]]] = []
    for ref, inc in found.items():
        row = inc.row()
        before = old.get(ref) or {}
        if before.get("action") in ACTIONS:
            row["action"] = before["action"]
        if before.get("reversion"):
            row["reversion"] = before["reversion"]
        if before.get("proposalError"):
            row["proposalError"] = before["proposalError"]
        rows.append((inc.when, row))
    rows += [(_row_when(r), dict(r)) for ref, r in old.items() if ref[0] not in answered]
    rows.sort(key=lambda x: (-x[0], x[1].get("shard", 0), str(x[1].get("id", ""))))
    return [r for _, r in rows[:MAX_ROWS]]


def new_rows(old_rows: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows whose incident the last status did not have (one AnomalyDetected event each)."""
    seen = {_ref(r) for r in old_rows}
    return [r for r in rows if _ref(r) not in seen]


def to_revert(old_rows: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]],
              found: Mapping[tuple[int, str], Incident], severity_threshold: float, mode: str) -> list[Incident]:
    """Incidents that get a Reversion in this pass (module docstring)."""
    if mode == "off":
        return []
    old = {_ref(r): r for r in old_rows}
    out = []
    for row in rows:
        inc = found.get(_ref(row))
        if inc is None or inc.state != "closed" or row.get("reversion") or inc.known_good is None:
            continue
        if inc.severity < severity_threshold or not inc.table:
            continue
        before = old.get(inc.ref)
        if before is not None and before.get("state") == "closed" and not before.get("proposalError"):
            continue  # decided when it closed (a failed creation is tried again)
        out.append(inc)
    return out


def reversion_name(policy: str, shard: int, incident_id: str) -> str:
    """``<policy>-s<shard>-<hash>``: the same for the same incident, at most 63 characters (DNS-1123)."""
    digest = hashlib.sha256(f"{policy}\n{shard}\n{incident_id}".encode()).hexdigest()[:10]
    suffix = f"-s{shard}-{digest}"
    return policy[:MAX_NAME - len(suffix)].rstrip("-.") + suffix


def _label_value(text: str) -> str:
    return text[:63].rstrip("-._")


def reversion_object(namespace: str, policy: str, shardset: str, inc: Incident) -> dict[str, Any]:
    """The Reversion proposed for an incident: its table's keys the incident changed, back to the known-good point.
    No ownerReference: deleting the policy must not erase the record of a reversion that ran."""
    if inc.known_good is None:
        raise ValueError(f"incident {inc.shard}/{inc.id} has no knownGoodTime")
    name = reversion_name(policy, inc.shard, inc.id)
    point = datetime.fromtimestamp(inc.known_good, UTC).isoformat().replace("+00:00", "Z")
    return {
        "apiVersion": "chronoshard.io/v1alpha1", "kind": "Reversion",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {POLICY_LABEL: _label_value(policy), SHARD_LABEL: str(inc.shard),
                                INCIDENT_LABEL: name.rsplit("-", 1)[-1]},
                     "annotations": {POLICY_LABEL: policy, INCIDENT_ANNOTATION: f"{inc.shard}/{inc.id}"}},
        "spec": {"shardSetRef": {"name": shardset}, "tables": [inc.table], "pointInTime": point,
                 "incident": {"shard": inc.shard, "table": inc.table, "id": inc.id}},
    }


def detected_message(row: Mapping[str, Any]) -> str:
    """The AnomalyDetected event: table, kind, keys, severity and who (identities are user names, not secrets)."""
    who = ", ".join(row.get("identities") or []) or "unknown identity"
    return (f"{row.get('kind') or 'anomaly'} incident {row.get('id')} on table {row.get('table')} (shard "
            f"{row.get('shard')}, {row.get('state')}): {row.get('keys', 0)} key(s), {row.get('bytes', 0)} bytes, "
            f"severity {float(row.get('severity') or 0):.2f}, score {float(row.get('score') or 0):.2f}, by {who}")


def proposed_message(name: str, inc: Incident, mode: str) -> str:
    """The ReversionProposed event."""
    then = ("runs at once if within reversion.maxBlocks, else waits for approval" if mode == "auto"
            else f"approve it with: kubectl chronoshard approve {name}")
    return (f"Reversion {name} puts back the {inc.keys} key(s) of table {inc.table} that incident {inc.id} "
            f"(shard {inc.shard}, severity {inc.severity:.2f}) changed; {then}")


def detector_summary(reports: Sequence[ShardAnomalies], model: str) -> dict[str, Any]:
    """``status.detector``: per-state counts over the answering shards, the worst state, fallback reasons."""
    states = {s: 0 for s in STATES_WORST_FIRST}
    reasons: list[str] = []
    reporting = 0
    for r in sorted(reports, key=lambda r: r.shard):
        if r.report is None:
            continue
        reporting += 1
        det = r.report.get("detector")
        det = det if isinstance(det, Mapping) else {}
        state = det.get("state")
        if state in states:
            states[str(state)] += 1
        if state == "fallback" and det.get("reason"):
            reasons.append(f"shard {r.shard}: {str(det['reason'])[:200]}")
    out: dict[str, Any] = {"model": model, "reporting": reporting, "states": states}
    worst = next((s for s in STATES_WORST_FIRST if states[s]), None)
    if worst is not None:
        out["state"] = worst
    if reasons:
        out["reasons"] = reasons[:5]
    return out
