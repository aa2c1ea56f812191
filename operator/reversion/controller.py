"""The Reversion controller: one daemon per Reversion plans it on every shard's shadow, waits for its approval
(or the ShadowPolicy's ``reversion.mode: auto``), runs it and reports progress, following plan.py's phases.

Every fact a pass needs is in the Reversion's status (the per-shard plans and digests, the approved digest) or
on the shadows (the plans, each run's persisted cursor), and every call is idempotent against them: planning
again with the same body returns the stored plan, starting a run that already runs is not asked twice, so an
operator restarted in any phase carries on from the phase it recorded.

Deletion: Kopf's finalizer (every daemon has it) holds the object until the delete handler has asked each shard's
shadow to delete the plan, best-effort: a shadow that cannot be reached keeps its copy, which nothing runs (a run
needs the operator to send the digest) and which a later Reversion of the same name replaces if it never ran.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from .. import kube, naming
from ..conditions import now_rfc3339, set_condition
from ..loop import namespace_of, post_events, run_object_loop, until_seen
from ..reversionlookup import reversion_policy
from ..shardpods import shard_pods
from ..spec.common import SpecError
from ..spec.reversion import ReversionSpec, parse_reversion
from ..triggers import TRIGGERS
from . import plan, probe
from .plan import Event, Phase, Verdict

KIND = "Reversion"
PLURAL = "reversions"
POLL_SECONDS = 1.0  # planning or running
WAIT_SECONDS = 5.0  # a missing ShardSet, ShadowPolicy or unreachable shadow
IDLE_SECONDS = 30.0  # awaiting approval (a spec change wakes the loop at once) or finished
# Refusals that pass: the shadow's capture has not reached the point in time yet.
RETRIED_ERRORS = frozenset({"point_ahead"})

log = logging.getLogger(__name__)


class Step:
    """What one pass decided: the status to write, the events to post, how soon to look again."""

    def __init__(self, status: Mapping[str, Any], gen: int) -> None:
        self.status: dict[str, Any] = dict(status)
        self.status["observedGeneration"] = gen
        self.gen = gen
        self.events: list[tuple[str, str, str]] = []
        self.delay = POLL_SECONDS

    @property
    def phase(self) -> Phase:
        """The phase as this pass leaves it."""
        return plan.parse_phase(self.status.get("phase")) or Phase.FAILED

    def move(self, event: Event, message: str, warning: bool = False) -> None:
        """Take ``event`` (plan.transition) and post it."""
        self.status["phase"] = plan.transition(self.phase, event).value
        self.events.append(("Warning" if warning else "Normal", event.value, message))

    def condition(self, type_: str, ok: bool, reason: str, message: str) -> None:
        """Set a condition on the status being built."""
        self.status["conditions"] = set_condition(self.status.get("conditions"), type_, ok, reason, message, self.gen)

    def fail(self, reason: str, message: str) -> Step:
        """End in Failed (from any phase that can fail)."""
        self.condition("Completed", False, reason, message)
        self.status["completionTime"] = now_rfc3339()
        self.move(Event.FAILED, message, warning=True)
        self.delay = IDLE_SECONDS
        return self

    def wait(self, type_: str, reason: str, message: str, delay: float = WAIT_SECONDS) -> Step:
        """Stay in this phase, saying why in condition ``type_``."""
        self.condition(type_, False, reason, message)
        self.delay = delay
        return self


@dataclass
class Target:
    """What a pass read about the Reversion's ShardSet: its shard count and the pods of those shards."""

    namespace: str
    name: str
    spec: ReversionSpec
    shards: int
    pods: dict[int, dict[str, Any]]

    @property
    def plan_name(self) -> str:
        """The plan's name on every shadow."""
        return plan.shard_plan_name(self.namespace, self.name)


def _expected_shards(ns: str, shardset: str) -> int | None:
    ss = kube.get(naming.API_VERSION, "ShardSet", ns, shardset)
    if ss is None:
        return None
    desired = ((ss.get("status") or {}).get("shards") or {}).get("desired")
    return int(desired if desired is not None else ss["spec"]["shards"])


async def _target(ns: str, name: str, spec: ReversionSpec, st: Step) -> Target | None:
    """The ShardSet's shards and pods; None (a waiting Step) while the ShardSet or one of its pods is missing."""
    shards = await asyncio.to_thread(_expected_shards, ns, spec.shardset)
    if shards is None:
        st.wait("Planned", "ShardSetMissing", f"ShardSet {spec.shardset!r} does not exist")
        return None
    pods = {s: p for s, p in (await asyncio.to_thread(shard_pods, ns, spec.shardset)).items() if s < shards}
    missing = [s for s in range(shards) if s not in pods]
    if missing:
        st.wait("Planned" if st.phase is Phase.PLANNING else "Completed", "ShardPodsMissing",
                f"no pod for shard(s) {missing} of ShardSet {spec.shardset!r}")
        return None
    return Target(ns, name, spec, shards, pods)


async def step(body: Mapping[str, Any]) -> Step:
    """Advance one Reversion by at most one phase; every Kubernetes and HTTP call here is idempotent."""
    meta = body["metadata"]
    st = Step(body.get("status") or {}, int(meta.get("generation") or 1))
    phase = plan.parse_phase(st.status.get("phase"))
    if phase is None:
        st.status["phase"] = Phase.FAILED.value
        st.condition("Completed", False, "UnknownPhase", f"unknown phase {body['status'].get('phase')!r}")
        st.delay = IDLE_SECONDS
        return st
    st.status["phase"] = phase.value
    if phase in plan.TERMINAL:
        st.delay = IDLE_SECONDS
        return st
    try:
        spec = parse_reversion(body.get("spec"))
    except SpecError as exc:
        return st.fail("InvalidSpec", str(exc))
    problem = plan.selection_problem(spec)
    if problem:
        return st.fail("InvalidSpec", problem)
    target = await _target(meta["namespace"], meta["name"], spec, st)
    if target is None:
        return st
    return await _PHASES[phase](target, st)


async def _planning(t: Target, st: Step) -> Step:
    """Plan on every shard's shadow; once all have answered, record the plans and the overall digest."""
    policy = await asyncio.to_thread(reversion_policy, t.namespace, t.spec.shardset)
    if policy is None:
        return st.wait("Planned", "NoShadowPolicy", f"no ShadowPolicy shadows ShardSet {t.spec.shardset!r}: "
                                                    "nothing to take the past state from")
    if policy.mode == "off":
        return st.fail("ReversionsOff", f"ShadowPolicy {policy.policy!r} sets reversion.mode off")
    request = plan.plan_request(t.namespace, t.name, t.spec)
    answers = await probe.create_plans(t.pods, request)
    answers.update(await _replace_stale(t, request, answers))
    bad = [a for a in answers.values() if not a.ok]
    if bad:
        refused = [a for a in bad if a.status is not None and 400 <= a.status < 500 and a.status != 409
                   and a.body.get("error") not in RETRIED_ERRORS]
        if refused:  # the shadow refuses the request itself: it will not plan it on a second try
            return st.fail("PlanRefused", "; ".join(a.describe() for a in refused))
        behind = any(a.body.get("error") == "point_ahead" for a in bad)
        return st.wait("Planned", "ShadowBehind" if behind else "ShadowUnavailable",
                       "; ".join(a.describe() for a in bad))
    try:
        plans = [plan.shard_plan_from_json(s, a.body) for s, a in sorted(answers.items())]
        summary = plan.combine(plans, t.shards)
    except ValueError as exc:
        return st.wait("Planned", "BadPlanAnswer", str(exc))
    digest = plan.overall_digest(plans)
    st.status.update(plan=summary, digest=digest, shortDigest=digest[:plan.SHORT_DIGEST])
    base = summary.get("base")
    based = f"; base {base['kind']} (shard {base['shard']}, LSN {base['lsn']})" if base else ""
    st.condition("Planned", True, "Planned", f"{summary['keys']} key(s) on {t.shards} shard(s), digest "
                                             f"{digest[:plan.SHORT_DIGEST]}{based}")
    st.status["progress"] = {"summary": f"0/{summary['keys']}", "done": 0, "skipped": 0, "conflicts": 0,
                             "remaining": summary["keys"]}
    st.move(Event.PLANNED, f"Planned {summary['keys']} key(s) (restore {summary['restore']}, create "
                           f"{summary['create']}, delete {summary['delete']}, {summary['bytes']} bytes, "
                           f"{summary['conflicts']} conflict(s)); digest {digest}")
    st.delay = 0.0  # check approval at once (auto mode runs without waiting)
    return st


async def _replace_stale(t: Target, request: Mapping[str, Any], answers: Mapping[int, probe.Answer]
                         ) -> dict[int, probe.Answer]:
    """A 409 means the shadow holds another body under this name: a plan left by a deleted Reversion of the same
    name (our spec cannot change). One that never ran is deleted and planned again; one that ran is kept."""
    conflicted = {s: t.pods[s] for s, a in answers.items() if a.status == 409}
    if not conflicted:
        return {}
    current = await probe.get_plans(conflicted, t.plan_name)
    unused = {s: t.pods[s] for s, a in current.items() if a.ok and a.body.get("phase") == "planned"}
    await probe.delete_plans(unused, t.plan_name)
    again = await probe.create_plans(unused, request)
    # A plan that ran (or cannot be read) stays: report it as refused so the Reversion fails, naming it.
    kept = {s: probe.Answer(s, 400, {"error": "plan_name_taken",
                                     "message": f"plan {t.plan_name!r} already ran on this shard's shadow"})
            for s, a in current.items() if s not in unused and a.ok}
    return {**again, **kept}


async def _awaiting_approval(t: Target, st: Step) -> Step:
    """Run once spec.approve carries the digest, or at once under the ShadowPolicy's reversion.mode auto."""
    digest = str(st.status.get("digest") or "")
    keys = int((st.status.get("plan") or {}).get("keys") or 0)
    policy = None if t.spec.approve else await asyncio.to_thread(reversion_policy, t.namespace, t.spec.shardset)
    if policy is not None and policy.mode == "off":
        return st.fail("ReversionsOff", f"ShadowPolicy {policy.policy!r} sets reversion.mode off")
    verdict = plan.check_approval(t.spec.approve, digest, keys, policy.mode if policy else None,
                                  policy.max_blocks if policy else None, t.name)
    if verdict.verdict is Verdict.REFUSED:
        if st.status.get("refusedApproval") != t.spec.approve:  # one event per stale value, not one per pass
            st.events.append(("Warning", Verdict.REFUSED.value, verdict.message))
        st.status["refusedApproval"] = t.spec.approve
        return st.wait("Approved", "DigestMismatch", verdict.message, IDLE_SECONDS)
    if not verdict.runs:
        return st.wait("Approved", "AwaitingApproval", verdict.message, IDLE_SECONDS)
    st.status.pop("refusedApproval", None)
    st.status.update(approvedDigest=digest, autoApproved=verdict.verdict is Verdict.AUTO, startTime=now_rfc3339())
    st.condition("Approved", True, verdict.verdict.value, verdict.message)
    st.move(Event.APPROVED, verdict.message)
    st.delay = 0.0
    return st


async def _running(t: Target, st: Step) -> Step:
    """Start each shard's run that has not started, and sum up their progress."""
    plans = {p.shard: p for p in plan.plans_from_status(st.status.get("plan"))}
    if sorted(plans) != list(range(t.shards)) or st.status.get("approvedDigest") != plan.overall_digest(
            list(plans.values())):
        return st.fail("PlanChanged", "status.plan no longer matches the approved digest; nothing more runs")
    answers = await probe.get_plans(t.pods, t.plan_name)
    lost = [a.describe() for a in answers.values() if a.status == 404]
    if lost:
        return st.fail("PlanLost", "the shadow no longer has the plan: " + "; ".join(lost))
    to_start = {s: t.pods[s] for s, a in answers.items() if a.ok and a.body.get("phase") == "planned"}
    if to_start:
        started = await probe.run_plans(to_start, t.plan_name, {s: plans[s].digest for s in to_start})
        mismatch = [a.describe() for a in started.values() if a.status == 409]
        if mismatch:
            return st.fail("DigestMismatch", "a shadow refused the approved digest: " + "; ".join(mismatch))
        answers.update(await probe.get_plans(to_start, t.plan_name))
    rows = []
    for s, a in sorted(answers.items()):
        try:
            rows.append(plan.shard_progress_from_json(s, a.body) if a.ok else
                        plan.ShardProgress(s, None, message=a.describe()))
        except ValueError as exc:
            rows.append(plan.ShardProgress(s, None, message=f"shard {s}: {exc}"))
    progress = plan.combine_progress(rows, int((st.status.get("plan") or {}).get("keys") or 0))
    st.status["progress"] = progress.status
    if progress.event is Event.COMPLETED:
        st.condition("Completed", True, "Completed", progress.message)
        st.status["completionTime"] = now_rfc3339()
        st.move(Event.COMPLETED, progress.message)
        st.delay = IDLE_SECONDS
        return st
    if progress.event is Event.FAILED:
        return st.fail("RunFailed", progress.message)
    unreachable = [r.message for r in rows if r.phase is None and r.message]
    return st.wait("Completed", "ShadowUnavailable" if unreachable else "Running",
                   "; ".join(unreachable) if unreachable else progress.message, POLL_SECONDS)


_PHASES: dict[Phase, Callable[[Target, Step], Awaitable[Step]]] = {
    Phase.PLANNING: _planning,
    Phase.AWAITING_APPROVAL: _awaiting_approval,
    Phase.RUNNING: _running,
}


def write_status(body: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Replace the Reversion's status with ``status`` (fields left out are removed); True if written."""
    old = body.get("status") or {}
    patch = {**{k: None for k in old if k not in status}, **status}
    if patch == old:
        return False
    from kubernetes import client

    meta = body["metadata"]
    client.CustomObjectsApi(kube.api_client()).patch_namespaced_custom_object_status(
        naming.GROUP, naming.VERSION, meta["namespace"], PLURAL, meta["name"], {"status": patch})
    return True


def _seen_key(s: Mapping[str, Any]) -> tuple[Any, ...]:
    return s.get("phase"), s.get("digest"), s.get("approvedDigest")


@kopf.daemon(naming.GROUP, naming.VERSION, PLURAL, cancellation_timeout=10.0)
async def reversion_loop(name: str, namespace: str | None, body: kopf.Body, stopped: kopf.DaemonStopped,
                         **_: Any) -> None:
    """Drive one Reversion through its phases; resumes from ``status.phase`` after a restart."""

    async def one_pass(snap: dict[str, Any]) -> tuple[str, float]:
        result = await step(snap)
        if await asyncio.to_thread(write_status, snap, result.status):
            await until_seen(body, result.status, _seen_key)
        post_events(body, result.events)
        return "success", result.delay

    await run_object_loop(KIND, namespace_of(KIND, name, namespace), name, body, stopped, one_pass)


@kopf.on.event(naming.GROUP, naming.VERSION, PLURAL)
def reversion_changed(name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
    """Wake the loop when the spec changes (an approval runs at once)."""
    if (body.get("status") or {}).get("observedGeneration") != body["metadata"].get("generation"):
        TRIGGERS.fire(KIND, namespace_of(KIND, name, namespace), name)


@kopf.on.delete(naming.GROUP, naming.VERSION, PLURAL, optional=False)
async def reversion_deleted(name: str, namespace: str | None, spec: Mapping[str, Any], **_: Any) -> None:
    """Ask every shard's shadow to delete the plan; best-effort, never holds the deletion (module docstring)."""
    ns = namespace_of(KIND, name, namespace)
    shardset = ((spec or {}).get("shardSetRef") or {}).get("name")
    if not shardset:
        return
    try:
        pods = await asyncio.to_thread(shard_pods, ns, shardset)
        answers = await probe.delete_plans(pods, plan.shard_plan_name(ns, name))
    except Exception as exc:  # best-effort by design: an orphaned plan never runs on its own
        log.warning("Reversion %s/%s: could not delete its plans: %s", ns, name, type(exc).__name__)
        return
    left = [a.describe() for a in answers.values() if not a.ok and a.status != 404]
    if left:
        log.warning("Reversion %s/%s: plans left on the shadows: %s", ns, name, "; ".join(left))
