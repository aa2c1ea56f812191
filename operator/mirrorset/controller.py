"""The MirrorSet controller: one Kopf daemon per MirrorSet probes every member's nodes each ``probeInterval``,
classifies every copy's health, gives every node its role document, and moves the primary role (failover,
planned switchover, failback) in resumable steps.

State lives in the MirrorSet's status only: ``term``, ``activeShardSet`` and, while a change of primary runs,
``operation`` (kind, step, term, from, to, demotion tokens, promotion LSNs). The operation is written before any
node is told anything, and every step decides from the status and this pass's observations, so a restarted
operator repeats at most the step it was in (every PUT of a role document is idempotent on the node). Two things
are kept in memory and rebuilt after a restart: the consecutive failed probes per copy (a copy the status already
calls unavailable stays so) and the passes the original source has been healthy (automatic failback).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from .. import kube, naming, tokenlookup
from ..conditions import get_condition, set_condition
from ..loop import namespace_of, post_events, run_object_loop
from ..metrics import count_mirrorset_operation, set_mirrorset_copy
from ..shardpods import shard_pods
from ..spec.common import SpecError
from ..spec.mirrorset import FAILBACK_ANNOTATION, SWITCHOVER_ANNOTATION, MirrorSetSpec, parse_mirrorset
from ..triggers import TRIGGERS
from . import assets, leases, plan, probe
from . import status as status_
from .health import HEALTHY, UNAVAILABLE, CopyHealth, Sample, Thresholds, classify, promotable
from .plan import FAILBACK, FAILOVER, SWITCHOVER, Member, Settings, Step

KIND = "MirrorSet"
PLURAL = "mirrorsets"
OPERATION_SECONDS = 0.5  # between two passes while an operation waits (catching up, a lease)
MISSING_SECONDS = 5.0  # while a member ShardSet does not exist

log = logging.getLogger(__name__)

# In memory, per MirrorSet uid (see the module docstring).
_FAILURES: dict[tuple[str, str, int], int] = {}
_SOURCE_OK: dict[str, int] = {}
_LAST_CHECK: dict[str, float] = {}
# Consecutive risk probes the active member was above the threshold (predictive switchover), per uid.
_RISK_ABOVE: dict[str, int] = {}
# The steady-state role document last applied to each node (uid, member, shard): a document is PUT when it differs
# from this or from what the node reports (after a restart of the operator: once, idempotently).
_APPLIED: dict[tuple[str, str, int], dict[str, Any]] = {}

CLOCK: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)  # noqa: E731 - tests may replace it


def now() -> dt.datetime:
    """The controller's current time."""
    return CLOCK()


def _now_text() -> str:
    return plan.format_time(now())


@dataclass
class View:
    """One pass over one MirrorSet: its spec, members, pods, samples, verdicts and the status being built."""

    body: Mapping[str, Any]
    spec: MirrorSetSpec
    members: list[Member]
    shards: int
    status: dict[str, Any]
    settings: Settings
    pods: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    samples: dict[tuple[str, int], Sample] = field(default_factory=dict)
    verdicts: dict[tuple[str, int], CopyHealth] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    consistent_at: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    manual_hint: str | None = None
    key_problems: list[str] = field(default_factory=list)
    sync_degraded: list[int] = field(default_factory=list)
    risk: Mapping[str, Any] | None = None  # the token service's GET /v1/risk this pass (None: not reached)
    delay: float = 10.0

    @property
    def uid(self) -> str:
        """The MirrorSet's uid (keys the in-memory counters)."""
        return str(self.body["metadata"].get("uid") or self.body["metadata"]["name"])

    @property
    def gen(self) -> int:
        """metadata.generation."""
        return int(self.body["metadata"].get("generation") or 1)

    @property
    def source(self) -> Member:
        """spec.sourceRef as a member."""
        return self.members[0]

    @property
    def active(self) -> Member:
        """The member whose nodes are primary."""
        return plan.find_member(self.members, self.status.get("activeShardSet")) or self.source

    @property
    def term(self) -> int:
        """The term in force."""
        return int(self.status.get("term") or 0)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        """Queue an event on the MirrorSet."""
        self.events.append(("Warning" if warning else "Normal", reason, message))

    def rep(self, member: Member, shard: int) -> Mapping[str, Any]:
        """That node's ``GET /v1/replication`` of this pass ({} when it did not answer)."""
        s = self.samples.get((member.key, shard))
        return (s.replication if s else None) or {}

    def reachable(self, member: Member, shard: int) -> bool:
        """That node answered this pass."""
        s = self.samples.get((member.key, shard))
        return s is not None and s.reachable

    def healthy(self, member: Member, shard: int) -> bool:
        """That copy is healthy this pass."""
        v = self.verdicts.get((member.key, shard))
        return v is not None and v.health == HEALTHY

    def last_lsn(self, member: Member, shard: int) -> int:
        """The node's last LSN: reported now, else the last status's (an unreachable node's last report)."""
        value = self.rep(member, shard).get("lastLsn")
        if isinstance(value, int):
            return value
        prev = status_.previous_copies(self.body.get("status") or {}).get((member.key, shard)) or {}
        return int(prev.get("lastLSN") or 0)


def settings_of(spec: MirrorSetSpec) -> Settings:
    """The spec's durations in seconds, for role documents and operations."""
    return Settings(mode=spec.replication_mode, max_lag=spec.max_lag.total_seconds(),
                    sync_timeout=spec.sync_timeout.total_seconds(), hold_timeout=spec.hold_timeout.total_seconds(),
                    lease_duration=spec.lease_duration.total_seconds(),
                    health_sample=spec.health.probe_interval.total_seconds(),
                    switchover_timeout=spec.switchover_timeout.total_seconds())


def thresholds_of(spec: MirrorSetSpec) -> Thresholds:
    """The health monitor's thresholds."""
    h = spec.health
    return Thresholds(latency_ms=float(h.latency_threshold_ms), error_rate=h.error_rate_threshold,
                      capacity=h.capacity_threshold, max_lag_seconds=spec.max_lag.total_seconds(),
                      failure_threshold=h.failure_threshold)


def members_of(spec: MirrorSetSpec, namespace: str) -> list[Member]:
    """Every member ShardSet, the source first."""
    source = Member(namespace, spec.source)
    return plan.members_of(source, [Member(spec.mirror_namespace(m, namespace), m.shardset, m.zone)
                                    for m in spec.mirrors])


def _shard_counts(members: list[Member]) -> dict[str, int | None]:
    """Each member ShardSet's shard count (None: the ShardSet does not exist). Blocking."""
    out: dict[str, int | None] = {}
    for m in members:
        ss = kube.get(naming.API_VERSION, "ShardSet", m.namespace, m.name)
        shards = ((ss or {}).get("spec") or {}).get("shards")
        out[m.key] = int(shards) if ss is not None and isinstance(shards, int) else None
    return out


def _pods(members: list[Member]) -> dict[str, dict[int, dict[str, Any]]]:
    """Each member's pods by shard index. Blocking."""
    return {m.key: shard_pods(m.namespace, m.name) for m in members}


async def observe(v: View) -> None:
    """Probe every member's nodes and classify every copy."""
    v.pods = await asyncio.to_thread(_pods, v.members)
    timeout = probe.probe_timeout(v.spec.health.probe_interval.total_seconds())
    sampled = await asyncio.gather(*(probe.sample_member(m, v.pods[m.key], v.shards, timeout) for m in v.members))
    previous = status_.previous_copies(v.body.get("status") or {})
    thresholds = thresholds_of(v.spec)
    for samples in sampled:
        for s in samples:
            key = (s.member, s.shard)
            v.samples[key] = s
            counter = (v.uid, s.member, s.shard)
            was = (previous.get(key) or {}).get("health") == UNAVAILABLE
            verdict = classify(s, _FAILURES.get(counter, 0), thresholds, was)
            _FAILURES[counter] = verdict.failures
            v.verdicts[key] = verdict


# ---- the steady state ----------------------------------------------------------------------------------------


def _sync_ok(v: View) -> list[int]:
    """The shards with at least one healthy mirror copy (sync mode waits for one; without one it would refuse
    every write, so that primary runs async and SyncDegraded says so)."""
    active = v.active
    return [i for i in range(v.shards) if any(v.healthy(m, i) for m in v.members if m.key != active.key)]


async def apply_roles(v: View) -> None:
    """Give every reachable node its steady-state role document where its report differs."""
    active = v.active
    addresses = {(active.key, i): a for i in range(v.shards)
                 if (a := probe.address(active, i, v.pods[active.key].get(i))) is not None}
    ok = _sync_ok(v)
    if v.settings.mode == "sync":
        v.sync_degraded = [i for i in range(v.shards) if i not in ok]
    diverge = {i: (lsn if isinstance(lsn := v.rep(active, i).get("promotedAtLsn"), int) else None)
               for i in range(v.shards)}
    docs = plan.role_documents(v.term, active, v.members, v.shards, addresses, v.settings, ok, diverge)
    for m in v.members:
        mine = {i: d for (key, i), d in docs.items() if key == m.key and v.reachable(m, i) and (
            plan.needs_put(d, v.rep(m, i)) or _APPLIED.get((v.uid, m.key, i)) != d)}
        if not mine:
            continue
        answers = await probe.put_roles(v.pods[m.key], mine)
        for i, ans in answers.items():
            if ans.ok:
                _APPLIED[(v.uid, m.key, i)] = mine[i]
                v.event("RoleApplied", f"{m.key}[{i}]: {mine[i]['role']} at term {v.term}")
            elif ans.status:
                v.event("RoleRefused", f"{m.key}[{i}] refused its {mine[i]['role']} document at term {v.term}: "
                                       f"{ans.error}", warning=True)


def _confirm_lost_writes(v: View) -> None:
    """Confirm lost-write ranges from the rejoined old primaries' discardedLsns."""
    entries = v.status.get("lostWrites") or []
    if not entries:
        return
    discarded: dict[tuple[str, int], list[int]] = {}
    for (key, i), s in v.samples.items():
        lsns = (s.replication or {}).get("discardedLsns")
        if isinstance(lsns, list):
            discarded[(key, i)] = [int(x) for x in lsns if isinstance(x, int)]
    confirmed = plan.confirm_lost_writes(entries, discarded)
    for old, new in zip(entries, confirmed, strict=True):
        if new.get("confirmed") and not old.get("confirmed"):
            v.event("LostWritesConfirmed", f"{new['shardSet']}[{new['shard']}] discarded {new['count']} change(s) "
                                           f"in LSNs {new['fromLSN']}..{new['toLSN']} when it rejoined")
    v.status["lostWrites"] = confirmed


async def consistency_check(v: View, force: bool = False) -> None:
    """Every consistency.interval: each mirror's digest at the primary's LSN; a mismatch repairs the buckets."""
    interval = v.spec.consistency_interval.total_seconds()
    last = _LAST_CHECK.get(v.uid)
    if not force and last is not None and time.monotonic() - last < interval:
        return
    _LAST_CHECK[v.uid] = time.monotonic()
    active = v.active
    prim = await probe.digests(v.pods[active.key], {i: None for i in range(v.shards) if v.reachable(active, i)})
    mismatched: list[str] = []
    compared = 0
    for m in v.members:
        if m.key == active.key:
            continue
        at = {i: lsn for i, a in prim.items() if a.ok and (lsn := plan.digest_lsn(a.body)) is not None
              and v.reachable(m, i) and v.rep(m, i).get("role") == "mirror"}
        answers = await probe.digests(v.pods[m.key], dict(at))
        repairs: dict[int, list[str]] = {}
        for i, ans in answers.items():
            diff = plan.differing_buckets(prim[i].body, ans.body) if ans.ok else None
            compared += diff is not None
            if diff == []:
                v.consistent_at[(m.key, i)] = {"lsn": at[i], "time": _now_text()}
            elif diff:
                repairs[i] = diff
                mismatched.append(f"{m.key}[{i}]: {len(diff)} bucket(s) differ at LSN {at[i]}")
        if repairs:
            await probe.repair(v.pods[m.key], repairs)
    if not compared:  # no copy could be compared (none following yet, an LSN passed): nothing to say; next pass
        _LAST_CHECK.pop(v.uid, None)
        return
    _consistent(v, mismatched)


def _consistent(v: View, mismatched: list[str]) -> None:
    if mismatched:
        message = "; ".join(mismatched) + "; the differing buckets are being repaired"
        v.event("InconsistencyFound", message, warning=True)
    v.status["conditions"] = set_condition(
        v.status.get("conditions"), "Consistent", not mismatched, "DigestMismatch" if mismatched else "DigestsEqual",
        message if mismatched else "every mirror's digest equals the primary's at its LSN", v.gen)


async def _copy_keys(v: View) -> None:
    """Keep every member's keyring and KEK equal to the active member's (operator/mirrorset/assets.py)."""
    active = v.active
    others = [(m.namespace, m.name) for m in v.members if m.key != active.key]
    try:
        sync = await asyncio.to_thread(assets.copy_keys, (active.namespace, active.name), others)
    except ApiException as exc:
        if exc.status != 409:  # 409: a Secret changed under the copy; the next pass copies again
            raise
        return
    if sync.copied:
        v.event("KeysCopied", f"keyring/KEK of {active.key} copied into {', '.join(sync.copied)}")
    v.key_problems = list(sync.problems)


# ---- starting an operation -----------------------------------------------------------------------------------


def start(v: View, kind: str, target: Member, reason: str) -> None:
    """Record a change of primary (``status.operation``) before any node is told anything."""
    op = plan.new_operation(kind, v.term + 1, v.active, target, reason, _now_text())
    v.status["operation"] = op
    v.event({FAILOVER: "FailoverStarted", SWITCHOVER: "SwitchoverStarted", FAILBACK: "FailbackStarted"}[kind],
            f"{kind} from {op['from']} to {op['to']} at term {op['term']}: {reason}", warning=kind == FAILOVER)
    v.delay = 0.0


def _request(v: View) -> bool:
    """Handle a new switchover or failback annotation; True when it started an operation."""
    meta = v.body["metadata"]
    req = plan.requested_target(meta.get("annotations") or {}, v.status, v.members, v.source)
    if req is None:
        return False
    kind, value, target, error = req
    v.status["lastSwitchoverRequest" if kind == SWITCHOVER else "lastFailbackRequest"] = value
    annotation = SWITCHOVER_ANNOTATION if kind == SWITCHOVER else FAILBACK_ANNOTATION
    if error or target is None:
        v.event("RequestRefused", f"{annotation}={value}: {error}", warning=True)
        return False
    if target.key == v.active.key:
        v.event("RequestIgnored", f"{annotation}={value}: {target.key} is already the active ShardSet")
        return False
    start(v, kind, target, f"requested by annotation {annotation}={value}")
    return True


def _failover_target(v: View, failed: list[int]) -> Member | None:
    """The member to promote: for the first failed shard, its most caught-up healthy mirror copy."""
    shard, thresholds = failed[0], thresholds_of(v.spec)
    candidates = [plan.Candidate(m, all(promotable(v.samples[(m.key, i)], thresholds) for i in range(v.shards)),
                                 int(v.rep(m, shard).get("appliedLsn") or 0))
                  for m in v.members if m.key != v.active.key]
    return plan.choose_target(candidates, v.active.zone)


def _react(v: View) -> bool:
    """Start a failover when a shard of the active member is unavailable (policy automatic or predictive); under
    the manual policy only say so. True when an operation started."""
    active = v.active
    failed = [i for i in range(v.shards) if v.verdicts.get((active.key, i), CopyHealth(HEALTHY)).health == UNAVAILABLE]
    if not failed:
        return False
    if v.spec.failover_policy == "manual":
        v.manual_hint = (f"primary shard(s) {failed} of {active.key} unavailable; failover policy is manual: "
                         f"annotate {SWITCHOVER_ANNOTATION}=<member> to switch over")
        return False
    target = _failover_target(v, failed)
    if target is None:
        v.manual_hint = f"primary shard(s) {failed} of {active.key} unavailable and no healthy mirror to promote"
        degraded = get_condition(v.status.get("conditions"), "Degraded") or {}
        if v.manual_hint not in str(degraded.get("message")):  # once, not every pass
            v.event("NoFailoverTarget", v.manual_hint, warning=True)
        return False
    reasons = "; ".join(v.verdicts[(active.key, failed[0])].reasons)
    start(v, FAILOVER, target, f"shard(s) {failed} of {active.key} unavailable ({reasons})")
    return True


async def read_risk(v: View) -> None:
    """Read the token service's ``GET /v1/risk`` and count the probes the active member was above the threshold
    (docs/tokens.md, "Predictive issuance")."""
    ns, name = v.body["metadata"]["namespace"], v.body["metadata"]["name"]
    v.risk = await tokenlookup.read_risk(ns, name)
    active = plan.member_risks(v.risk).get(v.active.key) if v.risk is not None else None
    _RISK_ABOVE[v.uid] = plan.risk_count(active, v.spec.prediction.unavailability_threshold,
                                         _RISK_ABOVE.get(v.uid, 0))


def _predict(v: View) -> bool:
    """With ``failover.policy: predictive``, start a planned switchover away from an active member predicted to
    become unavailable (above the threshold for two consecutive probes). True when it started."""
    above = _RISK_ABOVE.get(v.uid, 0)
    if not plan.predictive_switchover_due(v.spec.failover_policy, above, bool(v.status.get("operation"))):
        return False
    threshold, thresholds = v.spec.prediction.unavailability_threshold, thresholds_of(v.spec)
    risks = plan.member_risks(v.risk)
    candidates = [plan.Candidate(m, all(promotable(v.samples[(m.key, i)], thresholds) for i in range(v.shards)),
                                 int(v.rep(m, 0).get("appliedLsn") or 0))
                  for m in v.members if m.key != v.active.key]
    target = plan.predictive_target(candidates, risks, threshold, v.active.zone)
    active_risk = risks.get(v.active.key, 0.0)
    if target is None:
        v.manual_hint = (f"{v.active.key} is predicted to become unavailable (risk {active_risk:.2f} > {threshold}) "
                         "but no healthy member below the threshold can take over")
        return False
    _RISK_ABOVE[v.uid] = 0
    v.event("PredictiveSwitchover", f"{v.active.key}: unavailability risk {active_risk:.2f} above {threshold} for "
                                    f"{above} consecutive probes; switching over to {target.key}", warning=True)
    start(v, SWITCHOVER, target, f"predicted unavailability of {v.active.key} (risk {active_risk:.2f} > "
                                 f"{threshold} for {above} probes)")
    return True


def _failback_due(v: View) -> bool:
    """Count the passes the original source was healthy (and so caught up); start an automatic failback."""
    source, active = v.source, v.active
    if source.key == active.key:
        _SOURCE_OK.pop(v.uid, None)
        return False
    ok = all(v.healthy(source, i) and v.rep(source, i).get("state") == "streaming" for i in range(v.shards))
    _SOURCE_OK[v.uid] = _SOURCE_OK.get(v.uid, 0) + 1 if ok else 0
    if not plan.failback_ready(_SOURCE_OK[v.uid], v.spec.failback, active, source):
        return False
    _SOURCE_OK[v.uid] = 0
    start(v, FAILBACK, source, f"automatic failback: {source.key} healthy and caught up for "
                               f"{plan.FAILBACK_PASSES} passes")
    return True


async def steady(v: View) -> None:
    """No operation: requests, reactive failover and failback first; else roles, keys, lost writes, consistency."""
    if _request(v) or _react(v) or _predict(v) or _failback_due(v):
        return
    await apply_roles(v)
    await _copy_keys(v)
    _confirm_lost_writes(v)
    await consistency_check(v)


# ---- the steps of an operation -------------------------------------------------------------------------------


@dataclass
class Op:
    """The operation in progress, as this pass sees it."""

    doc: dict[str, Any]
    frm: Member
    to: Member

    @property
    def term(self) -> int:
        """The term being established."""
        return int(self.doc["term"])

    @property
    def kind(self) -> str:
        """failover, switchover or failback."""
        return str(self.doc["kind"])

    @property
    def tokens(self) -> dict[str, int]:
        """Demotion tokens per shard (str keys, as in the status)."""
        return self.doc.setdefault("tokens", {})

    @property
    def promoted(self) -> dict[str, int]:
        """Promotion LSNs per shard."""
        return self.doc.setdefault("promotedAt", {})

    def goto(self, v: View, step: Step, message: str) -> None:
        """Enter ``step`` and say so."""
        if self.doc.get("step") != step.value:
            self.doc["step"] = step.value
            v.event(step.value, message)
        v.delay = 0.0


async def _fence(v: View, op: Op, shards: list[int]) -> None:
    """PUT role fenced (term T) on the reachable old primaries; their answer's lastLsn is the demotion token."""
    docs = {i: plan.fenced_document(op.term, op.to) for i in shards if v.reachable(op.frm, i)}
    if not docs:
        return
    for i, ans in (await probe.put_roles(v.pods[op.frm.key], docs)).items():
        lsn = (ans.body or {}).get("lastLsn") if ans.ok else None
        if not isinstance(lsn, int) and ans.ok:
            lsn = v.rep(op.frm, i).get("lastLsn") if v.rep(op.frm, i).get("role") == "fenced" else None
        if isinstance(lsn, int):
            op.tokens[str(i)] = lsn
            v.event("Fenced", f"{op.frm.key}[{i}] fenced at term {op.term}; demotion token LSN {lsn}")
        elif ans.status:
            v.event("FenceRefused", f"{op.frm.key}[{i}]: {ans.error}", warning=True)


async def _fencing(v: View, op: Op) -> None:
    await _fence(v, op, [i for i in range(v.shards) if str(i) not in op.tokens])
    missing = [i for i in range(v.shards) if str(i) not in op.tokens]
    if not missing:
        op.goto(v, Step.CATCHING_UP, f"every primary of {op.frm.key} fenced; waiting for {op.to.key} to reach the "
                                     f"demotion tokens {op.tokens}")
    elif not any(v.reachable(op.frm, i) for i in missing):
        op.goto(v, Step.WAITING_FOR_LEASE, f"{op.frm.key} shard(s) {missing} unreachable: waiting for their "
                                           "Leases to expire")


async def _waiting_for_lease(v: View, op: Op) -> None:
    missing = [i for i in range(v.shards) if str(i) not in op.tokens]
    await _fence(v, op, missing)  # one that answers again is fenced directly
    waiting: list[str] = []
    for i in (i for i in missing if str(i) not in op.tokens):
        name = op.frm.lease_name(i)
        taken = await asyncio.to_thread(leases.take_over, op.frm.namespace, name, op.term,
                                        max(1, int(v.settings.lease_duration)), now())
        if taken:
            continue
        lease = await asyncio.to_thread(leases.read, op.frm.namespace, name)
        waiting.append(f"{name} ({leases.seconds_left(lease, now()):.1f}s left)")
    if waiting:
        v.status["conditions"] = set_condition(v.status.get("conditions"), "Ready", False, "WaitingForLease",
                                               "waiting for Lease(s) " + ", ".join(waiting), v.gen)
        v.delay = OPERATION_SECONDS
        return
    op.goto(v, Step.CATCHING_UP, f"Leases of {op.frm.key} shard(s) {missing} expired and taken over (holder "
                                 f"{leases.fenced_holder(op.term)})")


async def _catching_up(v: View, op: Op) -> None:
    applied = {i: (a if isinstance(a := v.rep(op.to, i).get("appliedLsn"), int) else None) for i in range(v.shards)}
    late = plan.behind(op.tokens, applied)
    nxt = Step.PROMOTING if op.kind == FAILOVER else Step.VERIFYING
    if not late:
        op.goto(v, nxt, f"{op.to.key} reached every demotion token")
        return
    if not plan.timed_out(op.doc, now(), v.settings.switchover_timeout):
        v.delay = OPERATION_SECONDS
        return
    if op.kind == FAILOVER:
        # The active member has a dead shard: staying is no option. What the target misses is reported lost.
        v.event("CatchUpTimedOut", f"{op.to.key} shard(s) {late} behind their demotion tokens after "
                                   "switchoverTimeout; promoting anyway (the difference is reported in lostWrites)",
                warning=True)
        op.goto(v, nxt, f"promoting {op.to.key}")
        return
    await abort(v, op, f"{op.to.key} shard(s) {late} did not reach their demotion tokens within switchoverTimeout")


async def _verifying(v: View, op: Op) -> None:
    tokens = {int(s): int(t) for s, t in op.tokens.items()}
    old = await probe.digests(v.pods[op.frm.key], {i: None for i in tokens})
    new = await probe.digests(v.pods[op.to.key], {i: lsn for i, lsn in tokens.items()})
    mismatch: dict[int, list[str]] = {}
    pending: list[int] = []
    for i in tokens:
        diff = plan.differing_buckets(old[i].body, new[i].body) if old[i].ok and new[i].ok else None
        if diff is None or plan.digest_lsn(old[i].body) not in (None, tokens[i]):
            pending.append(i)
        elif diff:
            mismatch[i] = diff
    if mismatch:
        await abort(v, op, f"digest mismatch on shard(s) {sorted(mismatch)} at the demotion tokens", mismatch)
    elif not pending:
        op.goto(v, Step.PROMOTING, f"digests of {op.frm.key} and {op.to.key} equal at the demotion tokens")
    elif plan.timed_out(op.doc, now(), v.settings.switchover_timeout):
        await abort(v, op, f"no digest of shard(s) {pending} within switchoverTimeout")
    else:
        v.delay = OPERATION_SECONDS


async def _promoting(v: View, op: Op) -> None:
    others = [m for m in v.members if m.key != op.to.key]
    docs: dict[int, dict[str, Any]] = {}
    for i in (i for i in range(v.shards) if str(i) not in op.promoted):
        rep = v.rep(op.to, i)
        if rep.get("role") == "primary" and rep.get("term") == op.term:  # promoted before a restart
            op.promoted[str(i)] = int(rep.get("promotedAtLsn") or rep.get("appliedLsn") or 0)
            continue
        # sync from the start when some other copy will follow at once (the fenced old primary rejoins in this
        # pass): an async window right after the promotion could acknowledge writes no mirror holds.
        sync = any(v.healthy(m, i) for m in others)
        floor = plan.lsn_floor(i, op.doc, {i: v.last_lsn(op.frm, i)})
        docs[i] = plan.primary_document(op.term, op.to, i, [m for m in others], v.settings, sync, floor)
    if docs:
        for i, ans in (await probe.put_roles(v.pods[op.to.key], docs)).items():
            at = (ans.body or {}).get("promotedAtLsn") if ans.ok else None
            if isinstance(at, int):
                op.promoted[str(i)] = at
                v.event("Promoted", f"{op.to.key}[{i}] primary at term {op.term} (promoted at LSN {at}, "
                                    f"lsnFloor {docs[i]['lsnFloor']})")
            else:
                v.event("PromotionFailed", f"{op.to.key}[{i}]: {ans.error or 'no promotedAtLsn'}", warning=True)
    if len(op.promoted) == v.shards:
        held = max(0.0, (now() - (plan.parse_time(op.doc.get("startedAt")) or now())).total_seconds())
        op.goto(v, Step.RECONFIGURING, f"every shard of {op.to.key} is primary; reconfiguring the other members")
        await _reconfiguring(v, op, held)
    else:
        v.delay = OPERATION_SECONDS


async def _reconfiguring(v: View, op: Op, held: float | None = None) -> None:
    """Every other member follows the new primary (the old primary rewinds from promotedAt when it diverged);
    nodes that do not answer get their document from the steady-state passes."""
    for m in v.members:
        if m.key == op.to.key:
            continue
        docs = {}
        for i in range(v.shards):
            address = probe.address(op.to, i, v.pods[op.to.key].get(i))
            if address is not None and v.reachable(m, i):
                docs[i] = plan.mirror_document(op.term, m, op.to, address, v.settings, op.promoted.get(str(i)))
        if docs:
            for i, ans in (await probe.put_roles(v.pods[m.key], docs)).items():
                if not ans.ok:
                    v.event("RejoinPending", f"{m.key}[{i}]: {ans.error}", warning=True)
    finish(v, op, "Succeeded", f"{op.to.key} is primary at term {op.term}; promoted at LSNs {op.promoted}", held)


def _lost_writes(v: View, op: Op) -> list[dict[str, Any]]:
    """async mode: per shard, the old primary's changes past the promotion point."""
    if v.settings.mode != "async":
        return []
    out = []
    for i in range(v.shards):
        last = plan.lsn_floor(i, op.doc, {i: v.last_lsn(op.frm, i)})
        entry = plan.lost_write(i, op.frm.key, int(op.promoted.get(str(i), last)), last, op.term, _now_text())
        if entry is not None:
            out.append(entry)
    return out


def finish(v: View, op: Op, outcome: str, message: str, held: float | None = None) -> None:
    """End the operation: the new term and active member, lastOperation, lost writes, counters, an event."""
    if held is None:
        held = max(0.0, (now() - (plan.parse_time(op.doc.get("startedAt")) or now())).total_seconds())
    if outcome == "Succeeded":
        v.status.update(term=op.term, activeShardSet=op.to.key, activeSource=op.to.name)
        lost = _lost_writes(v, op)
        if lost:
            v.status["lostWrites"] = (list(v.status.get("lostWrites") or []) + lost)[-32:]
            v.event("WritesLost", "; ".join(f"{e['shardSet']}[{e['shard']}]: LSNs {e['fromLSN']}..{e['toLSN']} "
                                            f"({e['count']})" for e in lost), warning=True)
        if op.kind == FAILOVER:
            v.status["failovers"] = int(v.status.get("failovers") or 0) + 1
            v.status["lastFailoverTime"] = _now_text()
    v.status["lastOperation"] = {"kind": op.kind, "from": op.frm.key, "to": op.to.key, "term": op.term,
                                 "startedAt": op.doc.get("startedAt"), "finishedAt": _now_text(),
                                 "outcome": outcome, "message": message[:1000], "heldSeconds": round(held, 3)}
    v.status["operation"] = None
    ns, name = v.body["metadata"]["namespace"], v.body["metadata"]["name"]
    count_mirrorset_operation(ns, name, op.kind, outcome, held)
    reason = {FAILOVER: "FailedOver", SWITCHOVER: "SwitchedOver", FAILBACK: "FailedBack"}[op.kind]
    v.event(reason if outcome == "Succeeded" else "OperationAborted", f"{op.kind} {outcome.lower()}: {message}",
            warning=outcome != "Succeeded")
    v.delay = 0.0


async def abort(v: View, op: Op, why: str, repair: dict[int, list[str]] | None = None) -> None:
    """Give the old primary back its writes at term T+1 (nothing was promoted: nothing is lost), and repair the
    target's differing buckets when digests disagreed."""
    term = op.term + 1
    others = [m for m in v.members if m.key != op.frm.key]
    docs = {i: plan.primary_document(term, op.frm, i, others, v.settings, any(v.healthy(m, i) for m in others))
            for i in range(v.shards) if v.reachable(op.frm, i)}
    answers = await probe.put_roles(v.pods[op.frm.key], docs) if docs else {}
    failed = [i for i, a in answers.items() if not a.ok]
    v.status["term"] = term
    if repair:
        v.status["conditions"] = set_condition(
            v.status.get("conditions"), "Consistent", False, "DigestMismatch",
            f"{op.to.key} differed from {op.frm.key} at the demotion tokens in shard(s) {sorted(repair)}; "
            "repairing its differing buckets", v.gen)
        await probe.repair(v.pods[op.to.key], repair)
    note = f"; {op.frm.key} shard(s) {failed} not yet writable again" if failed else ""
    finish(v, op, "Aborted", f"{why}; {op.frm.key} stays primary at term {term}{note}")
    v.status["lastOperation"]["term"] = term


_STEPS: dict[str, Callable[[View, Op], Awaitable[None]]] = {
    Step.FENCING.value: _fencing,
    Step.WAITING_FOR_LEASE.value: _waiting_for_lease,
    Step.CATCHING_UP.value: _catching_up,
    Step.VERIFYING.value: _verifying,
    Step.PROMOTING.value: _promoting,
    Step.RECONFIGURING.value: _reconfiguring,
}


async def advance(v: View) -> None:
    """Run the recorded step of the operation in progress (one step per pass: each is written before the next)."""
    doc = dict(v.status["operation"])
    frm = plan.find_member(v.members, doc.get("from")) or v.active  # step() refuses a spec without the active
    to = plan.find_member(v.members, doc.get("to"))
    v.status["operation"] = doc
    v.delay = OPERATION_SECONDS
    handler = _STEPS.get(str(doc.get("step")))
    op = Op(doc, frm, to or Member(*(str(doc.get("to") or "/").split("/", 1))))
    if to is None or handler is None:
        await abort(v, op, f"{doc.get('to')} is no longer a member" if to is None
                    else f"unknown step {doc.get('step')!r}")
        return
    lost = [i for i in range(v.shards) if v.verdicts.get((to.key, i), CopyHealth(UNAVAILABLE)).health == UNAVAILABLE]
    if lost and not op.promoted:
        # Nothing promoted yet: give the old primaries their writes back; a failover then starts over (next term)
        # towards another member if one can be promoted.
        await abort(v, op, f"the target {to.key} became unavailable (shard(s) {lost}) before its promotion")
        return
    await handler(v, op)


# ---- one pass ------------------------------------------------------------------------------------------------


def _invalid(body: Mapping[str, Any], reason: str, message: str, phase: str) -> dict[str, Any]:
    st = dict(body.get("status") or {})
    gen = int(body["metadata"].get("generation") or 1)
    st.update(observedGeneration=gen, phase=phase)
    st["conditions"] = set_condition(st.get("conditions"), "Ready", False, reason, message, gen)
    return st


async def step(body: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str, str]], float]:
    """One pass: (status to write, events, seconds until the next pass)."""
    meta = body["metadata"]
    try:
        spec = parse_mirrorset(body.get("spec") or {})
    except SpecError as exc:
        return _invalid(body, "InvalidSpec", str(exc), status_.FAILED), [], 30.0
    members = members_of(spec, meta["namespace"])
    counts = await asyncio.to_thread(_shard_counts, members)
    missing = [k for k, n in counts.items() if n is None]
    if missing:
        return _invalid(body, "MemberMissing", f"ShardSet(s) {missing} do not exist", status_.PENDING), [], \
            MISSING_SECONDS
    shards = counts[members[0].key] or 0
    if len(set(counts.values())) != 1:
        return _invalid(body, "ShardCountMismatch", f"every member needs the source's shard count: {counts}",
                        status_.FAILED), [], 30.0
    v = View(body, spec, members, shards, dict(body.get("status") or {}), settings_of(spec),
             delay=spec.health.probe_interval.total_seconds())
    active = (body.get("status") or {}).get("activeShardSet")
    if active and plan.find_member(members, active) is None:
        # Its nodes may still be primaries: making another member primary now could leave two writable copies.
        return _invalid(body, "ActiveMemberRemoved", f"the active ShardSet {active} is no longer a member; put it "
                        "back in the spec (then switch over) before removing it", status_.FAILED), [], 30.0
    v.status["observedGeneration"] = v.gen
    if not v.term:  # the first pass: term 1, the source active
        v.status.update(term=1, activeShardSet=v.source.key, activeSource=v.source.name)
        v.event("Initialized", f"term 1: {v.source.key} is active, {len(members) - 1} mirror member(s)")
    await observe(v)
    await read_risk(v)
    if v.status.get("operation"):
        await advance(v)
    else:
        await steady(v)
    _build(v)
    return v.status, v.events, v.delay


def _build(v: View) -> None:
    """Copies, summaries, phase, conditions and metrics from this pass."""
    active = v.active
    rows = status_.shard_rows(v.members, v.shards, active, v.samples, v.verdicts,
                              status_.previous_copies(v.body.get("status") or {}))
    for r in rows:
        for c in r["copies"]:
            at = v.consistent_at.get((c["shardSet"], r["shard"]))
            if at is not None:
                c["consistentAt"] = at
    v.status["shards"] = rows
    v.status["mirrors"] = status_.mirror_summaries(v.members, active, rows)
    _risk_fields(v, rows)
    op = v.status.get("operation")
    phase = status_.phase_of(op, rows, bool(v.sync_degraded))
    v.status["phase"] = phase
    v.status["conditions"] = status_.conditions(v.status, v.gen, phase=phase, active=active, rows=rows,
                                                sync_degraded=v.sync_degraded,
                                                manual_hint="; ".join(filter(None, [v.manual_hint, *v.key_problems]))
                                                or None)
    if not any(c.get("type") == "Consistent" for c in v.status["conditions"]):
        v.status["conditions"] = set_condition(v.status["conditions"], "Consistent", "Unknown", "NotChecked",
                                               "no consistency check yet", v.gen)
    ns, name = v.body["metadata"]["namespace"], v.body["metadata"]["name"]
    for r in rows:
        for c in r["copies"]:
            set_mirrorset_copy(ns, name, c["shardSet"], r["shard"], c["health"], c.get("lagSeconds"))


def _risk_fields(v: View, rows: list[dict[str, Any]]) -> None:
    """The token service's risk in the status: the active member's (``sourceUnavailabilityRisk`` and
    ``unavailabilityRisk``), each mirror's and each copy's; absent while the service is not reached."""
    members = plan.member_risks(v.risk)
    copies = plan.copy_risks(v.risk)
    for r in rows:
        for c in r["copies"]:
            p = copies.get((c["shardSet"], r["shard"]))
            if p is not None:
                c["unavailabilityRisk"] = round(p, 4)
    for m in v.status["mirrors"]:
        p = members.get(f"{m['namespace']}/{m['name']}")
        if p is not None:
            m["unavailabilityRisk"] = round(p, 4)
    active = members.get(v.active.key)
    v.status["sourceUnavailabilityRisk"] = None if active is None else round(active, 4)
    v.status["unavailabilityRisk"] = None if v.risk is None else {
        "store": v.active.key, "risk": round(active, 4) if active is not None else None,
        "threshold": v.spec.prediction.unavailability_threshold,
        "consecutiveAbove": _RISK_ABOVE.get(v.uid, 0)}


# Written by the token service's controller (operator/tokens/), never by this one: a pass started from an older
# snapshot must not put an old value back.
_NOT_OURS = ("tokenService", "tokensIssued")


def write_status(body: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Replace the MirrorSet's status (fields absent or None are removed); True if written."""
    old = {k: v for k, v in (body.get("status") or {}).items() if k not in _NOT_OURS}
    new = {k: v for k, v in status.items() if v is not None and k not in _NOT_OURS}
    if new == old:
        return False
    patch = {**{k: None for k in old if k not in new}, **new}
    meta = body["metadata"]
    return kube.patch_status(naming.API_VERSION, KIND, meta["namespace"], meta["name"], patch)


def _marker(status: Mapping[str, Any]) -> tuple[Any, ...]:
    op = status.get("operation") or {}
    return status.get("term"), status.get("activeShardSet"), op.get("step"), len(op.get("tokens") or {}), \
        len(op.get("promotedAt") or {})


async def until_seen(body: kopf.Body, status: Mapping[str, Any], timeout: float = 5.0) -> None:
    """Wait until Kopf's live body shows the term and step just written: the next pass must not act on the
    status before it (a step repeated from a stale status could fence or promote twice at different terms)."""
    want = _marker(status)
    deadline = asyncio.get_running_loop().time() + timeout
    while _marker(body.get("status") or {}) != want:
        if asyncio.get_running_loop().time() > deadline:
            log.warning("MirrorSet status write not seen in the watch after %ss; continuing", timeout)
            return
        await asyncio.sleep(0.05)


@kopf.daemon(naming.GROUP, naming.VERSION, PLURAL, cancellation_timeout=10.0)
async def mirrorset_loop(name: str, namespace: str | None, body: kopf.Body, stopped: kopf.DaemonStopped,
                         **_: Any) -> None:
    """Monitor one MirrorSet and move its primary role; resumes from ``status.operation`` after a restart."""

    async def one_pass(snap: dict[str, Any]) -> tuple[str, float]:
        status, events, delay = await step(snap)
        if await asyncio.to_thread(write_status, snap, status):
            await until_seen(body, status)
        post_events(body, events)
        return ("degraded" if status.get("phase") != status_.REPLICATING else "success"), delay

    await run_object_loop(KIND, namespace_of(KIND, name, namespace), name, body, stopped, one_pass)


@kopf.on.event(naming.GROUP, naming.VERSION, PLURAL)
def mirrorset_changed(name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
    """Wake the loop on a spec change or a new switchover/failback request (annotations do not bump generation)."""
    status = body.get("status") or {}
    annotations = body["metadata"].get("annotations") or {}
    requested = (annotations.get(SWITCHOVER_ANNOTATION) not in (None, status.get("lastSwitchoverRequest"))
                 or annotations.get(FAILBACK_ANNOTATION) not in (None, status.get("lastFailbackRequest")))
    if requested or status.get("observedGeneration") != body["metadata"].get("generation"):
        TRIGGERS.fire(KIND, namespace_of(KIND, name, namespace), name)


@kopf.on.delete(naming.GROUP, naming.VERSION, PLURAL, optional=True)
def mirrorset_deleted(uid: str, **_: Any) -> None:
    """Forget the in-memory counters of a deleted MirrorSet."""
    for key in [k for k in _FAILURES if k[0] == uid]:
        _FAILURES.pop(key, None)
    for applied in [k for k in _APPLIED if k[0] == uid]:
        _APPLIED.pop(applied, None)
    _SOURCE_OK.pop(uid, None)
    _LAST_CHECK.pop(uid, None)
    _RISK_ABOVE.pop(uid, None)
