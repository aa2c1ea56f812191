"""The Reshard controller: one daemon per Reshard runs its steps in order, one at a time (docs/resharding.md).

A split or a merge is a map change: the new map (epoch + 1) is recorded in the step's status first (its epoch, the
split point), then pushed to every node and cache and written to the ``<shardset>-partitions`` ConfigMap, so a
restarted operator recomputes the same map from the one in force. A move is driven on the nodes: the target pulls
(``PUT /v1/moves/{name}``), the operator watches its progress, compares the range digests at one source LSN, and
cuts over (fence on the source, wait for the target to apply through the fence LSN within ``cutoverTimeout``, new
map to the source first, then the target, then the others, fence lifted); the source purges the range after
``gracePeriod``. Every phase is resumable from the status and from what the nodes report: in particular whether
the source already has the new map decides, after a crash mid-cutover, that the move happened.

Rollback (a failure before the source has the new map, or the Reshard deleted while running): the target's move
is deleted with ``discard=true`` and the fence lifted; the source still owns all it owned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf
from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap, format_id
from kubernetes.client.exceptions import ApiException

from .. import datalock, kube, metrics, naming, reshardplan
from ..conditions import now_rfc3339, set_condition
from ..loop import namespace_of, post_events, run_object_loop, until_seen
from ..mirrorlookup import list_mirrorsets
from ..podcontract import PARTITION_MAP_FILE
from ..shardpods import shard_pods
from ..spec.common import SpecError
from ..spec.mirrorset import parse_mirrorset
from ..spec.reshard import MergeStep, MoveStep, ReshardSpec, ReshardStep, SplitStep, parse_reshard
from ..triggers import TRIGGERS
from . import plan, probe
from .plan import Phase, StepPhase

KIND = "Reshard"
PLURAL = "reshards"
POLL_SECONDS = 1.0  # a move copying or catching up
WAIT_SECONDS = 5.0  # a missing ShardSet or pod, an unreachable node, another Reshard or a KeyRotation
IDLE_SECONDS = 30.0
CUTOVER_POLL_SECONDS = 0.01  # the target's apply is polled this often while writes to the range are held

log = logging.getLogger(__name__)


class Step:
    """What one pass decided: the status to write, the events to post, how soon to look again."""

    def __init__(self, status: Mapping[str, Any], gen: int) -> None:
        self.status: dict[str, Any] = dict(status)
        self.status["observedGeneration"] = gen
        self.gen = gen
        self.events: list[tuple[str, str, str]] = []
        self.delay = POLL_SECONDS

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        """Post an event with the pass."""
        self.events.append(("Warning" if warning else "Normal", reason, message))

    def condition(self, type_: str, ok: bool, reason: str, message: str) -> None:
        """Set a condition on the status being built."""
        self.status["conditions"] = set_condition(self.status.get("conditions"), type_, ok, reason, message, self.gen)

    def row(self, row: Mapping[str, Any]) -> None:
        """Put step ``row`` into ``status.steps``."""
        self.status["steps"] = plan.with_step_row(self.status, row)

    def wait(self, reason: str, message: str, delay: float = WAIT_SECONDS) -> Step:
        """Stay where we are, saying why (Progressing False with the reason)."""
        self.condition("Progressing", False, reason, message)
        self.delay = delay
        return self

    def finish(self, phase: Phase, reason: str, message: str) -> Step:
        """End the Reshard in ``phase`` (Completed, Failed or RolledBack)."""
        self.status["phase"] = phase.value
        self.status["completionTime"] = now_rfc3339()
        ok = phase is Phase.COMPLETED
        self.condition("Ready", ok, reason, message)
        self.condition("Progressing", False, reason, message)
        self.condition("Degraded", not ok, reason, message if not ok else "")
        self.event(reason, message, warning=not ok)
        self.delay = IDLE_SECONDS
        return self


@dataclass
class Target:
    """What a pass read: the Reshard, its parsed spec, the ShardSet's map in force and its pods."""

    namespace: str
    name: str
    uid: str
    spec: ReshardSpec
    pmap: PartitionMap
    map_version: str  # the ConfigMap's resourceVersion the map was read at (writes are conditional on it)
    pods: dict[int, dict[str, Any]]


def _read_map(ns: str, shardset: str) -> tuple[PartitionMap, str] | None:
    cm = kube.get("v1", "ConfigMap", ns, naming.partitions_config_map_name(shardset))
    text = ((cm or {}).get("data") or {}).get(PARTITION_MAP_FILE)
    if cm is None or not text:
        return None
    return PartitionMap.from_json(text), str(cm["metadata"].get("resourceVersion") or "")


async def _target(body: Mapping[str, Any], spec: ReshardSpec, st: Step) -> Target | None:
    meta = body["metadata"]
    ns = meta["namespace"]
    if await asyncio.to_thread(kube.get, naming.API_VERSION, "ShardSet", ns, spec.shardset) is None:
        st.wait("ShardSetMissing", f"ShardSet {spec.shardset!r} does not exist")
        return None
    try:
        read = await asyncio.to_thread(_read_map, ns, spec.shardset)
    except ValueError as exc:
        st.wait("PartitionMapInvalid", f"the partition map of ShardSet {spec.shardset!r} is invalid: {exc}")
        return None
    if read is None:
        st.wait("PartitionMapMissing", f"ShardSet {spec.shardset!r} has no partition map yet")
        return None
    pods = await asyncio.to_thread(shard_pods, ns, spec.shardset)
    return Target(ns, meta["name"], str(meta.get("uid") or ""), spec, read[0], read[1], pods)


async def step(body: Mapping[str, Any]) -> Step:
    """Advance one Reshard by at most one phase of one step; every call here is idempotent."""
    meta = body["metadata"]
    st = Step(body.get("status") or {}, int(meta.get("generation") or 1))
    phase = plan.parse_phase(st.status.get("phase"))
    if phase is None:
        return st.finish(Phase.FAILED, "UnknownPhase", f"unknown phase {st.status.get('phase')!r}")
    st.status["phase"] = phase.value
    if phase in plan.TERMINAL:
        st.delay = IDLE_SECONDS
        return st
    try:
        spec = parse_reshard(body.get("spec"))
    except SpecError as exc:
        return st.finish(Phase.FAILED, "InvalidSpec", str(exc))
    target = await _target(body, spec, st)
    if target is None:
        return st
    if phase is Phase.PENDING:
        return await _pending(target, body, st)
    return await _running(target, st)


def _same_shardset(ns: str, shardset: str) -> list[dict[str, Any]]:
    return [r for r in kube.list_objects(naming.API_VERSION, KIND, ns)
            if ((r.get("spec") or {}).get("shardSetRef") or {}).get("name") == shardset]


async def _pending(t: Target, body: Mapping[str, Any], st: Step) -> Step:
    """Start once no other Reshard of the ShardSet runs or is older in line."""
    others = await asyncio.to_thread(_same_shardset, t.namespace, t.spec.shardset)
    ahead = plan.first_in_line(body, others)
    if ahead is not None:
        return st.wait("WaitingForReshard", f"Reshard {ahead['metadata']['name']!r} of ShardSet "
                                            f"{t.spec.shardset!r} goes first (one layout change at a time)")
    st.status.update(phase=Phase.RUNNING.value, currentStep=0, startEpoch=t.pmap.epoch, epoch=t.pmap.epoch,
                     startTime=now_rfc3339())
    st.condition("Progressing", True, "Started", f"{len(t.spec.steps)} step(s) from map epoch {t.pmap.epoch}")
    st.event("Started", f"Reshard of ShardSet {t.spec.shardset} started: {len(t.spec.steps)} step(s) from "
                        f"partition map epoch {t.pmap.epoch}")
    st.delay = 0.0
    return st


async def _running(t: Target, st: Step) -> Step:
    """Run the current step's phase; purge what is due; complete after the last step."""
    await _purge_due(t, st)
    index = int(st.status.get("currentStep") or 0)
    if index >= len(t.spec.steps):
        cleaning = [r["index"] for r in st.status.get("steps") or [] if r.get("phase") == StepPhase.CLEANUP]
        if cleaning:
            return st.wait("WaitingForGracePeriod", f"step(s) {cleaning}: the source keeps the moved blocks until "
                                                    "the grace period ends", _grace_delay(t, st))
        return st.finish(Phase.COMPLETED, "Completed", f"{len(t.spec.steps)} step(s) done; partition map epoch "
                                                       f"{t.pmap.epoch}")
    spec_step = t.spec.steps[index]
    row = plan.step_row(st.status, index) or {"index": index, "type": spec_step.type,
                                                "phase": StepPhase.PENDING.value}
    phase = plan.parse_step_phase(row.get("phase"))
    if phase is None:
        return _fail_step(st, row, "UnknownStepPhase", f"unknown step phase {row.get('phase')!r}")
    if isinstance(spec_step, MoveStep):
        return await _MOVE_PHASES[phase](t, st, row, spec_step)
    return await _map_step(t, st, row, spec_step)


def _fail_step(st: Step, row: dict[str, Any], reason: str, message: str) -> Step:
    row.update(phase=StepPhase.FAILED.value, message=message)
    st.row(row)
    return st.finish(Phase.FAILED, reason, f"step {row['index']} ({row.get('type')}): {message}")


def _next_step(st: Step, row: dict[str, Any], message: str) -> Step:
    st.row(row)
    st.status["currentStep"] = int(row["index"]) + 1
    st.condition("Progressing", True, "StepCompleted", message)
    st.event("StepCompleted", message)
    st.delay = 0.0
    return st


# ---- splits and merges: map changes only -------------------------------------------------------------------

async def _map_step(t: Target, st: Step, row: dict[str, Any], spec_step: SplitStep | MergeStep) -> Step:
    """Pending: compute and record the new map's epoch (and split point); CuttingOver: push it, write it."""
    if row.get("phase") == StepPhase.PENDING:
        median = await _median(t, spec_step) if isinstance(spec_step, SplitStep) and spec_step.at is None else None
        try:
            applied = reshardplan.apply_step(t.pmap, spec_step, median)
        except reshardplan.LayoutError as exc:
            return _fail_step(st, row, "InvalidStep", str(exc))
        row.update(phase=StepPhase.CUTTING_OVER.value, epoch=applied.pmap.epoch, partitions=list(applied.partitions))
        if applied.split_at is not None:
            row["splitAt"] = format_id(applied.split_at)
        st.row(row)
        st.delay = 0.0
        return st
    new_map = _recorded_map(t.pmap, row, spec_step)
    if new_map is None:
        return _fail_step(st, row, "MapChanged", f"the partition map is at epoch {t.pmap.epoch}, neither the step's "
                                                 f"base nor its result (epoch {row.get('epoch')})")
    await probe.put_map_everywhere(t.pods, new_map.to_dict())
    problem = await _publish(t, new_map)
    if problem:
        return st.wait("MapWriteFailed", problem)
    st.status["epoch"] = new_map.epoch
    row["phase"] = StepPhase.COMPLETED.value
    what = (f"split partition {row['partitions'][0]} at {row.get('splitAt')} (new partition {row['partitions'][1]})"
            if isinstance(spec_step, SplitStep) else f"merged partitions {list(spec_step.partitions)} into "
                                                     f"{row['partitions'][0]}")
    return _next_step(st, row, f"step {row['index']}: {what}; partition map epoch {new_map.epoch}")


def _recorded_map(current: PartitionMap, row: Mapping[str, Any], spec_step: ReshardStep) -> PartitionMap | None:
    """The map step ``row`` recorded: recomputed from its base (epoch - 1) with the recorded split point, or the
    map in force when that already is it (the operator stopped after writing it)."""
    epoch = int(row.get("epoch") or 0)
    if current.epoch == epoch:
        return current
    if current.epoch != epoch - 1:
        return None
    if isinstance(spec_step, SplitStep) and row.get("splitAt"):
        spec_step = SplitStep(spec_step.partition, int(str(row["splitAt"]), 16))
    try:
        return reshardplan.apply_step(current, spec_step).pmap
    except reshardplan.LayoutError:
        return None


async def _median(t: Target, spec_step: SplitStep) -> int | None:
    """The median keyspace id of the partition's blocks, as its node reports it (None: empty or unknown)."""
    try:
        p = reshardplan.partition(t.pmap, spec_step.partition)
    except reshardplan.LayoutError:
        return None
    answer = await probe.call(t.pods, p.shard, "GET", "/v1/ranges/stats", params={"keyspace": plan.keyspace_param(p)})
    value = (answer.body or {}).get("medianKeyspaceId") if answer.ok else None
    if isinstance(value, str):
        try:
            return int(value, 16)
        except ValueError:
            return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# ---- the map in the ConfigMap, and the mirrors' -------------------------------------------------------------

def _write_map(ns: str, shardset: str, new_map: PartitionMap) -> str | None:
    """Write ``new_map`` into the ShardSet's map ConfigMap unless it holds a newer one (the epoch never goes back);
    the write is conditional on the resourceVersion read, so a concurrent writer makes it retry, not overwrite."""
    for _ in range(3):
        cm = kube.get("v1", "ConfigMap", ns, naming.partitions_config_map_name(shardset))
        if cm is None:
            return f"ConfigMap {naming.partitions_config_map_name(shardset)} is missing"
        text = (cm.get("data") or {}).get(PARTITION_MAP_FILE)
        current = PartitionMap.from_json(text) if text else None
        if current is not None and current.epoch >= new_map.epoch:
            return None if current == new_map or current.epoch > new_map.epoch else (
                f"the map ConfigMap holds another map of epoch {current.epoch}")
        try:
            kube.merge_patch("v1", "ConfigMap", ns, cm["metadata"]["name"], {
                "metadata": {"resourceVersion": cm["metadata"]["resourceVersion"]},
                "data": {PARTITION_MAP_FILE: new_map.to_json()}})
            return None
        except ApiException as exc:
            if exc.status != 409:
                raise
    return "the map ConfigMap kept changing under the write"


def _mirror_shardsets(ns: str, shardset: str) -> list[tuple[str, str]]:
    """(namespace, name) of the mirror ShardSets of MirrorSets whose source is ``ns/shardset``."""
    out = []
    for ms in list_mirrorsets():
        if ms["metadata"].get("namespace") != ns or ms["metadata"].get("deletionTimestamp"):
            continue
        try:
            spec = parse_mirrorset(ms.get("spec"))
        except SpecError:
            continue
        if spec.source == shardset:
            out += [(spec.mirror_namespace(m, ns), m.shardset) for m in spec.mirrors]
    return out


async def _publish(t: Target, new_map: PartitionMap) -> str | None:
    """The new map into the ShardSet's ConfigMap, then to its mirror ShardSets (their nodes, caches and map
    ConfigMaps: a mirror's layout follows its source's). A mirror's failure is logged, never blocks the step."""
    problem = await asyncio.to_thread(_write_map, t.namespace, t.spec.shardset, new_map)
    if problem:
        return problem
    for mns, mname in await asyncio.to_thread(_mirror_shardsets, t.namespace, t.spec.shardset):
        pods = await asyncio.to_thread(shard_pods, mns, mname)
        failed = [a.error for a in await probe.put_map_everywhere(pods, new_map.to_dict()) if not a.ok]
        mirror_problem = await asyncio.to_thread(_write_map, mns, mname, new_map)
        if failed or mirror_problem:
            log.warning("Reshard %s/%s: mirror ShardSet %s/%s did not take map epoch %s: %s", t.namespace, t.name,
                        mns, mname, new_map.epoch, "; ".join([*(str(f) for f in failed), mirror_problem or ""]))
    return None


# ---- moves --------------------------------------------------------------------------------------------------

def _move_partition(t: Target, row: Mapping[str, Any], spec_step: MoveStep) -> Partition:
    """The moved partition's range as the map in force has it (a move does not change it before the cutover)."""
    return reshardplan.partition(t.pmap, spec_step.partition)


def _rotations(ns: str, shardset: str) -> list[dict[str, Any]]:
    return [kr for kr in kube.list_objects(naming.API_VERSION, "KeyRotation", ns)
            if ((kr.get("spec") or {}).get("shardSetRef") or {}).get("name") == shardset]


async def _move_pending(t: Target, st: Step, row: dict[str, Any], spec_step: MoveStep) -> Step:
    """Check the move can start, then ask the target to pull the partition."""
    rotating = plan.rotation_in_progress(await asyncio.to_thread(_rotations, t.namespace, t.spec.shardset))
    if rotating:
        st.row(row)
        return st.wait("WaitingForKeyRotation", f"KeyRotation {rotating!r} of ShardSet {t.spec.shardset!r} is in "
                                                "progress; a move waits for it")
    try:
        p = reshardplan.partition(t.pmap, spec_step.partition)
        reshardplan.move(t.pmap, p.id, spec_step.to_shard)
    except reshardplan.LayoutError as exc:
        return _fail_step(st, row, "InvalidStep", str(exc))
    blocked = _purge_pending_on(st.status, p, spec_step.to_shard)
    if blocked is not None:
        return st.wait("WaitingForPurge", f"shard {spec_step.to_shard} still holds the blocks step {blocked} moved "
                                          "away (its grace period has not ended)", _grace_delay(t, st))
    source = probe.source_address(t.pods, t.namespace, t.spec.shardset, p.shard)
    if source is None or spec_step.to_shard not in t.pods:
        return st.wait("ShardPodsMissing", f"no reachable pod for shard {p.shard} or {spec_step.to_shard}")
    holder = await asyncio.to_thread(datalock.take, t.namespace, t.spec.shardset, KIND, t.name)
    if holder is not None:  # a rotation that started between the check above and now: the lock decides
        st.row(row)
        return st.wait("WaitingForKeyRotation", f"{holder} holds ShardSet {t.spec.shardset!r}'s data-operation lock; "
                                                "a move waits for it")
    doc = {"source": source, "partition": p.id, "ranges": plan.ranges_of(p)}
    name = plan.move_name(t.name, int(row["index"]))
    answer = await probe.call(t.pods, spec_step.to_shard, "PUT", probe.move_path(name), doc=doc)
    if answer.status == 409:
        return await _rollback(t, st, row, spec_step, "MoveRefused", f"the target refused the move: {answer.error}")
    if not answer.ok:
        return st.wait("NodeUnavailable", str(answer.error))
    row.update(phase=StepPhase.COPYING.value, partition=p.id, fromShard=p.shard, toShard=spec_step.to_shard,
               cutoverAttempts=0, pausedMs=None, verified=None)
    st.row(row)
    st.condition("Progressing", True, "Copying", f"step {row['index']}: moving partition {p.id} from shard "
                                                 f"{p.shard} to shard {spec_step.to_shard}")
    st.event("Copying", f"step {row['index']}: shard {spec_step.to_shard} copies partition {p.id} "
                        f"({format_id(p.start)}..{format_id(p.end)}) from shard {p.shard}")
    return st


def _purge_pending_on(status: Mapping[str, Any], p: Partition, shard: int) -> int | None:
    """A step still in Cleanup whose source is ``shard`` and whose range overlaps ``p``: moving ``p`` onto that
    shard before its purge would mix the old blocks with the copied ones."""
    for r in status.get("steps") or []:
        if r.get("phase") == StepPhase.CLEANUP and r.get("fromShard") == shard and r.get("rangeStart"):
            start, end = int(r["rangeStart"], 16), int(r["rangeEnd"], 16)
            if start <= p.end and p.start <= end:
                return int(r["index"])
    return None


async def _move_copying(t: Target, st: Step, row: dict[str, Any], spec_step: MoveStep) -> Step:
    """Copying and CatchingUp: report the target's progress; verify once it is caught up."""
    name = plan.move_name(t.name, int(row["index"]))
    answer = await probe.call(t.pods, spec_step.to_shard, "GET", probe.move_path(name))
    if answer.status == 404:  # the target does not know it (e.g. its store was replaced): ask again
        row["phase"] = StepPhase.PENDING.value
        st.row(row)
        return st.wait("MoveLost", f"shard {spec_step.to_shard} no longer knows move {name!r}; starting it again", 0.0)
    if not answer.ok:
        st.row(row)
        return st.wait("NodeUnavailable", str(answer.error))
    progress = plan.move_progress(answer.body or {})
    row.update(progress.fields)
    if progress.failed:
        return await _rollback(t, st, row, spec_step, "MoveFailed", progress.failed)
    new_phase = StepPhase.VERIFYING if progress.ready_to_verify else plan.step_phase_of(answer.body or {})
    if new_phase.value != row.get("phase"):
        st.event(new_phase.value, f"step {row['index']}: partition {spec_step.partition} {new_phase.value} "
                                  f"({row.get('copiedBlocks', 0)}/{row.get('totalBlocks', '?')} blocks copied)")
    row["phase"] = new_phase.value
    st.row(row)
    st.condition("Progressing", True, new_phase.value, f"step {row['index']}: {row.get('copiedBlocks', 0)}/"
                                                       f"{row.get('totalBlocks', '?')} blocks, lag "
                                                       f"{row.get('lagSeconds', '?')} s")
    st.delay = 0.0 if new_phase is StepPhase.VERIFYING else POLL_SECONDS
    return st


async def _move_verifying(t: Target, st: Step, row: dict[str, Any], spec_step: MoveStep) -> Step:
    """The source's range digest at LSN X against the target's at source LSN X."""
    p = _move_partition(t, row, spec_step)
    name = plan.move_name(t.name, int(row["index"]))
    # The target stops first, then the source digests at its X (at or above the target's cursor), then the target
    # applies through exactly X: asked the other way round, under steady writes the target had always passed X.
    held = await probe.call(t.pods, spec_step.to_shard, "PUT", probe.move_path(name) + "/hold",
                            params={"seconds": str(probe.HOLD_SECONDS)})
    if not held.ok:
        return st.wait("NodeUnavailable", str(held.error))
    source = await probe.call(t.pods, p.shard, "GET", "/v1/ranges/digest", params={"keyspace": plan.keyspace_param(p)},
                              timeout=probe.DIGEST_TIMEOUT)
    if not source.ok or source.body is None:
        return st.wait("NodeUnavailable", str(source.error))
    lsn = int(source.body.get("lsn") or 0)
    target = await probe.call(t.pods, spec_step.to_shard, "GET", probe.move_path(name) + "/digest",
                              params={"sourceLsn": str(lsn)}, timeout=probe.DIGEST_TIMEOUT)
    if target.code == "lsn_passed":  # the target applied past X before it could hold there: take another X
        return st.wait("VerifyRetry", f"the target was already past source LSN {lsn}", 0.0)
    if not target.ok or target.body is None:
        return st.wait("NodeUnavailable", str(target.error))
    verdict = plan.compare_digests(source.body, target.body)
    row["verified"] = {"blocks": verdict.blocks, "sourceLsn": verdict.source_lsn, "matched": verdict.matched}
    if not verdict.matched:
        return await _rollback(t, st, row, spec_step, "VerificationFailed", verdict.message)
    row["phase"] = StepPhase.CUTTING_OVER.value
    st.row(row)
    st.event("Verified", f"step {row['index']}: {verdict.message}")
    st.delay = 0.0
    return st


async def _move_cutting_over(t: Target, st: Step, row: dict[str, Any], spec_step: MoveStep) -> Step:
    """Fence, catch up, new map source first; or, after a crash, notice the source already has it."""
    p = _move_partition(t, row, spec_step)
    source_map = await probe.get_map(t.pods, p.shard)
    if not source_map.ok and p.shard != spec_step.to_shard:
        # Unknown whether the source already took the new map: neither a new cutover nor a rollback (which would
        # discard the target's copy) may run on a guess.
        st.row(row)
        return st.wait("NodeUnavailable", f"cannot read the source's map: {source_map.error}")
    if p.shard == spec_step.to_shard or plan.owns(source_map.body if source_map.ok else None, p.id,
                                                  spec_step.to_shard, t.pmap.epoch + 1):
        # The map moved it already (we stopped after pushing it): finish the push, never roll back.
        try:
            pushed = PartitionMap.from_dict(source_map.body) if p.shard != spec_step.to_shard else t.pmap
        except ValueError as exc:
            return st.wait("BadMapAnswer", f"shard {p.shard} answered an invalid map: {exc}")
        return await _after_cutover(t, st, row, spec_step, p, pushed, None)
    attempts = int(row.get("cutoverAttempts") or 0)
    if attempts >= t.spec.max_cutover_attempts:
        return await _rollback(t, st, row, spec_step, "CutoverFailed",
                               f"{attempts} cutover(s) did not finish within {t.spec.cutover_timeout}")
    row["cutoverAttempts"] = attempts + 1
    new_map = reshardplan.move(t.pmap, p.id, spec_step.to_shard).pmap
    outcome = await _cutover(t, p, spec_step.to_shard, plan.move_name(t.name, int(row["index"])), new_map)
    if outcome.paused_ms is None:
        st.row(row)
        st.event("CutoverAborted", f"step {row['index']}: cutover attempt {attempts + 1} aborted: {outcome.problem}",
                 warning=True)
        return st.wait("CutoverRetry", str(outcome.problem), POLL_SECONDS)
    return await _after_cutover(t, st, row, spec_step, p, new_map, outcome.paused_ms)


@dataclass(frozen=True)
class Cutover:
    """How a cutover attempt ended: the write pause (ms) when the source took the new map, else why not."""

    paused_ms: float | None
    problem: str | None = None


async def _cutover(t: Target, p: Partition, to_shard: int, name: str, new_map: PartitionMap) -> Cutover:
    """Fence the range on the source, wait (within cutoverTimeout) for the target to apply through the fence LSN,
    push the new map to the source, then lift the fence. Lifts the fence on every way out."""
    async with await probe.session(t.pods) as session:
        return await _fenced(t, p, to_shard, name, new_map, session)


async def _fenced(t: Target, p: Partition, to_shard: int, name: str, new_map: PartitionMap,
                  session: aiohttp.ClientSession) -> Cutover:
    started = time.monotonic()
    fence = await probe.call(t.pods, p.shard, "PUT", probe.fence_path(name), session=session,
                             doc={"ranges": plan.ranges_of(p), "holdSeconds": plan.FENCE_HOLD_SECONDS})
    try:
        if not fence.ok or fence.body is None or not isinstance(fence.body.get("fenceLsn"), int):
            return Cutover(None, f"fence refused: {fence.error or 'no fenceLsn'}")
        fence_lsn = int(fence.body["fenceLsn"])
        deadline = started + t.spec.cutover_timeout.total_seconds()
        while True:
            report = await probe.call(t.pods, to_shard, "GET", probe.move_path(name), session=session)
            if report.ok and plan.cutover_caught_up(report.body or {}, fence_lsn):
                break
            if time.monotonic() >= deadline:
                return Cutover(None, f"the target did not apply through fence LSN {fence_lsn} within "
                                     f"{t.spec.cutover_timeout}")
            await asyncio.sleep(CUTOVER_POLL_SECONDS)
        # Conditional on the fence: one that lapsed (or a source restarted) since F may have let writes commit
        # above F, which the target has not applied; then the source keeps the range and the cutover is retried.
        pushed = await probe.put_map(t.pods, p.shard, new_map.to_dict(), fence=name, session=session)
        if not pushed.ok:
            check = await probe.get_map(t.pods, p.shard)
            if not plan.owns(check.body if check.ok else None, p.id, to_shard, new_map.epoch):
                return Cutover(None, f"the source did not take the new map: {pushed.error}")
        # The target next: until it has the map, writes the source now redirects there would bounce back.
        await probe.put_map(t.pods, to_shard, new_map.to_dict(), session=session)
        return Cutover((time.monotonic() - started) * 1000.0)
    finally:
        await probe.call(t.pods, p.shard, "DELETE", probe.fence_path(name), session=session)


async def _after_cutover(t: Target, st: Step, row: dict[str, Any], spec_step: MoveStep, p: Partition,
                         new_map: PartitionMap, paused_ms: float | None) -> Step:
    """The source has the new map: push it everywhere, write it, close the move; the purge waits for the grace."""
    if paused_ms is not None:
        row["pausedMs"] = round(paused_ms, 1)
    target = await probe.put_map(t.pods, spec_step.to_shard, new_map.to_dict())
    if not target.ok and target.status != 409:  # 409: it already runs this map's successor
        st.row(row)
        return st.wait("TargetMapPending", f"the source has map epoch {new_map.epoch}, the target not yet: "
                                           f"{target.error}", POLL_SECONDS)
    await probe.put_map_everywhere(t.pods, new_map.to_dict(), skip_nodes=frozenset({spec_step.to_shard}))
    problem = await _publish(t, new_map)
    if problem:
        st.row(row)
        return st.wait("MapWriteFailed", problem)
    name = plan.move_name(t.name, int(row["index"]))
    await probe.call(t.pods, spec_step.to_shard, "DELETE", probe.move_path(name))  # keeps the data; retried below
    await asyncio.to_thread(datalock.give_back, t.namespace, t.spec.shardset, KIND, t.name)  # no data moves now
    row.update(phase=StepPhase.CLEANUP.value, epoch=new_map.epoch, cutoverAt=row.get("cutoverAt") or now_rfc3339(),
               rangeStart=format_id(p.start), rangeEnd=format_id(p.end))
    st.status["epoch"] = new_map.epoch
    pause = f"; writes paused {row['pausedMs']} ms" if row.get("pausedMs") is not None else ""
    return _next_step(st, row, f"step {row['index']}: partition {p.id} now on shard {spec_step.to_shard} (map epoch "
                               f"{new_map.epoch}){pause}; the source purges it after {t.spec.grace_period}")


async def _purge_due(t: Target, st: Step) -> None:
    """Every moved range whose grace period ended: close the target's move (kept data) and purge the source."""
    now = datetime.now(UTC)
    for row in [dict(r) for r in st.status.get("steps") or [] if r.get("phase") == StepPhase.CLEANUP]:
        elapsed = (now - datetime.fromisoformat(str(row["cutoverAt"]).replace("Z", "+00:00"))).total_seconds()
        if plan.grace_left(elapsed, t.spec.grace_period.total_seconds()) > 0:
            continue
        if int(row["fromShard"]) >= t.pmap.shards:
            # A scale-down removed the source shard: its volume is kept (Retain), and a range moved onto a shard of
            # that index later clears what it held first. Nothing to purge here.
            row.update(phase=StepPhase.COMPLETED.value, message=f"shard {row['fromShard']} was removed; not purged")
            st.row(row)
            continue
        name = plan.move_name(t.name, int(row["index"]))
        closed = await probe.call(t.pods, int(row["toShard"]), "DELETE", probe.move_path(name))
        if not closed.ok and closed.status != 404:
            continue
        ranges = [[row["rangeStart"], row["rangeEnd"]]]
        purged = await probe.call(t.pods, int(row["fromShard"]), "POST", "/v1/ranges:purge",
                                  doc={"ranges": ranges, "epoch": int(row["epoch"])})
        if purged.status == 409:
            row["message"] = f"not purged: {purged.error}"
        elif not purged.ok:
            st.condition("Progressing", False, "PurgeRetry", str(purged.error))
            continue
        else:
            row["purgedBlocks"] = int((purged.body or {}).get("purgedBlocks") or 0)
            st.event("Purged", f"step {row['index']}: shard {row['fromShard']} deleted {row['purgedBlocks']} "
                               f"block(s) of partition {row.get('partition')}")
        row["phase"] = StepPhase.COMPLETED.value
        st.row(row)


def _grace_delay(t: Target, st: Step) -> float:
    now = datetime.now(UTC)
    left = [plan.grace_left((now - datetime.fromisoformat(str(r["cutoverAt"]).replace("Z", "+00:00")))
                            .total_seconds(), t.spec.grace_period.total_seconds())
            for r in st.status.get("steps") or [] if r.get("phase") == StepPhase.CLEANUP and r.get("cutoverAt")]
    return max(0.5, min([IDLE_SECONDS, *left]))


async def _rollback(t: Target, st: Step, row: dict[str, Any], spec_step: MoveStep, reason: str, message: str
                    ) -> Step:
    """Undo a move that has not cut over: the target's imported blocks discarded, the fence lifted."""
    name = plan.move_name(t.name, int(row["index"]))
    row.update(phase=StepPhase.ROLLING_BACK.value, message=row.get("message") or f"{reason}: {message}")
    st.row(row)
    undone = await _undo_move(t.pods, t.pmap, name, spec_step)
    if undone is not None:
        return st.wait("RollbackRetry", undone)
    row["phase"] = StepPhase.FAILED.value
    st.row(row)
    return st.finish(Phase.ROLLED_BACK, reason, f"step {row['index']} (move partition {spec_step.partition} to shard "
                                                f"{spec_step.to_shard}) rolled back: {message}")


async def _undo_move(pods: Mapping[int, Mapping[str, Any]], pmap: PartitionMap, name: str, spec_step: MoveStep
                     ) -> str | None:
    """DELETE the target's move with discard and the source's fence; None when both are gone."""
    deleted = await probe.call(pods, spec_step.to_shard, "DELETE", probe.move_path(name), params={"discard": "true"})
    try:
        source = reshardplan.partition(pmap, spec_step.partition).shard
    except reshardplan.LayoutError:
        source = None
    lifted = await probe.call(pods, source, "DELETE", probe.fence_path(name)) if source is not None else None
    problems = [a.error for a in (deleted, lifted) if a is not None and not a.ok and a.status != 404]
    return "; ".join(str(p) for p in problems) or None


async def _move_rolling_back(t: Target, st: Step, row: dict[str, Any], spec_step: MoveStep) -> Step:
    """A rollback that could not reach a node: again."""
    reason, _, message = str(row.get("message") or "RolledBack: ").partition(": ")
    return await _rollback(t, st, row, spec_step, reason or "RolledBack", message)


async def _move_cleanup(t: Target, st: Step, row: dict[str, Any], spec_step: MoveStep) -> Step:
    """A step in Cleanup as the current step (a status from before the step advanced): advance."""
    return _next_step(st, row, f"step {row['index']}: moved")


async def _step_done(t: Target, st: Step, row: dict[str, Any], spec_step: MoveStep) -> Step:
    if row.get("phase") == StepPhase.FAILED:
        return st.finish(Phase.FAILED, "StepFailed", str(row.get("message") or f"step {row['index']} failed"))
    st.status["currentStep"] = int(row["index"]) + 1
    st.delay = 0.0
    return st


_MOVE_PHASES: dict[StepPhase, Callable[[Target, Step, dict[str, Any], MoveStep], Awaitable[Step]]] = {
    StepPhase.PENDING: _move_pending,
    StepPhase.COPYING: _move_copying,
    StepPhase.CATCHING_UP: _move_copying,
    StepPhase.VERIFYING: _move_verifying,
    StepPhase.CUTTING_OVER: _move_cutting_over,
    StepPhase.CLEANUP: _move_cleanup,
    StepPhase.ROLLING_BACK: _move_rolling_back,
    StepPhase.COMPLETED: _step_done,
    StepPhase.FAILED: _step_done,
}


# ---- Kopf -------------------------------------------------------------------------------------------------

def write_status(body: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Replace the Reshard's status with ``status`` (fields left out are removed); True if written."""
    old = body.get("status") or {}
    patch = {**{k: None for k in old if k not in status}, **status}
    if patch == old:
        return False
    meta = body["metadata"]
    return kube.patch_status(naming.API_VERSION, KIND, meta["namespace"], meta["name"], patch)


def _seen_key(s: Mapping[str, Any]) -> tuple[Any, ...]:
    return s.get("phase"), s.get("currentStep"), [(r.get("index"), r.get("phase")) for r in s.get("steps") or []]


def _record_metrics(body: Mapping[str, Any], status: Mapping[str, Any]) -> None:
    """Count what a written status changed: ended steps, cutover pauses, the end, the running move's progress."""
    meta = body.get("metadata") or {}
    shardset = str(((body.get("spec") or {}).get("shardSetRef") or {}).get("name") or "")
    change = plan.transitions(body.get("status") or {}, status)
    metrics.record_reshard(str(meta.get("namespace")), str(meta.get("name")), shardset, change.steps_ended,
                           change.cutover_pauses_ms, change.finished, change.move_progress)


@kopf.daemon(naming.GROUP, naming.VERSION, PLURAL, cancellation_timeout=10.0)
async def reshard_loop(name: str, namespace: str | None, body: kopf.Body, stopped: kopf.DaemonStopped,
                       **_: Any) -> None:
    """Drive one Reshard through its steps; resumes from ``status`` after a restart."""

    async def one_pass(snap: dict[str, Any]) -> tuple[str, float]:
        result = await step(snap)
        if await asyncio.to_thread(write_status, snap, result.status):
            _record_metrics(snap, result.status)
            await until_seen(body, result.status, _seen_key)
        post_events(body, result.events)
        return "success", result.delay

    await run_object_loop(KIND, namespace_of(KIND, name, namespace), name, body, stopped, one_pass)


@kopf.on.event(naming.GROUP, naming.VERSION, PLURAL)
async def reshard_changed(name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
    """A Reshard ending lets a waiting one of the same ShardSet go, and the ShardSet rescale or plan: wake them."""
    phase = plan.parse_phase((body.get("status") or {}).get("phase"))
    if phase in plan.TERMINAL:
        ns = namespace_of(KIND, name, namespace)
        for other in await asyncio.to_thread(kube.list_objects, naming.API_VERSION, KIND, ns):
            TRIGGERS.fire(KIND, ns, other["metadata"]["name"])
        _wake_shardset(ns, body)


def _wake_shardset(ns: str, body: Mapping[str, Any]) -> None:
    shardset = ((body.get("spec") or {}).get("shardSetRef") or {}).get("name")
    if shardset:
        TRIGGERS.fire("ShardSet", ns, str(shardset))


@kopf.on.delete(naming.GROUP, naming.VERSION, PLURAL, optional=False)
async def reshard_deleted(name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
    """A Running Reshard deleted before its move cut over: roll the move back (best-effort)."""
    ns = namespace_of(KIND, name, namespace)
    status = body.get("status") or {}
    metrics.forget_reshard_move(ns, name)
    _wake_shardset(ns, body)  # a scale it held back may go now
    if plan.parse_phase(status.get("phase")) is not Phase.RUNNING:
        return
    try:
        spec = parse_reshard(body.get("spec"))
        index = int(status.get("currentStep") or 0)
        row = plan.step_row(status, index) or {}
        if index >= len(spec.steps) or not isinstance(spec.steps[index], MoveStep):
            return
        move_step = spec.steps[index]
        assert isinstance(move_step, MoveStep)
        if plan.parse_step_phase(row.get("phase")) not in plan.ROLLBACK_PHASES:
            return
        read = await asyncio.to_thread(_read_map, ns, spec.shardset)
        pods = await asyncio.to_thread(shard_pods, ns, spec.shardset)
        if read is None:
            return
        source = reshardplan.partition(read[0], move_step.partition).shard
        source_map = await probe.get_map(pods, source)
        if plan.owns(source_map.body if source_map.ok else None, move_step.partition, move_step.to_shard,
                     read[0].epoch + 1):
            return  # it cut over: nothing to roll back
        problem = await _undo_move(pods, read[0], plan.move_name(name, index), move_step)
    except (SpecError, ValueError, ApiException) as exc:
        log.warning("Reshard %s/%s: no rollback on deletion: %s", ns, name, type(exc).__name__)
        return
    if problem:
        log.warning("Reshard %s/%s deleted: rollback incomplete: %s", ns, name, problem)
