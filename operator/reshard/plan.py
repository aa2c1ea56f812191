"""A Reshard's phases and the pure decisions between them (no I/O; docs/resharding.md).

``Phase`` is the Reshard's ``status.phase``; ``StepPhase`` is one step's. The controller keeps every fact it needs
in the status (``status.steps[i]``) or asks the nodes, so these functions take the status and the nodes' answers
and say what comes next.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from chronoshard.shardnode.keyspace.partitioning import Partition, format_id


class Phase(StrEnum):
    """A Reshard's ``status.phase``."""

    PENDING = "Pending"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    ROLLED_BACK = "RolledBack"


TERMINAL = frozenset({Phase.COMPLETED, Phase.FAILED, Phase.ROLLED_BACK})


class StepPhase(StrEnum):
    """One step's ``phase`` in ``status.steps``."""

    PENDING = "Pending"
    COPYING = "Copying"
    CATCHING_UP = "CatchingUp"
    VERIFYING = "Verifying"
    CUTTING_OVER = "CuttingOver"
    CLEANUP = "Cleanup"
    COMPLETED = "Completed"
    ROLLING_BACK = "RollingBack"
    FAILED = "Failed"


# Before the source has the new map a move can still be undone; from Cleanup on it has happened.
ROLLBACK_PHASES = frozenset({StepPhase.PENDING, StepPhase.COPYING, StepPhase.CATCHING_UP, StepPhase.VERIFYING,
                             StepPhase.CUTTING_OVER})
# The target's apply may lag the source by this much when verification starts: the digest at an LSN waits for the
# target to reach it, and a smaller lag keeps that wait (and the cutover's catch-up) short.
VERIFY_LAG_SECONDS = 1.0
FENCE_HOLD_SECONDS = 5
# The idle Reshards (the only ones a KeyRotation does not wait for) and the KeyRotation phases that are no rotation
# in progress (operator/keyrotation/plan.py IDLE_PHASES, by value: no controller imports another).
KEYROTATION_IDLE = frozenset({"Pending", "Waiting", "Completed", "Failed", ""})


def parse_phase(text: str | None) -> Phase | None:
    """``status.phase`` as a Phase (unset is Pending); None for a value no version of us wrote."""
    try:
        return Phase(text or Phase.PENDING)
    except ValueError:
        return None


def parse_step_phase(text: str | None) -> StepPhase | None:
    """A step's phase (unset is Pending); None for an unknown value."""
    try:
        return StepPhase(text or StepPhase.PENDING)
    except ValueError:
        return None


def move_name(reshard: str, index: int) -> str:
    """The name of step ``index``'s move on the target and of its fence on the source."""
    return f"{reshard}.{index}"


def ranges_of(p: Partition) -> list[list[str]]:
    """A partition's range as the node endpoints take it: ``[["<start hex>", "<end hex>"]]``."""
    return [[format_id(p.start), format_id(p.end)]]


def keyspace_param(p: Partition) -> str:
    """``<start>-<end>`` (hex) for the ``keyspace=`` query of the range endpoints."""
    return f"{format_id(p.start)}-{format_id(p.end)}"


def step_row(status: Mapping[str, Any], index: int) -> dict[str, Any] | None:
    """A copy of ``status.steps``' entry for step ``index`` (None when the step has not started)."""
    for row in status.get("steps") or []:
        if row.get("index") == index:
            return dict(row)
    return None


def with_step_row(status: Mapping[str, Any], row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``status.steps`` with ``row`` put in place of the entry of the same index (or added), by index."""
    rows = [dict(r) for r in status.get("steps") or [] if r.get("index") != row["index"]]
    return sorted([*rows, dict(row)], key=lambda r: int(r["index"]))


def first_in_line(mine: Mapping[str, Any], others: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The Reshard of the same ShardSet this one waits for: one that is Running, else an older Pending one
    (creation time, then name); None when this one may go. One layout change at a time per ShardSet."""
    me = _order(mine)
    blocking = None
    for other in others:
        phase = parse_phase((other.get("status") or {}).get("phase"))
        if other["metadata"].get("uid") == mine["metadata"].get("uid") or phase in TERMINAL or phase is None:
            continue
        if phase is Phase.RUNNING:
            return other
        if _order(other) < me and (blocking is None or _order(other) < _order(blocking)):
            blocking = other
    return blocking


def _order(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")


def rotation_in_progress(rotations: Iterable[Mapping[str, Any]]) -> str | None:
    """The name of a KeyRotation that is rotating (a move waits for it), else None."""
    for kr in rotations:
        if str((kr.get("status") or {}).get("phase") or "") not in KEYROTATION_IDLE:
            return str(kr["metadata"]["name"])
    return None


@dataclass(frozen=True)
class Progress:
    """What the target's ``GET /v1/moves/{name}`` says, as status fields, and whether it may verify."""

    fields: dict[str, Any]
    failed: str | None
    ready_to_verify: bool


def move_progress(report: Mapping[str, Any]) -> Progress:
    """Turn the target's move report into step status fields; ``ready_to_verify`` once it catches up with a lag
    of at most VERIFY_LAG_SECONDS."""
    fields = {k: report[src] for src, k in (("copiedBlocks", "copiedBlocks"), ("totalBlocks", "totalBlocks"),
                                            ("sourceLsn", "sourceLsn"), ("lagSeconds", "lagSeconds"))
              if isinstance(report.get(src), int | float) and not isinstance(report.get(src), bool)}
    phase = str(report.get("phase") or "")
    if phase == "failed":
        return Progress(fields, str(report.get("error") or "the target reports the move failed"), False)
    lag = fields.get("lagSeconds")
    ready = phase == "catching_up" and lag is not None and float(lag) <= VERIFY_LAG_SECONDS
    return Progress(fields, None, ready)


def step_phase_of(report: Mapping[str, Any]) -> StepPhase:
    """Copying while the target imports the snapshot, CatchingUp once it tails the change stream."""
    return StepPhase.CATCHING_UP if report.get("phase") == "catching_up" else StepPhase.COPYING


@dataclass(frozen=True)
class Verdict:
    """The digests of the source and the target at one source LSN, compared."""

    matched: bool
    blocks: int
    source_lsn: int
    message: str


def compare_digests(source: Mapping[str, Any], target: Mapping[str, Any]) -> Verdict:
    """Equal digests and block counts at the same LSN: the copy is exact (LSNs themselves differ by design)."""
    lsn = int(source.get("lsn") or 0)
    blocks = int(source.get("blocks") or 0)
    matched = source.get("digest") == target.get("digest") and blocks == int(target.get("blocks") or 0)
    if matched:
        return Verdict(True, blocks, lsn, f"{blocks} block(s) match at source LSN {lsn}")
    return Verdict(False, blocks, lsn, f"digests differ at source LSN {lsn}: source {blocks} block(s), target "
                                       f"{int(target.get('blocks') or 0)}")


def cutover_caught_up(report: Mapping[str, Any], fence_lsn: int) -> bool:
    """The target applied every write acknowledged before the fence."""
    lsn = report.get("sourceLsn")
    return isinstance(lsn, int) and lsn >= fence_lsn


def owns(partitions_doc: Mapping[str, Any] | None, pid: int, shard: int, epoch: int) -> bool:
    """True when a node's ``GET /v1/partitions`` shows a map of at least ``epoch`` with ``pid`` on ``shard``: the
    push already reached it (the operator stopped after pushing, before writing its status)."""
    if not partitions_doc or int(partitions_doc.get("epoch") or 0) < epoch:
        return False
    return any(p.get("id") == pid and p.get("shard") == shard for p in partitions_doc.get("partitions") or [])


def grace_left(elapsed_seconds: float, grace_seconds: float) -> float:
    """Seconds until the source may purge the moved range (0 when it may now)."""
    return max(0.0, grace_seconds - elapsed_seconds)


# ---- what a written status changed (for the metrics) -------------------------------------------------------

@dataclass(frozen=True)
class Transitions:
    """What one status write changed: steps that ended, cutover pauses newly recorded, the Reshard's end, and the
    running move's progress (``None`` when no move step is copying, catching up or verifying)."""

    steps_ended: tuple[tuple[str, str], ...]  # (step type, end phase: Completed | Failed)
    cutover_pauses_ms: tuple[float, ...]
    finished: str | None  # the terminal phase newly reached
    move_progress: tuple[int, int, float | None] | None  # copiedBlocks, totalBlocks, lagSeconds


_STEP_ENDS = frozenset({StepPhase.COMPLETED, StepPhase.FAILED})
_MOVING = frozenset({StepPhase.COPYING, StepPhase.CATCHING_UP, StepPhase.VERIFYING})


def _rows(status: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
    return {int(r["index"]): r for r in status.get("steps") or [] if isinstance(r, Mapping) and "index" in r}


def transitions(old: Mapping[str, Any], new: Mapping[str, Any]) -> Transitions:
    """Compare the status before and after a write; each change is reported once, in the write that made it."""
    before, after = _rows(old), _rows(new)
    ended: list[tuple[str, str]] = []
    pauses: list[float] = []
    progress: tuple[int, int, float | None] | None = None
    for index, row in sorted(after.items()):
        prev = before.get(index, {})
        phase = parse_step_phase(row.get("phase"))
        if phase in _STEP_ENDS and parse_step_phase(prev.get("phase")) != phase:
            ended.append((str(row.get("type") or "unknown"), phase.value))
        if row.get("pausedMs") is not None and prev.get("pausedMs") is None:
            pauses.append(float(row["pausedMs"]))
        if phase in _MOVING:
            lag = row.get("lagSeconds")
            progress = (int(row.get("copiedBlocks") or 0), int(row.get("totalBlocks") or 0),
                        None if lag is None else float(lag))
    phase_now, phase_then = parse_phase(new.get("phase")), parse_phase(old.get("phase"))
    finished = phase_now.value if phase_now in TERMINAL and phase_then != phase_now else None
    return Transitions(tuple(ended), tuple(pauses), finished, progress)
