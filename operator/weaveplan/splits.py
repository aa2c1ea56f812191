"""Mode split (pure): whether a weave's split is due and, if so, the Reshard that carries it out (docs/weaving.md).

A weave is due when ``predictedTime - lead <= now`` (lead = ``max(interval, 30m)``: done before the partition
crosses) and its partition's forecast is still at least ``confidenceThreshold``. Then the Reshard
``<plan>-<partition>-<epoch>`` splits the partition at the weave's split key and, with ``placement: leastLoaded``,
moves the upper half (the new partition, id = the largest in the map + 1) to the least-loaded shard when that
differs. At most one at a time: nothing starts while any Reshard of the ShardSet is unfinished.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chronoshard.shardnode.keyspace.partitioning import PartitionMap, format_id

from ..spec.weaveplan import WeavePlanSpec
from .status import lead, parse_time, probability
from .whatif import halves, shard_loads, upper_half_shard

FINISHED = frozenset({"Completed", "Failed", "RolledBack"})
MAX_NAME = 253


@dataclass(frozen=True)
class Skip:
    """Why one weave does not split now: NotDue, ConfidenceDropped, BelowMinPartitionSize, StaleSplitKey,
    AlreadyCreated."""

    partition: int
    reason: str
    message: str


@dataclass(frozen=True)
class SplitDecision:
    """What mode split does this pass: ``create`` a Reshard (its name and spec), or nothing with the reasons."""

    create: dict[str, Any] | None = None  # {"name", "partition", "splitKey", "spec"}
    waiting_for: str | None = None  # an unfinished Reshard of the ShardSet blocks a due split
    skips: list[Skip] = field(default_factory=list)

    @property
    def reason(self) -> str:
        """The Splitting condition's reason when nothing is created."""
        if self.create is not None:
            return "SplitStarted"
        if self.waiting_for is not None:
            return "ReshardRunning"
        return self.skips[0].reason if self.skips else "NoSplitPredicted"


def unfinished(reshards: Iterable[Mapping[str, Any]], shardset: str) -> str | None:
    """The name of a Reshard of ``shardset`` not yet Completed, Failed or RolledBack (one runs at a time)."""
    for r in reshards:
        if ((r.get("spec") or {}).get("shardSetRef") or {}).get("name") != shardset:
            continue
        if (r.get("status") or {}).get("phase") not in FINISHED:
            return str(r["metadata"]["name"])
    return None


def reshard_name(plan: str, partition: int, epoch: int) -> str:
    """``<plan>-<partition>-<epoch>``, the plan's name shortened to fit an object name."""
    tail = f"-{partition}-{epoch}"
    return plan[: MAX_NAME - len(tail)] + tail


def _check(weave: Mapping[str, Any], part: Mapping[str, Any] | None, spec: WeavePlanSpec, pmap: PartitionMap,
           now: datetime) -> Skip | None:
    pid = int(weave["partition"])
    if part is None:
        return Skip(pid, "StaleSplitKey", f"partition {pid} is not in the partition map (epoch {pmap.epoch})")
    p = probability(part)
    if p < spec.confidence_threshold:
        return Skip(pid, "ConfidenceDropped",
                    f"partition {pid}'s forecast fell to {p:.2f}, below confidenceThreshold "
                    f"{spec.confidence_threshold:g}")
    predicted = parse_time(weave.get("predictedTime"))
    if predicted is None or predicted - lead(spec.interval) > now:
        at = "unknown" if predicted is None else (predicted - lead(spec.interval)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return Skip(pid, "NotDue", f"partition {pid} splits at {at} (predicted crossing minus the lead)")
    lower, upper, _, _ = halves(weave, part)
    floor = spec.min_partition_size_bytes
    if floor is not None and min(lower, upper) < floor:
        return Skip(pid, "BelowMinPartitionSize",
                    f"a half of partition {pid} would hold {min(lower, upper)} bytes, under minPartitionSize {floor}")
    return None


def _split_key(weave: Mapping[str, Any], pmap: PartitionMap) -> int | None:
    """The weave's split key when it still cuts its partition in the map in force."""
    try:
        key = int(str(weave.get("splitKey") or ""), 16)
    except ValueError:
        return None
    for p in pmap.partitions:
        if p.id == int(weave["partition"]):
            return key if p.start < key <= p.end else None
    return None


def decide(plan: str, spec: WeavePlanSpec, weaves: Sequence[Mapping[str, Any]],
           partitions: Sequence[Mapping[str, Any]], pmap: PartitionMap, reshards: Sequence[Mapping[str, Any]],
           created: Iterable[str], now: datetime, grace_period: str | None = None) -> SplitDecision:
    """The one split to start now, if any (``created``: the Reshard names this plan made already;
    ``grace_period``: the ShardSet's spec.partitioning.gracePeriod, given to the Reshard as a rebalance's is)."""
    if spec.mode != "split":
        return SplitDecision()
    made = set(created)
    by_id = {int(p["id"]): p for p in partitions}
    skips: list[Skip] = []
    due: list[tuple[Mapping[str, Any], int]] = []
    for w in weaves:
        pid = int(w["partition"])
        skip = _check(w, by_id.get(pid), spec, pmap, now)
        key = _split_key(w, pmap) if skip is None else None
        if skip is None and key is None:
            skip = Skip(pid, "StaleSplitKey", f"split key {w.get('splitKey')} no longer cuts partition {pid}")
        if skip is None and reshard_name(plan, pid, pmap.epoch) in made:
            skip = Skip(pid, "AlreadyCreated", f"Reshard {reshard_name(plan, pid, pmap.epoch)} exists")
        if skip is not None:
            skips.append(skip)
        elif key is not None:
            due.append((w, key))
    if not due:
        return SplitDecision(skips=skips)
    busy = unfinished(reshards, spec.shardset)
    if busy is not None:
        return SplitDecision(waiting_for=busy, skips=skips)
    weave, key = due[0]
    create = _reshard(plan, spec, weave, key, partitions, pmap)
    if grace_period is not None:
        create["spec"]["gracePeriod"] = grace_period
    return SplitDecision(create=create, skips=skips)


def _reshard(plan: str, spec: WeavePlanSpec, weave: Mapping[str, Any], key: int,
             partitions: Sequence[Mapping[str, Any]], pmap: PartitionMap) -> dict[str, Any]:
    pid = int(weave["partition"])
    own = next(p.shard for p in pmap.partitions if p.id == pid)
    steps: list[dict[str, Any]] = [{"split": {"partition": pid, "at": format_id(key)}}]
    target = upper_half_shard(spec.placement, own, shard_loads(partitions, pmap.shards))
    if target != own:
        new_id = max(p.id for p in pmap.partitions) + 1  # the split's upper half (reshardplan.split)
        steps.append({"move": {"partition": new_id, "toShard": target}})
    return {"name": reshard_name(plan, pid, pmap.epoch), "partition": pid, "splitKey": format_id(key),
            "spec": {"shardSetRef": {"name": spec.shardset}, "steps": steps}}
