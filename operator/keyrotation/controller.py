"""The KeyRotation controller (Temporal Key Manager): one daemon per KeyRotation drives the phases of plan.py.

State lives in two places only — the KeyRotation's status (phase, versions, targets) and the keyring Secret
(the versions themselves) — and every step is idempotent against them, so a restarted operator resumes in the
phase it recorded. A ShardSet has at most one rotation in progress: the rotation takes a lock annotation on the
keyring Secret (written with a resourceVersion precondition) and releases it when it ends.

Threat rotations (``spec.threat``) start at once, mark the compromised version in the keyring so nodes stop
writing with it (writes wait until the new primary arrives), rewrap with the largest batches, skip the transition
period and retire the compromised version as soon as no block uses it.

Pods that run a ``shadow`` container (a ShadowPolicy) are rotated with it: the shadow is waited for like the node
and cache, its history is rewrapped with the same batches (threat rotations included), and no version is retired
while any shadow still reports history versions under it. Pods that run a ``weaver`` (a WeavePlan) likewise: the
weaver is waited for, its rewrap (``keep``: the new version) drops the woven rows of other versions, rebuilt from
the rewrapped history, and no version is retired while a weaver still reports woven rows under it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from .. import datalock, kube, naming
from ..conditions import set_condition
from ..keyring import (
    KeyringManifest,
    add_version,
    is_wrapped,
    parse_kek,
    parse_manifest,
    promote,
    retire,
    versions_not_unwrapping,
)
from ..loop import namespace_of, post_events, run_object_loop, until_seen
from ..metrics import observe_phase, record_error, record_rotation
from ..mirrorlookup import mirror_membership
from ..mirrorselect import MirrorMembership
from ..podcontract import NODE, SHADOW, WEAVER
from ..reshardlookup import reshard_moving
from ..shardpods import member_pods, shard_pods
from ..spec.common import SpecError
from ..spec.keyrotation import KeyRotationSpec, parse_keyrotation
from ..triggers import TRIGGERS
from . import plan, probe
from .plan import Phase

KIND = "KeyRotation"
PLURAL = "keyrotations"
LOCK_ANNOTATION = "chronoshard.io/rotation-lock"
POLL_SECONDS = 1.0  # while a rotation is in progress and the processes cannot be long-polled
MIN_PASS_SECONDS = 0.05  # between two passes of the same phase, whatever the long-poll did
IDLE_SECONDS = 30.0  # otherwise (a trigger wakes the loop earlier)
MIRROR_RECHECK_SECONDS = 10.0  # a refused rotation of a mirror looks again (a failover may make it active)
# A routine rotation rewraps in the background: the node paces it by its own client traffic (full speed when
# idle, bounded batches and pauses when busy: shardnode/node/pacing.py), so no pause is sent. A shadow's history
# rewrap keeps a fixed pause. A threat rotation rewraps in large batches with no pause.
BATCH_NORMAL = 256
PAUSE_NORMAL: float | None = None
PAUSE_NORMAL_SHADOW = 0.05
BATCH_URGENT = 2000
PAUSE_URGENT = 0.0
THREAT_REASONS = ("compromise", "suspected-compromise")

log = logging.getLogger(__name__)


CLOCK_OFFSET_ENV = "CHRONOSHARD_CLOCK_OFFSET_FILE"


def _utcnow() -> dt.datetime:
    """Wall-clock UTC, shifted by the seconds in $CHRONOSHARD_CLOCK_OFFSET_FILE when that is set.

    The offset file is a test seam: e2e tests move a real operator process's clock forward to fire a cron
    schedule or end a transition period without sleeping. Production deployments never set it.
    """
    now_ = dt.datetime.now(dt.UTC)
    path = os.environ.get(CLOCK_OFFSET_ENV)
    if path:
        try:
            now_ += dt.timedelta(seconds=float(Path(path).read_text().strip() or 0))
        except (OSError, ValueError):
            log.warning("ignoring unreadable clock offset file %s", path)
    return now_


def _idle_seconds() -> float:
    """How long an idle KeyRotation sleeps. Under the test clock seam a jump of the clock is no event that wakes
    the loop, so it looks again every 2 s and a test's jump is acted on at once, not up to 30 s later."""
    return 2.0 if os.environ.get(CLOCK_OFFSET_ENV) else IDLE_SECONDS


# In-process tests may also replace this callable directly.
CLOCK: Callable[[], dt.datetime] = _utcnow


def now() -> dt.datetime:
    """The controller's current time."""
    return CLOCK()


class Step:
    """What one pass of the loop decided: status fields to write, events to post, how soon to look again."""

    def __init__(self, status: Mapping[str, Any]) -> None:
        self.status: dict[str, Any] = dict(status)
        self.events: list[tuple[str, str, str]] = []
        self.delay = POLL_SECONDS

    def phase(self, phase: Phase, message: str) -> None:
        """Enter ``phase`` and say so in an event."""
        if self.status.get("phase") != phase:
            began = plan.parse_time(self.status.get("phaseTime"))
            if began is not None and self.status.get("phase"):
                observe_phase(str(self.status["phase"]), max(0.0, (now() - began).total_seconds()))
            self.status["phase"] = phase.value
            self.status["phaseTime"] = plan.format_time(now())
            self.events.append(("Normal", phase.value, message))

    def condition(self, type_: str, ok: bool, reason: str, message: str, gen: int) -> None:
        """Set a condition on the status being built."""
        self.status["conditions"] = set_condition(self.status.get("conditions"), type_, ok, reason, message, gen)


def _secret(ns: str, shardset: str) -> dict[str, Any] | None:
    return kube.get("v1", "Secret", ns, naming.keyring_secret_name(shardset))


def _read_kek(ns: str, shardset: str) -> bytes:
    """The ShardSet's KEK (its kekSecretRef, else ``<shardset>-kek``); ValueError without key bytes if unusable."""
    ss = kube.get(naming.API_VERSION, "ShardSet", ns, shardset) or {}
    ref = (((ss.get("spec") or {}).get("keyEncryption") or {}).get("kekSecretRef") or {}).get("name")
    name = ref if isinstance(ref, str) and ref else naming.kek_secret_name(shardset)
    secret = kube.get("v1", "Secret", ns, name)
    if secret is None:
        raise ValueError(f"the key-encryption key Secret {name} does not exist")
    return parse_kek(secret.get("data"), name)


def _write_secret(ns: str, secret: Mapping[str, Any], data: Mapping[str, str] | None = None,
                  annotations: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """Patch the keyring Secret only if nobody changed it since we read it (resourceVersion precondition)."""
    patch: dict[str, Any] = {"metadata": {"resourceVersion": secret["metadata"]["resourceVersion"]}}
    if annotations:
        patch["metadata"]["annotations"] = dict(annotations)
    if data is not None:
        patch["data"] = {**{k: None for k in secret.get("data") or {} if k not in data}, **data}
    return kube.merge_patch("v1", "Secret", ns, secret["metadata"]["name"], patch)


def _lock_value(body: Mapping[str, Any]) -> str:
    return f"{body['metadata']['name']}/{body['metadata']['uid']}"


def _expected_shards(ns: str, shardset: str) -> int | None:
    ss = kube.get(naming.API_VERSION, "ShardSet", ns, shardset)
    if ss is None:
        return None
    desired = ((ss.get("status") or {}).get("shards") or {}).get("desired")
    return int(desired if desired is not None else ss["spec"]["shards"])


async def step(body: Mapping[str, Any]) -> Step:
    """Advance one KeyRotation by at most one phase; every Kubernetes/HTTP call here is idempotent."""
    meta, status = body["metadata"], body.get("status") or {}
    gen = int(meta.get("generation") or 1)
    st = Step(status)
    st.status["observedGeneration"] = gen
    try:
        spec = parse_keyrotation(body.get("spec") or {})
    except SpecError as exc:
        st.condition("Ready", False, "InvalidSpec", str(exc), gen)
        st.delay = IDLE_SECONDS
        return st
    phase = plan.parse_phase(status.get("phase"))
    if phase in plan.IDLE_PHASES:
        created = plan.parse_time(meta.get("creationTimestamp")) or now()
        return await _idle(body, spec, st, created, gen)
    rotation = await _read_rotation(body, spec, st, gen)
    if rotation is None:
        return st
    if phase is Phase.DISTRIBUTING:
        return _hand_off(await _distributing(rotation), phase, 0.0)
    handler = _PROBED_PHASES.get(phase) if phase is not None else None
    if handler is None or phase is None:
        st.condition("Ready", False, "UnknownPhase", f"unknown phase {status.get('phase')!r}", gen)
        return st
    started = asyncio.get_running_loop().time()
    await _probe(rotation, _report_wait(phase, rotation))
    probed = asyncio.get_running_loop().time() - started
    return _hand_off(await _run_phases(rotation, phase, handler), phase, probed)


# Phases that may follow the previous one within the same pass: what they decide on (the keyring just read, the
# reports just probed, the clock) is as fresh as a new pass would make it. Not AwaitingPromotion (processes must
# first load the promoted keyring) nor Retiring (it removes key material only after a fresh probe of its own).
_SAME_PASS = frozenset({Phase.PROMOTING, Phase.REWRAPPING, Phase.TRANSITION, Phase.VERIFYING})


async def _run_phases(r: Rotation, phase: Phase, handler: Callable[[Rotation], Awaitable[Step]]) -> Step:
    """Run ``phase``, then each phase it leads to that may run on the same reports (a hand-off without a pass)."""
    st = await handler(r)
    for _ in range(len(_SAME_PASS)):
        nxt = plan.parse_phase(st.status.get("phase"))
        if nxt is None or nxt is phase or nxt not in _SAME_PASS:
            break
        phase = nxt
        st = await _PROBED_PHASES[nxt](r)
    return st


def _report_wait(phase: Phase, r: Rotation) -> probe.ReportWait | None:
    """What the probe of ``phase`` waits for: the phase's hand-off happens when a report shows it, not a poll later.
    The keyring generation the phase waits for, or (Rewrapping) the end of the runs it started."""
    if phase in (Phase.AWAITING_LOAD, Phase.AWAITING_PROMOTION, Phase.RETIRING):
        target = int(r.st.status.get("targetGeneration") or 0)
        return probe.ReportWait(generation=target) if target else None
    if phase is Phase.REWRAPPING:
        return probe.ReportWait(rewrap=True)
    return None


def _hand_off(st: Step, phase: Phase, probed: float) -> Step:
    """How soon to look again: at once after a phase change; after a long-poll that waited, at once too (it was
    the wait); otherwise (a process answered without waiting: an older one, or unreachable) the poll interval."""
    if st.status.get("phase") != phase.value:
        st.delay = 0.0
    elif st.delay == POLL_SECONDS:
        st.delay = max(MIN_PASS_SECONDS, POLL_SECONDS - probed)
    return st


@dataclass
class Rotation:
    """A rotation in progress, as one pass read it: the KeyRotation, its keyring and (once probed) its shards."""

    body: Mapping[str, Any]
    spec: KeyRotationSpec
    st: Step
    gen: int
    secret: dict[str, Any]
    manifest: KeyringManifest
    expected: int
    to_v: int
    from_v: int
    pods: dict[int, dict[str, Any]] = field(default_factory=dict)
    reports: list[plan.ProcessReport] = field(default_factory=list)
    target: int = 0
    # The mirror members' node reports ("namespace/name" -> reports) when the ShardSet is a MirrorSet's active
    # member: their keyrings are copies of this one, so their nodes must keep up before a promote or a retire.
    members: dict[str, list[plan.ProcessReport]] = field(default_factory=dict)

    def members_ready(self, own: plan.Readiness,
                      check: Callable[[list[plan.ProcessReport]], plan.Readiness]) -> plan.Readiness:
        """``own`` combined with ``check`` applied to each mirror member's node reports."""
        return plan.with_members(own, {key: check(reports) for key, reports in self.members.items()})

    @property
    def ns(self) -> str:
        """The namespace of the KeyRotation and its ShardSet."""
        return str(self.body["metadata"]["namespace"])

    @property
    def shardset(self) -> str:
        """The ShardSet being rotated."""
        return self.spec.shardset

    @property
    def urgent(self) -> bool:
        """A threat rotation: largest rewrap batches, no transition period."""
        return self.st.status.get("reason") in THREAT_REASONS

    def waiting(self, reason: str, message: str) -> Step:
        """Stay in this phase, saying in the Ready condition what it waits for."""
        self.st.condition("Ready", False, reason, message, self.gen)
        return self.st

    async def write_keyring(self, data: Mapping[str, str]) -> None:
        """Write new keyring data (resourceVersion precondition) and keep the Secret as written."""
        self.secret = await asyncio.to_thread(_write_secret, self.ns, self.secret, data)


async def _read_rotation(body: Mapping[str, Any], spec: KeyRotationSpec, st: Step, gen: int) -> Rotation | None:
    """The keyring and the shard count of a rotation in progress; None (and a paused Step) if either is missing."""
    ns, shardset = body["metadata"]["namespace"], spec.shardset
    secret = await asyncio.to_thread(_secret, ns, shardset)
    expected = await asyncio.to_thread(_expected_shards, ns, shardset)
    if secret is None or expected is None:
        what = "ShardSet" if expected is None else "keyring Secret"
        st.condition("Ready", False, "TargetMissing", f"{what} of {shardset!r} not found; rotation paused", gen)
        st.delay = 5.0
        return None
    manifest = parse_manifest(secret.get("data"))
    to_v, from_v = int(st.status["toVersion"]), int(st.status["fromVersion"])
    return Rotation(body, spec, st, gen, secret, manifest, expected, to_v, from_v)


async def _probe(r: Rotation, wait: probe.ReportWait | None = None) -> None:
    """Ask every expected shard's node and cache what they have loaded, and record it per shard."""
    pods = await asyncio.to_thread(shard_pods, r.ns, r.shardset)
    r.pods = {s: p for s, p in pods.items() if s < r.expected}
    r.reports = await probe.collect_reports(r.pods, wait)
    r.target = int(r.st.status.get("targetGeneration") or 0)
    membership = await asyncio.to_thread(mirror_membership, r.ns, r.shardset)
    peers = [(p.namespace, p.name) for p in membership.peers(r.ns, r.shardset)]
    if peers:
        members = await asyncio.to_thread(member_pods, peers)
        keys = sorted(members)
        reports = await asyncio.gather(*(
            probe.collect_reports({s: p for s, p in members[key].items() if s < r.expected}, wait,
                                  only=plan.MEMBER_ROLES)
            for key in keys))
        r.members = dict(zip(keys, reports, strict=True))
    _record_shards(r.st, r.reports, r.expected, r.to_v)


async def _distributing(r: Rotation) -> Step:
    """Add the new version to the keyring as decrypt-only."""
    st = r.st
    compromised = (int(st.status["compromisedVersion"]),) if st.status.get("compromisedVersion") else ()
    kek: bytes | None = None
    if _new_version_is_wrapped(r):
        # The new version takes the primary's (wrapped) form, under the same KEK the primary unwraps with.
        try:
            kek = await asyncio.to_thread(_matching_kek, r.ns, r.shardset, r.secret["data"])
        except ValueError as exc:
            st.delay = 5.0
            return r.waiting("KEKUnavailable", f"{exc}; key version {r.to_v} is added once the KEK can be read")
    data = add_version(r.secret["data"], r.to_v, plan.format_time(now()), compromised, kek=kek)
    if data != r.secret["data"]:
        await r.write_keyring(data)
    target = parse_manifest(r.secret["data"]).generation
    st.status["targetGeneration"] = target
    st.phase(Phase.AWAITING_LOAD, f"Key version {r.to_v} added to the keyring as decrypt-only (generation "
                                  f"{target}); waiting for every node and cache to load it")
    return st


def _new_version_is_wrapped(r: Rotation) -> bool:
    primary = r.manifest.primary
    return (primary is not None and is_wrapped(r.secret["data"], primary)
            and not any(v.id == r.to_v for v in r.manifest.versions))


def _matching_kek(ns: str, shardset: str, keyring_data: Mapping[str, str]) -> bytes:
    """The ShardSet's KEK, checked to unwrap every wrapped version of the keyring (ValueError otherwise)."""
    kek = _read_kek(ns, shardset)
    bad = versions_not_unwrapping(keyring_data, kek)
    if bad:
        raise ValueError(f"key version(s) {bad} do not unwrap under the ShardSet's key-encryption key")
    return kek


async def _awaiting_load(r: Rotation) -> Step:
    """Wait until every node and cache holds the new version."""
    ready = r.members_ready(plan.loaded(r.reports, r.expected, r.to_v, r.target),
                            lambda reports: plan.loaded(reports, r.expected, r.to_v, r.target, plan.MEMBER_ROLES))
    if not ready.ready:
        return r.waiting("WaitingForLoad", ready.message)
    r.st.phase(Phase.PROMOTING, f"Every process holds key version {r.to_v}; promoting it to primary")
    return r.st


async def _promoting(r: Rotation) -> Step:
    """Make the new version primary in the keyring (the old one stays, decrypt-only)."""
    data = promote(r.secret["data"], r.to_v)
    if data != r.secret["data"]:
        await r.write_keyring(data)
    r.st.status["targetGeneration"] = parse_manifest(r.secret["data"]).generation
    r.st.phase(Phase.AWAITING_PROMOTION, f"Key version {r.to_v} is primary in the keyring, version {r.from_v} "
                                         "decrypt-only; waiting for every process to switch")
    return r.st


async def _awaiting_promotion(r: Rotation) -> Step:
    """Wait until every node and cache writes with the new version."""
    ready = plan.promoted(r.reports, r.expected, r.to_v, r.target)
    if not ready.ready:
        return r.waiting("WaitingForPromotion", ready.message)
    r.st.status["promotionTime"] = plan.format_time(now())
    r.st.phase(Phase.REWRAPPING, f"Every process writes with key version {r.to_v}; re-encrypting old blocks")
    return r.st


def _name(r: Rotation) -> str:
    return str((r.body.get("metadata") or {}).get("name") or "")


async def _rewrapping(r: Rotation) -> Step:
    """Re-encrypt old blocks on every shard that still has some; then start the transition period."""
    st = r.st
    done, counts = plan.old_blocks(r.reports, r.expected, r.to_v)
    # A mirror's blocks are the primary's as streamed: they move to the new version with its rewrap's changes.
    done = r.members_ready(done, lambda reports: plan.old_blocks(reports, r.expected, r.to_v)[0])
    initial = dict(st.status.get("initialOldBlocks") or {})
    for shard, n in counts.items():
        initial[str(shard)] = max(int(initial.get(str(shard), 0)), n)
    st.status["initialOldBlocks"] = initial
    _record_shards(st, r.reports, r.expected, r.to_v)
    if done.ready:
        if st.status.get("dataLock"):  # rewrapped: a move may go now
            await asyncio.to_thread(datalock.give_back, r.ns, r.shardset, KIND, _name(r))
            st.status.pop("dataLock")
        period = dt.timedelta(0) if r.urgent else r.spec.transition_period
        promoted_at = plan.parse_time(st.status.get("promotionTime")) or now()
        st.status["transitionEndTime"] = plan.format_time(promoted_at + period)
        st.phase(Phase.TRANSITION, f"Every block is on key version {r.to_v}; transition period ends "
                                   f"{st.status['transitionEndTime']}")
        return st
    # A move copies frames as stored: a rewrap must not race it (docs/resharding.md); it starts once the move ends.
    mover = await asyncio.to_thread(reshard_moving, r.ns, r.shardset)
    if mover is not None:
        return r.waiting("WaitingForReshard", f"Reshard {mover!r} is moving a partition of ShardSet {r.shardset!r}; "
                                              "the rewrap starts when the move is done")
    holder = await asyncio.to_thread(datalock.take, r.ns, r.shardset, KIND, _name(r))
    if holder is not None:  # a move that started between the check above and now: the lock decides
        return r.waiting("WaitingForReshard", f"{holder} holds ShardSet {r.shardset!r}'s data-operation lock; "
                                              "the rewrap starts when it gives it back")
    st.status["dataLock"] = datalock.lease_name(r.shardset)
    # Only processes that still hold old data: asking a finished node again would start a fresh (empty)
    # run and overwrite the record of the one that did the work. Shadows rewrap their history the same way.
    batch, pause = (BATCH_URGENT, PAUSE_URGENT) if r.urgent else (BATCH_NORMAL, PAUSE_NORMAL)
    history = plan.old_data(r.reports, r.to_v, SHADOW)
    errors = await probe.start_rewrap({s: p for s, p in r.pods.items() if counts.get(s, 1) > 0}, batch, pause)
    shadow_errors = await probe.start_rewrap({s: p for s, p in r.pods.items() if history.get(s, 0) > 0},
                                             batch, PAUSE_URGENT if r.urgent else PAUSE_NORMAL_SHADOW, role=SHADOW)
    # Weavers drop their woven rows of other versions and rebuild them from the rewrapped history.
    woven = plan.old_data(r.reports, r.to_v, WEAVER)
    weaver_errors = await probe.start_rewrap({s: p for s, p in r.pods.items() if woven.get(s, 0) > 0},
                                             batch, None, role=WEAVER, keep=r.to_v)
    failed = [f"shard {s}: {e}" for s, e in errors.items() if e]
    failed += [f"shard {s} shadow: {e}" for s, e in shadow_errors.items() if e]
    failed += [f"shard {s} weaver: {e}" for s, e in weaver_errors.items() if e]
    return r.waiting("Rewrapping", done.message + (f"; cannot start rewrap on {', '.join(failed)}" if failed else ""))


async def _transition(r: Rotation) -> Step:
    """Keep the old versions until the transition period ends."""
    end = plan.parse_time(r.st.status.get("transitionEndTime")) or now()
    if now() < end:
        r.st.delay = min(_idle_seconds(), max(POLL_SECONDS, (end - now()).total_seconds()))
        return r.waiting("TransitionPeriod", f"old key versions stay until {plan.format_time(end)}")
    r.st.phase(Phase.VERIFYING, "Transition period over; verifying that no block uses an old key version")
    return r.st


async def _verifying(r: Rotation) -> Step:
    """Check that no block uses an old version (back to Rewrapping if some do)."""
    done = r.members_ready(plan.old_blocks(r.reports, r.expected, r.to_v)[0],
                           lambda reports: plan.old_blocks(reports, r.expected, r.to_v)[0])
    if not done.ready:
        # New blocks cannot appear on old versions, but a shard that was down may still hold some.
        r.waiting("OldBlocksRemain", done.message)
        r.st.phase(Phase.REWRAPPING, f"Blocks on old key versions found ({done.message}); rewrapping again")
        return r.st
    r.st.phase(Phase.RETIRING, f"No block on any shard uses a version other than {r.to_v}; retiring old versions")
    return r.st


async def _retiring(r: Rotation) -> Step:
    """Remove the old versions from the keyring; once no process holds them, the rotation is complete."""
    old = [v.id for v in r.manifest.versions if v.id != r.to_v]
    if old:
        return await _retire(r, old)
    st = r.st
    retired = st.status.get("retiredVersions") or [r.from_v]
    generation = int(st.status.get("targetGeneration") or 0)
    ready = r.members_ready(plan.dropped(r.reports, r.expected, retired, generation),
                            lambda reports: plan.dropped(reports, r.expected, retired, generation,
                                                         plan.MEMBER_ROLES))
    if not ready.ready:
        return r.waiting("WaitingForDrop", ready.message)
    await asyncio.to_thread(_release_lock, r.ns, r.shardset, r.body)
    done_st = _finish(st, r.spec.history_limit, Phase.COMPLETED, r.gen)
    record_rotation(str(st.status.get("reason")), Phase.COMPLETED.value, r.ns, r.shardset,
                    int(done_st.status["history"][-1]["blocksRewrapped"]))
    return done_st


async def _retire(r: Rotation, old: list[int]) -> Step:
    st = r.st
    # Re-check right before removing key material: never drop a key a block still needs, here or on a mirror.
    done = r.members_ready(plan.old_blocks(r.reports, r.expected, r.to_v)[0],
                           lambda reports: plan.old_blocks(reports, r.expected, r.to_v)[0])
    if not done.ready:
        r.waiting("OldBlocksRemain", done.message)
        st.phase(Phase.REWRAPPING, "Blocks on old key versions reappeared; rewrapping again")
        return st
    data = dict(r.secret["data"])
    for v in old:
        data = retire(data, v)
    await r.write_keyring(data)
    st.status["targetGeneration"] = parse_manifest(r.secret["data"]).generation
    st.status["retiredVersions"] = sorted(set(st.status.get("retiredVersions") or []) | set(old))
    st.events.append(("Normal", "KeyRetired", f"Removed key version(s) {old} from the keyring"))
    return st


# The phase functions that need the shards' reports (Distributing runs before any shard is asked).
_PROBED_PHASES: dict[Phase, Callable[[Rotation], Awaitable[Step]]] = {
    Phase.AWAITING_LOAD: _awaiting_load,
    Phase.PROMOTING: _promoting,
    Phase.AWAITING_PROMOTION: _awaiting_promotion,
    Phase.REWRAPPING: _rewrapping,
    Phase.TRANSITION: _transition,
    Phase.VERIFYING: _verifying,
    Phase.RETIRING: _retiring,
}


def _record_shards(st: Step, reports: list[plan.ProcessReport], expected: int, to_v: int) -> None:
    initial = st.status.get("initialOldBlocks") or {}
    rows: dict[int, dict[str, Any]] = {s: {"shard": s} for s in range(expected)}
    for r in reports:
        row = rows.setdefault(r.shard, {"shard": r.shard})
        if not r.reachable:
            row["message"] = f"{r.role} unreachable: {r.error}"
            continue
        if r.role == NODE:
            old = sum(n for v, n in r.blocks.items() if v != to_v)
            row["oldVersionBlocks"] = old
            row["remaining"] = old
            row["rewrapped"] = max(0, int(initial.get(str(r.shard), old)) - old)
            row["loadedGeneration"] = r.generation or 0
        elif r.role == SHADOW:
            row["oldHistoryVersions"] = sum(n for v, n in r.blocks.items() if v != to_v)
    st.status["shards"] = [rows[s] for s in sorted(rows)]


def _finish(st: Step, limit: int, outcome: Phase, gen: int) -> Step:
    blocks = sum(int(n) for n in (st.status.get("initialOldBlocks") or {}).values())
    entry = plan.history_entry(st.status, outcome.value, now(), blocks)
    st.status["history"] = plan.append_history(st.status.get("history"), entry, limit)
    st.phase(outcome, f"Rotation from key version {st.status.get('fromVersion')} to {st.status.get('toVersion')} "
                      f"{outcome.lower()}: {blocks} block(s) rewrapped in {entry['durationSeconds']}s")
    st.condition("Ready", True, outcome.value, f"last rotation {outcome.lower()}", gen)
    for k in ("initialOldBlocks", "targetGeneration", "retiredVersions", "promotionTime", "transitionEndTime"):
        st.status.pop(k, None)
    st.delay = POLL_SECONDS
    return st


def _acquire_lock(ns: str, shardset: str, body: Mapping[str, Any]) -> str | None:
    """Take the ShardSet's rotation lock; returns the current holder if another rotation has it."""
    secret = _secret(ns, shardset)
    if secret is None:
        return "no keyring Secret yet"
    holder = (secret["metadata"].get("annotations") or {}).get(LOCK_ANNOTATION)
    mine = _lock_value(body)
    if holder and holder != mine:
        return holder.split("/", 1)[0]
    if holder != mine:
        _write_secret(ns, secret, annotations={LOCK_ANNOTATION: mine})
    return None


def _release_lock(ns: str, shardset: str, body: Mapping[str, Any]) -> None:
    secret = _secret(ns, shardset)
    if secret and (secret["metadata"].get("annotations") or {}).get(LOCK_ANNOTATION) == _lock_value(body):
        _write_secret(ns, secret, annotations={LOCK_ANNOTATION: None})


async def _idle(body: Mapping[str, Any], spec: KeyRotationSpec, st: Step, created: dt.datetime, gen: int) -> Step:
    """No rotation in progress: start one if a trigger is due, else say when to look again."""
    raw_spec = body.get("spec") or {}
    st.status["nextScheduleTime"] = plan.upcoming_schedule(raw_spec, st.status, created)
    due = plan.due_rotation(raw_spec, st.status, created, now())
    if due is None:
        return _rest(st, gen)
    ns, shardset = body["metadata"]["namespace"], spec.shardset
    membership = await asyncio.to_thread(mirror_membership, ns, shardset)
    if membership.follows(ns, shardset):
        return _follows_source(st, membership, shardset, gen)
    ss_secret = await asyncio.to_thread(_secret, ns, shardset)
    if ss_secret is None:
        st.status["phase"] = Phase.WAITING.value
        st.condition("Ready", False, "TargetMissing",
                     f"ShardSet {shardset!r} or its keyring Secret does not exist; the rotation waits", gen)
        st.delay = 5.0
        return st
    try:
        holder = await asyncio.to_thread(_acquire_lock, ns, shardset, body)
    except ApiException as exc:
        if exc.status == 409:  # someone else changed the Secret: look again soon
            st.delay = 0.5
            return st
        raise
    if holder:
        st.status["phase"] = Phase.WAITING.value
        st.condition("Ready", False, "AnotherRotationInProgress",
                     f"KeyRotation {holder!r} is rotating ShardSet {shardset!r}; this one starts after it", gen)
        st.delay = 2.0
        return st
    return _start(st, parse_manifest(ss_secret.get("data")), due, raw_spec, created, shardset, gen)


def _follows_source(st: Step, membership: MirrorMembership, shardset: str, gen: int) -> Step:
    """Refuse a rotation of a MirrorSet's mirror: its keyring is a copy of the active member's (it waits)."""
    active = membership.active.key if membership.active is not None else "?"
    st.status["phase"] = Phase.WAITING.value
    st.condition("Ready", False, "MirrorFollowsSource",
                 f"ShardSet {shardset!r} is a mirror in MirrorSet {membership.namespace}/{membership.name}: its keys "
                 f"are copies of the active member {active}'s; rotate that ShardSet's keys instead", gen)
    st.delay = MIRROR_RECHECK_SECONDS
    return st


def _rest(st: Step, gen: int) -> Step:
    """Nothing due: Pending, Ready, and a wake-up at the next schedule time (or IDLE_SECONDS)."""
    if st.status.get("phase") in ("", None, Phase.WAITING):
        st.status["phase"] = Phase.PENDING.value
    if not any(c.get("type") == "Ready" for c in st.status.get("conditions") or []):
        st.condition("Ready", True, "Idle", "no rotation due", gen)
    nxt = plan.parse_time(st.status.get("nextScheduleTime"))
    idle = _idle_seconds()
    st.delay = idle if nxt is None else min(idle, max(0.5, (nxt - now()).total_seconds()))
    return st


def _start(st: Step, manifest: KeyringManifest, due: plan.Due, raw_spec: Mapping[str, Any], created: dt.datetime,
           shardset: str, gen: int) -> Step:
    """Begin a rotation (the lock is held): from the primary version to one past the newest."""
    from_v = manifest.primary
    if from_v is None:  # parse_manifest refuses a keyring without exactly one primary
        raise ValueError("keyring manifest has no primary version")
    to_v = max(v.id for v in manifest.versions) + 1
    st.status.update(
        fromVersion=from_v, toVersion=to_v, reason=due.reason, startTime=plan.format_time(now()),
        shards=[], initialOldBlocks={},
    )
    for k in ("transitionEndTime", "promotionTime", "targetGeneration", "retiredVersions", "compromisedVersion"):
        st.status.pop(k, None)
    if due.reason in THREAT_REASONS:
        st.status["lastThreat"] = due.marker
        threat = raw_spec.get("threat") or {}
        st.status["compromisedVersion"] = int(threat.get("compromisedVersion") or from_v)
    elif due.reason == "manual":
        st.status["lastTrigger"] = due.marker
    else:
        st.status["lastScheduleTime"] = due.marker
        st.status["nextScheduleTime"] = plan.upcoming_schedule(raw_spec, st.status, created)
    st.phase(Phase.DISTRIBUTING, f"Rotation ({due.reason}) of ShardSet {shardset!r} started: key version {from_v} "
                                 f"→ {to_v}")
    st.condition("Ready", False, "Rotating", f"rotating from key version {from_v} to {to_v}", gen)
    st.delay = 0.0
    return st


def write_status(body: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Replace the KeyRotation's status with ``status`` (fields set to None are removed); True if written."""
    old = body.get("status") or {}
    patch = {**{k: None for k in old if k not in status}, **status}
    if patch == old:
        return False
    meta = body["metadata"]
    kube.merge_patch(naming.API_VERSION, KIND, meta["namespace"], meta["name"], {"status": patch},
                     subresource="status")
    return True


def _seen_key(s: Mapping[str, Any]) -> tuple[Any, ...]:
    return s.get("phase"), s.get("phaseTime"), s.get("toVersion")


@kopf.daemon(naming.GROUP, naming.VERSION, PLURAL, cancellation_timeout=10.0)
async def keyrotation_loop(name: str, namespace: str | None, body: kopf.Body, stopped: kopf.DaemonStopped,
                           **_: Any) -> None:
    """Drive one KeyRotation through its phases; resumes from ``status.phase`` after a restart."""

    async def one_pass(snap: dict[str, Any]) -> tuple[str, float]:
        try:
            result = await step(snap)
        except ValueError as exc:  # a malformed keyring: say so, touch nothing
            record_error(KIND, "keyring")
            kopf.warn(body, reason="KeyringInvalid", message=str(exc))
            return "invalid", 10.0
        if await asyncio.to_thread(write_status, snap, result.status):
            await until_seen(body, result.status, _seen_key)
        post_events(body, result.events)
        return "success", result.delay

    await run_object_loop(KIND, namespace_of(KIND, name, namespace), name, body, stopped, one_pass)


@kopf.on.event(naming.GROUP, naming.VERSION, PLURAL)
def keyrotation_changed(name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
    """Wake the loop when the spec changes (a new trigger value or threat rotates at once)."""
    if (body.get("status") or {}).get("observedGeneration") != body["metadata"].get("generation"):
        TRIGGERS.fire(KIND, namespace_of(KIND, name, namespace), name)
