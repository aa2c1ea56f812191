"""Reshard spec: the layout steps (split, move, merge) a ShardSet's partition map goes through, in order, and the
bounds of a move's cutover (docs/resharding.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from chronoshard.operator.spec.common import Fields, SpecError, check_int

MAX_STEPS = 64
MAX_PARTITION_ID = 2**31 - 1
MAX_SHARD = 255
HEX_ID_PATTERN = r"[0-9a-f]{16}"
STEP_TYPES = ("split", "move", "merge")


@dataclass(frozen=True)
class SplitStep:
    """Cut ``partition`` at keyspace id ``at`` (None: the median of its blocks, or its middle when empty)."""

    partition: int
    at: int | None = None

    @property
    def type(self) -> str:
        """The step's kind as status and events name it."""
        return "split"


@dataclass(frozen=True)
class MoveStep:
    """Move ``partition`` (its blocks, online) to shard ``to_shard``."""

    partition: int
    to_shard: int

    @property
    def type(self) -> str:
        """The step's kind as status and events name it."""
        return "move"


@dataclass(frozen=True)
class MergeStep:
    """Join two adjacent partitions of one shard; the lower id is kept."""

    partitions: tuple[int, int]

    @property
    def type(self) -> str:
        """The step's kind as status and events name it."""
        return "merge"


ReshardStep = SplitStep | MoveStep | MergeStep


@dataclass(frozen=True)
class ReshardSpec:
    """A parsed, defaulted Reshard spec."""

    shardset: str
    steps: tuple[ReshardStep, ...]
    grace_period: timedelta = timedelta(minutes=5)
    cutover_timeout: timedelta = timedelta(seconds=2)
    max_cutover_attempts: int = 3


def parse_reshard(spec: Mapping[str, Any] | None) -> ReshardSpec:
    """Validate and default a Reshard `spec` exactly as the CRD schema does; raise SpecError otherwise."""
    f = Fields.root(spec)
    shardset = f.ref("shardSetRef")
    raw_steps = f.array("steps", required=True, min_items=1, max_items=MAX_STEPS)
    steps = tuple(_step(item, f"spec.steps[{i}]") for i, item in enumerate(raw_steps))
    grace = f.duration("gracePeriod", default="5m")
    cutover = f.duration("cutoverTimeout", default="2s", positive=True)
    attempts = f.integer("maxCutoverAttempts", default=3, minimum=1, maximum=20)
    f.done()
    return ReshardSpec(shardset=shardset, steps=steps, grace_period=grace, cutover_timeout=cutover,
                       max_cutover_attempts=attempts)


def _step(item: Any, path: str) -> ReshardStep:
    """One step: an object with exactly one of split, move, merge (the CRD's CEL rule says the same)."""
    f = Fields(item, path)
    given = [t for t in STEP_TYPES if f.has(t)]
    if len(given) != 1:
        raise SpecError(path, "each step needs exactly one of split, move or merge")
    kind = given[0]
    sub = f.obj(kind)
    f.done()
    if kind == "split":
        return _split(sub)
    if kind == "move":
        return _move(sub)
    return _merge(sub)


def _split(f: Fields) -> SplitStep:
    partition = f.required_integer("partition", minimum=0, maximum=MAX_PARTITION_ID)
    at_text = f.string("at", pattern=HEX_ID_PATTERN)
    f.done()
    return SplitStep(partition, int(at_text, 16) if at_text is not None else None)


def _move(f: Fields) -> MoveStep:
    partition = f.required_integer("partition", minimum=0, maximum=MAX_PARTITION_ID)
    to_shard = f.required_integer("toShard", minimum=0, maximum=MAX_SHARD)
    f.done()
    return MoveStep(partition, to_shard)


def _merge(f: Fields) -> MergeStep:
    raw = f.array("partitions", required=True, min_items=2, max_items=2)
    a, b = (check_int(v, f"{f.sub('partitions')}[{i}]", minimum=0, maximum=MAX_PARTITION_ID)
            for i, v in enumerate(raw))
    f.done()
    if a == b:
        raise SpecError(f.sub("partitions"), "merge needs two different partitions")
    return MergeStep((a, b))


def step_to_spec(step: ReshardStep) -> dict[str, Any]:
    """The spec form of one step (what a created Reshard's ``spec.steps`` holds)."""
    if isinstance(step, SplitStep):
        split: dict[str, Any] = {"partition": step.partition}
        if step.at is not None:
            split["at"] = f"{step.at:016x}"
        return {"split": split}
    if isinstance(step, MoveStep):
        return {"move": {"partition": step.partition, "toShard": step.to_shard}}
    return {"merge": {"partitions": list(step.partitions)}}

