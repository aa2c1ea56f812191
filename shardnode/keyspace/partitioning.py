"""Keyspace ids and partition maps (pure functions, no I/O).

A block's place is decided by its *keyspace id*: ``xxh3_64(table.encode() + b"\\x00" + key.encode())``
(xxhash's XXH3, seed 0 — a stable, documented algorithm, so ids never change between versions).
The 64-bit keyspace ``0 .. 2**64-1`` is cut into contiguous, inclusive ranges (partitions); each
partition is owned by exactly one shard. The map carries an ``epoch`` that increases on every change,
so a node and a client can tell whose map is newer. The JSON form is fixed in ``docs/interfaces.md``.

Scaling rule (``rescale``):

* **Scale-up** keeps every partition where it is and adds shards that own nothing yet; the epoch goes
  up by one because the map changed (``shards`` differs), so readers notice the new shard count.
  Filling the new shards means splitting ranges and moving halves — the WeavePlan's work, later.
* **Scale-down** that would remove a shard still owning a partition is refused with
  ``StrandedPartitionsError`` naming those shards: nothing is silently orphaned.
  Removing shards that own nothing is allowed (epoch + 1).
* Asking for the current shard count returns the map unchanged (idempotent reconciles).

Example::

    >>> m = initial_map(3)
    >>> m.owner_of(keyspace_id("users", "alice")).shard in (0, 1, 2)
    True
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import xxhash

MAP_FORMAT = 1
KEYSPACE_MIN = 0
KEYSPACE_MAX = 2**64 - 1
KEYSPACE_SIZE = 2**64


def keyspace_id(table: str, key: str) -> int:
    """Return the 64-bit keyspace id of ``(table, key)``: XXH3-64, seed 0, of ``table NUL key`` (UTF-8)."""
    # The NUL separator keeps ("ab", "c") and ("a", "bc") apart; table names cannot contain NUL.
    return xxhash.xxh3_64_intdigest(table.encode() + b"\x00" + key.encode())


def format_id(value: int) -> str:
    """Format a keyspace id as the 16-digit lower-case hex used in map files."""
    return f"{value:016x}"


def parse_id(text: str) -> int:
    """Parse a 16-digit lower-case hex keyspace id; ValueError otherwise."""
    if not isinstance(text, str) or len(text) != 16 or text.lower() != text:
        raise ValueError(f"keyspace bound must be 16 lower-case hex digits, got {text!r}")
    try:
        return int(text, 16)
    except ValueError:
        raise ValueError(f"keyspace bound must be 16 lower-case hex digits, got {text!r}") from None


class StrandedPartitionsError(ValueError):
    """A scale-down would remove shards that still own partitions."""

    def __init__(self, shards: Sequence[int], requested: int) -> None:
        self.shards = list(shards)
        self.requested = requested
        names = ", ".join(str(s) for s in self.shards)
        super().__init__(
            f"cannot scale down to {requested} shard(s): shard(s) {names} still own partitions; "
            "move their ranges to remaining shards first"
        )


@dataclass(frozen=True)
class Partition:
    """A contiguous, inclusive range ``start..end`` of the keyspace owned by one shard."""

    id: int
    start: int
    end: int
    shard: int

    def contains(self, kid: int) -> bool:
        """True if keyspace id ``kid`` falls in this partition."""
        return self.start <= kid <= self.end

    def to_dict(self) -> dict[str, Any]:
        """The JSON object form (hex bounds) of this partition."""
        return {
            "id": self.id,
            "start": format_id(self.start),
            "end": format_id(self.end),
            "shard": self.shard,
        }


@dataclass(frozen=True)
class PartitionMap:
    """A validated partition map: partitions sorted by start, covering the keyspace exactly once."""

    epoch: int
    shards: int
    partitions: tuple[Partition, ...]
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = tuple(sorted(self.partitions, key=lambda p: p.start))
        _validate(self.epoch, self.shards, parts)
        object.__setattr__(self, "partitions", parts)
        object.__setattr__(self, "_starts", tuple(p.start for p in parts))

    def owner_of(self, kid: int) -> Partition:
        """Return the partition containing keyspace id ``kid``."""
        if not KEYSPACE_MIN <= kid <= KEYSPACE_MAX:
            raise ValueError(f"keyspace id out of range: {kid}")
        return self.partitions[bisect.bisect_right(self._starts, kid) - 1]

    def shard_of(self, table: str, key: str) -> int:
        """Return the shard index owning ``(table, key)``."""
        return self.owner_of(keyspace_id(table, key)).shard

    def partitions_of(self, shard: int) -> list[Partition]:
        """Return the partitions owned by ``shard`` (possibly none), sorted by start."""
        return [p for p in self.partitions if p.shard == shard]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object form fixed in docs/interfaces.md."""
        return {
            "format": MAP_FORMAT,
            "epoch": self.epoch,
            "shards": self.shards,
            "partitions": [p.to_dict() for p in sorted(self.partitions, key=lambda p: p.id)],
        }

    def to_json(self) -> str:
        """Serialise to the ``map.json`` text."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> PartitionMap:
        """Build and validate a map from its JSON object form; ValueError with the reason otherwise."""
        if not isinstance(data, dict):
            raise ValueError("partition map must be a JSON object")
        if data.get("format") != MAP_FORMAT:
            found = data.get("format")
            raise ValueError(f"unsupported partition map format {found!r} (expected {MAP_FORMAT})")
        epoch, shards, raw_parts = data.get("epoch"), data.get("shards"), data.get("partitions")
        if not isinstance(raw_parts, list) or not raw_parts:
            raise ValueError("partition map needs a non-empty 'partitions' list")
        parts: list[Partition] = []
        for i, raw in enumerate(raw_parts):
            if not isinstance(raw, dict):
                raise ValueError(f"partition #{i} must be an object")
            missing = {"id", "start", "end", "shard"} - raw.keys()
            if missing:
                raise ValueError(f"partition #{i} is missing {sorted(missing)}")
            pid, shard = raw["id"], raw["shard"]
            if not _is_int(pid) or not _is_int(shard):
                raise ValueError(f"partition #{i}: 'id' and 'shard' must be integers")
            parts.append(Partition(pid, parse_id(raw["start"]), parse_id(raw["end"]), shard))
        if not _is_int(epoch) or not _is_int(shards):
            raise ValueError("'epoch' and 'shards' must be integers")
        return cls(epoch, shards, tuple(parts))

    @classmethod
    def from_json(cls, text: str | bytes) -> PartitionMap:
        """Parse and validate ``map.json`` text; ValueError with the reason otherwise."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"partition map is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass; "true" is never a valid epoch or shard.
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(epoch: int, shards: int, parts: Sequence[Partition]) -> None:
    if not _is_int(epoch) or epoch < 1:
        raise ValueError(f"epoch must be an integer >= 1, got {epoch!r}")
    if not _is_int(shards) or shards < 1:
        raise ValueError(f"shards must be an integer >= 1, got {shards!r}")
    if not parts:
        raise ValueError("a partition map needs at least one partition")
    ids = [p.id for p in parts]
    if len(set(ids)) != len(ids):
        raise ValueError("partition ids must be unique")
    for p in parts:
        _validate_partition(p, shards)
    _validate_coverage(parts)


def _validate_partition(p: Partition, shards: int) -> None:
    """One partition on its own: id, owning shard and range bounds."""
    if not _is_int(p.id) or p.id < 0:
        raise ValueError(f"partition id must be an integer >= 0, got {p.id!r}")
    if not _is_int(p.shard) or not 0 <= p.shard < shards:
        raise ValueError(f"partition {p.id}: shard {p.shard!r} outside 0..{shards - 1}")
    if not (_is_int(p.start) and _is_int(p.end) and KEYSPACE_MIN <= p.start <= p.end <= KEYSPACE_MAX):
        raise ValueError(f"partition {p.id}: bad range {p.start!r}..{p.end!r}")


def _validate_coverage(parts: Sequence[Partition]) -> None:
    """The partitions, in order, cover the keyspace exactly once (no gap, no overlap)."""
    expected_start = KEYSPACE_MIN
    for p in parts:
        if p.start > expected_start:
            unowned = f"{format_id(expected_start)}..{format_id(p.start - 1)}"
            raise ValueError(f"gap in keyspace: {unowned} unowned")
        if p.start < expected_start:
            raise ValueError(f"partition {p.id} overlaps the previous partition at {format_id(p.start)}")
        expected_start = p.end + 1
    if expected_start != KEYSPACE_SIZE:
        raise ValueError(f"gap in keyspace: {format_id(expected_start)}..{format_id(KEYSPACE_MAX)} unowned")


def equal_ranges(count: int) -> list[tuple[int, int]]:
    """Cut the keyspace into ``count`` contiguous inclusive ranges whose sizes differ by at most one."""
    if count < 1:
        raise ValueError(f"need at least one range, got {count}")
    # start_i = floor(i * 2^64 / count): matches the example in docs/interfaces.md (first end
    # 5555555555555554) and keeps sizes within one of each other.
    starts = [i * KEYSPACE_SIZE // count for i in range(count)] + [KEYSPACE_SIZE]
    ranges = [(starts[i], starts[i + 1] - 1) for i in range(count)]
    return ranges


def initial_map(shards: int) -> PartitionMap:
    """A new ShardSet's map: one equal range per shard (partition i on shard i), epoch 1."""
    if not _is_int(shards) or shards < 1:
        raise ValueError(f"shards must be an integer >= 1, got {shards!r}")
    parts = tuple(Partition(i, s, e, i) for i, (s, e) in enumerate(equal_ranges(shards)))
    return PartitionMap(1, shards, parts)


def owning_shards(pmap: PartitionMap) -> set[int]:
    """The shards that own at least one partition."""
    return {p.shard for p in pmap.partitions}


def rescale(current: PartitionMap, shards: int) -> PartitionMap:
    """Return the map for a new shard count without moving data (see the module docstring's rule)."""
    if not _is_int(shards) or shards < 1:
        raise ValueError(f"shards must be an integer >= 1, got {shards!r}")
    if shards == current.shards:
        return current
    stranded = sorted(s for s in owning_shards(current) if s >= shards)
    if stranded:
        raise StrandedPartitionsError(stranded, shards)
    return PartitionMap(current.epoch + 1, shards, current.partitions)


def spread(pmap: PartitionMap, kids: Iterable[int]) -> dict[int, int]:
    """Count how many keyspace ids fall on each shard (every shard listed, zero if none)."""
    counts = dict.fromkeys(range(pmap.shards), 0)
    for kid in kids:
        counts[pmap.owner_of(kid).shard] += 1
    return counts
