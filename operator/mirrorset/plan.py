"""What every node of a MirrorSet should be told, and the decisions of a failover, switchover or failback (pure).

The whole MirrorSet moves together: one member ShardSet is active (its node ``i`` is the primary of shard ``i``)
and every other member's node ``i`` is a mirror of it. An operation (``status.operation``) changes the active
member in steps that each depend only on the status and on fresh observations, so a restarted operator resumes
at the step it recorded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..spec.mirrorset import FAILBACK_ANNOTATION, SWITCHOVER_ANNOTATION

FAILOVER, SWITCHOVER, FAILBACK = "failover", "switchover", "failback"
# Consecutive passes the original source must be healthy and caught up before an automatic failback.
FAILBACK_PASSES = 3


class Step(StrEnum):
    """The steps of an operation, in order (failover skips Verifying; WaitingForLease only for unreachable
    primaries)."""

    FENCING = "Fencing"
    WAITING_FOR_LEASE = "WaitingForLease"
    CATCHING_UP = "CatchingUp"
    VERIFYING = "Verifying"
    PROMOTING = "Promoting"
    RECONFIGURING = "Reconfiguring"


@dataclass(frozen=True)
class Member:
    """One member ShardSet of the MirrorSet (the source or a mirror)."""

    namespace: str
    name: str
    zone: str | None = None

    @property
    def key(self) -> str:
        """``namespace/name``, as the status names members."""
        return f"{self.namespace}/{self.name}"

    @property
    def consumer(self) -> str:
        """The consumer slot this member's nodes use on the primary's nodes."""
        return f"mirror.{self.namespace}.{self.name}"

    def lease_name(self, shard: int) -> str:
        """The Lease its node ``shard`` renews while primary."""
        return f"{self.name}-{shard}-primary"


@dataclass(frozen=True)
class Settings:
    """The spec's values the role documents and operations use, in seconds."""

    mode: str = "async"
    max_lag: float = 30.0
    sync_timeout: float = 10.0
    hold_timeout: float = 5.0
    lease_duration: float = 15.0
    health_sample: float = 10.0
    switchover_timeout: float = 30.0


@dataclass(frozen=True)
class Address:
    """Where a member's node answers and the name its certificate carries (None: plain HTTP)."""

    url: str
    server_name: str | None = None


def members_of(source: Member, mirrors: Iterable[Member]) -> list[Member]:
    """Every member, the source first."""
    return [source, *mirrors]


def find_member(members: Sequence[Member], key: str | None) -> Member | None:
    """The member ``ns/name`` (or plain ``name`` in the first member's namespace), if it is one."""
    if not key:
        return None
    if "/" not in key:
        key = f"{members[0].namespace}/{key}" if members else key
    return next((m for m in members if m.key == key), None)


def _seconds(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def primary_document(term: int, member: Member, shard: int, mirrors: Sequence[Member], s: Settings,
                     sync: bool, lsn_floor: int = 0) -> dict[str, Any]:
    """The role document of the active member's node ``shard``; ``sync`` False degrades sync mode to async (no
    mirror copy of that shard is healthy: waiting for one would refuse every write)."""
    return {"term": term, "role": "primary", "mode": "sync" if s.mode == "sync" and sync else "async",
            "mirrors": [m.consumer for m in mirrors],
            "maxLagSeconds": _seconds(s.max_lag), "syncTimeoutSeconds": _seconds(s.sync_timeout),
            "holdTimeoutSeconds": _seconds(s.hold_timeout),
            "lease": {"namespace": member.namespace, "name": member.lease_name(shard),
                      "durationSeconds": _seconds(s.lease_duration)},
            "lsnFloor": lsn_floor, "healthSampleSeconds": _seconds(s.health_sample)}


def mirror_document(term: int, member: Member, source: Member, address: Address, s: Settings,
                    diverge_lsn: int | None) -> dict[str, Any]:
    """The role document of a mirror node following ``source``'s node at ``address``."""
    return {"term": term, "role": "mirror", "mode": s.mode,
            "source": {"url": address.url, "serverName": address.server_name, "shardSet": source.key},
            "consumer": member.consumer, "divergeLsn": diverge_lsn, "healthSampleSeconds": _seconds(s.health_sample)}


def fenced_document(term: int, primary: Member) -> dict[str, Any]:
    """The role document that stops a primary's writes for a change of primary to ``primary``."""
    return {"term": term, "role": "fenced", "primaryShardSet": primary.key}


def role_documents(term: int, active: Member, members: Sequence[Member], shards: int,
                   addresses: Mapping[tuple[str, int], Address], s: Settings, sync_ok: Iterable[int],
                   diverge: Mapping[int, int | None] | None = None) -> dict[tuple[str, int], dict[str, Any]]:
    """Every node's role document in the steady state: ``active``'s nodes primary, the others its mirrors.

    A mirror whose source has no address yet (pod without an IP) gets no document this pass."""
    ok = set(sync_ok)
    others = [m for m in members if m.key != active.key]
    docs: dict[tuple[str, int], dict[str, Any]] = {}
    for i in range(shards):
        docs[(active.key, i)] = primary_document(term, active, i, others, s, i in ok)
        address = addresses.get((active.key, i))
        if address is None:
            continue
        for m in others:
            docs[(m.key, i)] = mirror_document(term, m, active, address, s, (diverge or {}).get(i))
    return docs


@dataclass(frozen=True)
class Candidate:
    """A possible new primary for one shard: a member's copy, its health and applied LSN."""

    member: Member
    healthy: bool
    applied_lsn: int


def choose_target(candidates: Iterable[Candidate], failed_zone: str | None) -> Member | None:
    """The member to promote for a failed shard: the healthy copy with the highest applied LSN (it holds every
    write any mirror acknowledged), on a tie one outside the failed primary's zone, then the first listed."""
    best: tuple[int, int, int] | None = None
    chosen: Member | None = None
    for order, c in enumerate(candidates):
        if not c.healthy:
            continue
        other_zone = 1 if failed_zone is None or c.member.zone != failed_zone else 0
        rank = (c.applied_lsn, other_zone, -order)
        if best is None or rank > best:
            best, chosen = rank, c.member
    return chosen


def new_operation(kind: str, term: int, source: Member, target: Member, reason: str, now: str) -> dict[str, Any]:
    """``status.operation`` for a change of primary from ``source`` to ``target``, recorded before any step."""
    return {"kind": kind, "step": Step.FENCING.value, "term": term, "from": source.key, "to": target.key,
            "reason": reason, "startedAt": now, "tokens": {}, "promotedAt": {}}


def behind(tokens: Mapping[str, int], applied: Mapping[int, int | None]) -> list[int]:
    """The shards whose target copy has not yet applied up to its demotion token."""
    return sorted(int(s) for s, token in tokens.items()
                  if applied.get(int(s)) is None or int(applied[int(s)] or 0) < int(token))


def timed_out(op: Mapping[str, Any], now: dt.datetime, timeout_seconds: float) -> bool:
    """True once an operation has run longer than switchoverTimeout."""
    started = parse_time(op.get("startedAt"))
    return started is not None and (now - started).total_seconds() > timeout_seconds


def lsn_floor(shard: int, op: Mapping[str, Any], last_known: Mapping[int, int]) -> int:
    """The ``lsnFloor`` of a promotion: the old primary's demotion token, else its last reported LSN."""
    token = (op.get("tokens") or {}).get(str(shard))
    return int(token) if token is not None else int(last_known.get(shard, 0))


def lost_write(shard: int, member: str, promoted_at: int, last_lsn: int, term: int,
               now: str) -> dict[str, Any] | None:
    """The ``lostWrites`` entry of a shard promoted at ``promoted_at`` whose old primary last reported
    ``last_lsn`` (None when nothing was lost)."""
    if last_lsn <= promoted_at:
        return None
    return {"shard": shard, "shardSet": member, "fromLSN": promoted_at + 1, "toLSN": last_lsn,
            "count": last_lsn - promoted_at, "confirmed": False, "term": term, "time": now}


def confirm_lost_writes(entries: Sequence[Mapping[str, Any]], discarded: Mapping[tuple[str, int], Sequence[int]]
                        ) -> list[dict[str, Any]]:
    """``lostWrites`` with each entry whose old primary rejoined and reported its discarded LSNs confirmed and
    its count set to what the node actually discarded."""
    out: list[dict[str, Any]] = []
    for e in entries:
        entry = dict(e)
        got = discarded.get((str(e.get("shardSet")), int(e.get("shard", -1))))
        if not entry.get("confirmed") and got is not None:
            lo, hi = int(entry["fromLSN"]), int(entry["toLSN"])
            entry["count"] = sum(1 for lsn in got if lo <= int(lsn) <= hi)
            entry["confirmed"] = True
        out.append(entry)
    return out


def requested_target(annotations: Mapping[str, str], status: Mapping[str, Any], members: Sequence[Member],
                     source: Member) -> tuple[str, str, Member | None, str | None] | None:
    """A new switchover or failback request from the annotations: (kind, value, target, error), or None.

    Each annotation value is handled once (status.lastSwitchoverRequest / lastFailbackRequest record it); a
    switchover value is the target, optionally followed by ``@<anything>`` so the same target can be asked again."""
    value = annotations.get(SWITCHOVER_ANNOTATION)
    if value and value != status.get("lastSwitchoverRequest"):
        named = value.split("@", 1)[0]
        target = find_member(members, named)
        return SWITCHOVER, value, target, None if target else f"{named!r} is not a member of this MirrorSet"
    value = annotations.get(FAILBACK_ANNOTATION)
    if value and value != status.get("lastFailbackRequest"):
        return FAILBACK, value, source, None
    return None


def failback_ready(source_ok_passes: int, failback_policy: str, active: Member, source: Member) -> bool:
    """An automatic failback is due: the original source was healthy and caught up for FAILBACK_PASSES passes."""
    return failback_policy == "automatic" and active.key != source.key and source_ok_passes >= FAILBACK_PASSES


def parse_time(value: Any) -> dt.datetime | None:
    """An RFC 3339 time (Kubernetes' ``Z`` or an offset, optional fraction) as an aware datetime."""
    if not isinstance(value, str) or not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def format_time(t: dt.datetime) -> str:
    """Second-precision UTC RFC 3339, as the status writes times."""
    return t.astimezone(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")



def digest_root(body: Mapping[str, Any] | None) -> tuple[str | None, dict[str, str]]:
    """The root and bucket hashes of a ``GET /v1/digest`` answer (the digest at top level or under ``digest``)."""
    inner = (body or {}).get("digest")
    doc: Mapping[str, Any] = inner if isinstance(inner, Mapping) else (body or {})
    raw = doc.get("buckets")
    buckets: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    root = doc.get("root")
    return (root if isinstance(root, str) else None), {str(k): str(v) for k, v in buckets.items()}


def digest_lsn(body: Mapping[str, Any] | None) -> int | None:
    """The LSN a digest answer was taken at."""
    for key in ("atLsn", "lsn"):
        value = (body or {}).get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def differing_buckets(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> list[str] | None:
    """The digest buckets (two hex digits) that differ between two answers; [] when equal, None when either
    answer has no digest."""
    root_a, buckets_a = digest_root(a)
    root_b, buckets_b = digest_root(b)
    if root_a is None or root_b is None:
        return None
    if root_a == root_b:
        return []
    return sorted(k for k in set(buckets_a) | set(buckets_b) if buckets_a.get(k) != buckets_b.get(k))


def needs_put(doc: Mapping[str, Any], report: Mapping[str, Any] | None) -> bool:
    """Whether a node's ``GET /v1/replication`` shows another role than the document it should have (term, role,
    mode, a mirror's source URL). A primary's report lists only the mirror slots that exist, so its ``mirrors``
    cannot be compared: the controller also remembers the documents it applied."""
    if report is None:
        return True
    if report.get("term") != doc["term"] or report.get("role") != doc["role"]:
        return True
    if doc["role"] == "mirror":
        return report.get("mode") != doc["mode"] or ((report.get("source") or {}).get("url")
                                                     != doc["source"]["url"])
    return doc["role"] == "primary" and report.get("mode") != doc["mode"]


# ---- predictive switchover (docs/tokens.md, "Predictive issuance") ------------------------------------------

# Consecutive risk probes above the threshold before a predictive switchover starts: one high reading could be
# a single noisy sample; two in a row are a trend the model saw twice.
PREDICTIVE_PROBES = 2


def _shortest(risk: Any) -> float | None:
    """The probability of the shortest window of a ``{"<seconds>": p}`` map (None without a usable entry)."""
    if not isinstance(risk, Mapping):
        return None
    best: tuple[float, float] | None = None
    for window, p in risk.items():
        try:
            seconds = float(window)
        except (TypeError, ValueError):
            continue
        if isinstance(p, int | float) and not isinstance(p, bool) and 0.0 <= p <= 1.0 and (
                best is None or seconds < best[0]):
            best = (seconds, float(p))
    return None if best is None else best[1]


def member_risks(doc: Mapping[str, Any] | None) -> dict[str, float]:
    """Each member's risk for the shortest window from the token service's ``GET /v1/risk`` (``store`` →
    probability); members without a readable risk are left out."""
    out: dict[str, float] = {}
    for m in (doc or {}).get("members") or []:
        if isinstance(m, Mapping) and isinstance(m.get("store"), str):
            p = _shortest(m.get("risk"))
            if p is not None:
                out[m["store"]] = p
    return out


def copy_risks(doc: Mapping[str, Any] | None) -> dict[tuple[str, int], float]:
    """Each copy's risk for the shortest window (``(store, shard)`` → probability), from the members'
    ``copies: [{"copy": "<store>#<shard>" | "shard": n, "risk"}]``; a member without copies gives nothing."""
    out: dict[tuple[str, int], float] = {}
    for m in (doc or {}).get("members") or []:
        if not isinstance(m, Mapping) or not isinstance(m.get("store"), str):
            continue
        for c in m.get("copies") or []:
            shard = _copy_shard(c, m["store"]) if isinstance(c, Mapping) else None
            p = _shortest(c.get("risk")) if shard is not None else None
            if shard is not None and p is not None:
                out[(m["store"], shard)] = p
    return out


def _copy_shard(copy: Mapping[str, Any], store: str) -> int | None:
    """A copy's shard index: ``shard``, or the index in its id ``<store>#<index>`` (the service's name for it)."""
    shard = copy.get("shard")
    if isinstance(shard, int) and not isinstance(shard, bool):
        return shard
    cid = copy.get("copy")
    if isinstance(cid, str) and cid.startswith(f"{store}#") and cid[len(store) + 1:].isdigit():
        return int(cid[len(store) + 1:])
    return None


def risk_count(active_risk: float | None, threshold: float, above_before: int) -> int:
    """Consecutive probes the active member's risk was above ``threshold``: a probe without a reading (service
    unreachable) or below it starts the count over."""
    if active_risk is None or active_risk <= threshold:
        return 0
    return above_before + 1


def predictive_switchover_due(policy: str, above: int, operation_running: bool) -> bool:
    """Start a planned switchover now: policy ``predictive``, no operation in progress, and the active member's
    risk above the threshold for ``PREDICTIVE_PROBES`` consecutive probes."""
    return policy == "predictive" and not operation_running and above >= PREDICTIVE_PROBES


def predictive_target(candidates: Iterable[Candidate], risks: Mapping[str, float], threshold: float,
                      active_zone: str | None) -> Member | None:
    """The member a predictive switchover moves to: a healthy one whose own risk is not above the threshold
    (moving to a member predicted to fail gains nothing), the most caught-up first (``choose_target``)."""
    return choose_target([c for c in candidates if risks.get(c.member.key, 0.0) <= threshold], active_zone)
