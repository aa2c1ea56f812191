"""Reversion: the plan (pure: which keys to restore, create or delete, its counts and digest) and the resumable
executor that carries a plan out through the node as ordinary conditional writes.

A plan compares two states of the same keys, both read from the history: *now* (the state at ``planLsn``, the
capture cursor when the plan was made) and *the point*. Per key: ``restore`` when both have the key with
different content, ``create`` when only the point has it, ``delete`` when only now has it. Every item carries the
LSN the key has now (0: absent), which the executor sends as ``X-Chronoshard-If-Lsn``: a key written after the plan
fails that precondition and is a conflict, never silently overwritten (unless the plan says ``overwriteLater``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

RESTORE, CREATE, DELETE = "restore", "create", "delete"
ACTIONS = (RESTORE, CREATE, DELETE)
SAMPLE_SIZE = 100


class VersionLike(Protocol):
    """What the planner reads of a history version (history.Version has these fields)."""

    @property
    def table(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def lsn(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True)
class Point:
    """The point a plan reverts to: its LSN and, when it was given as a time, that time."""

    lsn: int
    time: float | None

    def to_json(self) -> dict[str, Any]:
        """JSON form (in the plan and in the digest)."""
        return {"lsn": self.lsn, "time": self.time}


@dataclass(frozen=True)
class PlanItem:
    """One key to write: ``expected_lsn`` is its LSN now (0: absent now); ``target_lsn`` the version to restore
    (0 for a delete); ``size`` the bytes to write."""

    table: str
    key: str
    action: str
    expected_lsn: int
    target_lsn: int
    size: int

    def canonical(self) -> list[Any]:
        """The item as it enters the digest (a JSON array, fixed order)."""
        return [self.table, self.key, self.action, self.expected_lsn, self.target_lsn]

    def to_json(self) -> dict[str, Any]:
        """The item as a plan's ``sample`` lists it."""
        return {"table": self.table, "key": self.key, "action": self.action, "expectedLsn": self.expected_lsn,
                "targetLsn": self.target_lsn, "size": self.size}


@dataclass(frozen=True)
class PlanCounts:
    """How many keys each action touches, and the bytes written."""

    restore: int = 0
    create: int = 0
    delete: int = 0
    bytes: int = 0

    @property
    def total(self) -> int:
        """Items in the plan."""
        return self.restore + self.create + self.delete

    def to_json(self) -> dict[str, int]:
        """JSON form (the plan's top-level counts)."""
        return {"restore": self.restore, "create": self.create, "delete": self.delete, "bytes": self.bytes}


def _same_content(now: VersionLike, then: VersionLike) -> bool:
    if now.lsn == then.lsn:
        return True
    # A different LSN may carry the same bytes (a rewrap, or the same value written again).
    return now.value is not None and then.value is not None and now.value == then.value


def item_for(now: VersionLike | None, then: VersionLike | None) -> PlanItem | None:
    """The item that takes one key from ``now`` back to ``then`` (None: nothing to do)."""
    if now is None and then is None:
        return None
    if then is None:
        assert now is not None
        return PlanItem(now.table, now.key, DELETE, now.lsn, 0, 0)
    if now is None:
        return PlanItem(then.table, then.key, CREATE, 0, then.lsn, then.size)
    if _same_content(now, then):
        return None
    return PlanItem(now.table, now.key, RESTORE, now.lsn, then.lsn, then.size)


def _order(v: VersionLike) -> tuple[str, str]:
    return (v.table, v.key)


def plan_items(now: Iterable[VersionLike], then: Iterable[VersionLike]) -> Iterator[PlanItem]:
    """Merge the two states (each live keys sorted by table, then key) into the plan's items, in that order."""
    a, b = iter(now), iter(then)
    x, y = next(a, None), next(b, None)
    while x is not None or y is not None:
        if y is None or (x is not None and _order(x) < _order(y)):
            item, x = item_for(x, None), next(a, None)
        elif x is None or _order(y) < _order(x):
            item, y = item_for(None, y), next(b, None)
        else:
            item = item_for(x, y)
            x, y = next(a, None), next(b, None)
        if item is not None:
            yield item


def count(items: Iterable[PlanItem]) -> PlanCounts:
    """The plan's counts."""
    per = dict.fromkeys(ACTIONS, 0)
    size = 0
    for item in items:
        per[item.action] += 1
        size += item.size
    return PlanCounts(per[RESTORE], per[CREATE], per[DELETE], size)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_document(items: Iterable[PlanItem], point: Point) -> bytes:
    """The bytes the digest is taken over: compact JSON, sorted keys, UTF-8, of
    ``{"items": [[table, key, action, expectedLsn, targetLsn], ...], "point": {"lsn", "time"}}``."""
    return _dumps({"items": [item.canonical() for item in items], "point": point.to_json()}).encode()


class Digester:
    """The digest of ``canonical_document`` computed item by item (a plan need not fit in memory)."""

    def __init__(self) -> None:
        self._h = hashlib.sha256(b'{"items":[')
        self._first = True

    def add(self, item: PlanItem) -> None:
        """Feed the next item (in plan order)."""
        self._h.update((b"" if self._first else b",") + _dumps(item.canonical()).encode())
        self._first = False

    def hexdigest(self, point: Point) -> str:
        """The sha256 hex digest, once every item was added."""
        h = self._h.copy()
        h.update(b'],"point":' + _dumps(point.to_json()).encode() + b"}")
        return h.hexdigest()


def digest(items: Iterable[PlanItem], point: Point) -> str:
    """sha256 hex of ``canonical_document(items, point)``."""
    d = Digester()
    for item in items:
        d.add(item)
    return d.hexdigest(point)
