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
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from chronoshard.shardnode.serving.http_common import TABLE_RE, ApiError, check_key

from .query import parse_time

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
    excluded: int = 0  # an incident's keys changed since by someone else: left out of the plan (conflicts)

    @property
    def total(self) -> int:
        """Items in the plan."""
        return self.restore + self.create + self.delete

    def to_json(self) -> dict[str, int]:
        """JSON form (the plan's top-level counts; ``excluded`` only when there are any)."""
        body = {"restore": self.restore, "create": self.create, "delete": self.delete, "bytes": self.bytes}
        if self.excluded:
            body["excluded"] = self.excluded
        return body


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


# ---- the plan request (pure validation) -------------------------------------------------------------
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")
REQUEST_FIELDS = {"name", "tables", "keys", "range", "time", "lsn", "overwriteLater", "incident", "partition"}
MAX_KEYS = 10_000
LSN_RE = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True)
class IncidentRef:
    """An anomaly incident a plan reverts (docs/anomalies.md): the shard whose shadow found it, its table, its id."""

    shard: int
    table: str
    id: str

    def to_json(self) -> dict[str, Any]:
        """JSON form (in the normalised request)."""
        return {"shard": self.shard, "table": self.table, "id": self.id}


@dataclass(frozen=True)
class PlanRequest:
    """A checked ``POST /v1/reversions`` body."""

    name: str
    tables: tuple[str, ...] | None
    keys: tuple[str, ...] | None
    start: str | None
    end: str | None
    lsn: int | None
    time: float | None
    overwrite_later: bool
    incident: IncidentRef | None = None
    partition: int | None = None  # every key of that partition's ranges under the map in force

    def to_json(self) -> dict[str, Any]:
        """The normalised body (what a second POST of the same name is compared with; ``incident`` and
        ``partition`` only when given, so plans stored before them compare as before)."""
        body = {"name": self.name, "tables": list(self.tables) if self.tables is not None else None,
                "keys": list(self.keys) if self.keys is not None else None,
                "range": None if self.start is None and self.end is None else {"start": self.start, "end": self.end},
                "lsn": self.lsn, "time": self.time, "overwriteLater": self.overwrite_later}
        if self.incident is not None:
            body["incident"] = self.incident.to_json()
        if self.partition is not None:
            body["partition"] = self.partition
        return body


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_body", message)


def _tables(raw: Any) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(t, str) and TABLE_RE.fullmatch(t) for t in raw):
        raise _bad("tables must be a non-empty array of table names")
    return tuple(sorted(set(raw)))


def _keys(raw: Any) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or len(raw) > MAX_KEYS:
        raise _bad(f"keys must be a non-empty array of at most {MAX_KEYS} keys")
    return tuple(sorted({check_key(k) for k in raw}))


def _range(raw: Any) -> tuple[str | None, str | None]:
    if raw is None:
        return None, None
    if not isinstance(raw, dict) or set(raw) - {"start", "end"}:
        raise _bad("range must be an object with start and/or end")
    start, end = raw.get("start"), raw.get("end")
    start = None if start is None else check_key(start)
    end = None if end is None else check_key(end)
    if start is not None and end is not None and start > end:
        raise _bad("range.start must not sort after range.end (both ends are included)")
    return start, end


def _point(doc: dict[str, Any]) -> tuple[int | None, float | None]:
    if ("time" in doc) == ("lsn" in doc):
        raise _bad("give exactly one of time and lsn")
    if "lsn" in doc:
        lsn = doc["lsn"]
        if not isinstance(lsn, int) or isinstance(lsn, bool) or lsn < 0:
            raise _bad("lsn must be a non-negative integer")
        return lsn, None
    raw = doc["time"]
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise _bad("time must be RFC 3339 or unix seconds")
    try:
        return None, parse_time(str(raw) if not isinstance(raw, str) else raw)
    except ApiError as exc:
        raise _bad(exc.message) from None


def _incident(raw: Any) -> IncidentRef | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"shard", "table", "id"}:
        raise _bad("incident must be an object with shard, table and id")
    shard, table, ident = raw["shard"], raw["table"], raw["id"]
    if not isinstance(shard, int) or isinstance(shard, bool) or shard < 0:
        raise _bad("incident.shard must be a non-negative integer")
    if not isinstance(table, str) or not TABLE_RE.fullmatch(table):
        raise _bad("incident.table must be a table name")
    if not isinstance(ident, str) or not ident.startswith(table + ".") or not LSN_RE.fullmatch(ident[len(table) + 1:]):
        raise _bad("incident.id must be <table>.<first LSN> of that table")
    return IncidentRef(shard, table, ident)


def _partition(raw: Any) -> int | None:
    if raw is None:
        return None
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
        raise _bad("partition must be a non-negative integer (a partition id)")
    return raw


def parse_plan_request(doc: dict[str, Any]) -> PlanRequest:
    """The checked plan request; ApiError 400 naming what is wrong."""
    unknown = set(doc) - REQUEST_FIELDS
    if unknown:
        raise _bad(f"unknown fields: {sorted(unknown)}")
    name = doc.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise _bad("name must match [A-Za-z0-9][A-Za-z0-9_.-]{0,252}")
    overwrite = doc.get("overwriteLater", False)
    if not isinstance(overwrite, bool):
        raise _bad("overwriteLater must be true or false")
    keys = _keys(doc.get("keys"))
    start, end = _range(doc.get("range"))
    if keys is not None and (start is not None or end is not None):
        raise _bad("give keys or range, not both")
    lsn, at_time = _point(doc)
    tables = _tables(doc.get("tables"))
    incident = _incident(doc.get("incident"))
    if incident is not None:
        if keys is not None or start is not None or end is not None:
            raise _bad("an incident plan takes its keys from the incident: give no keys or range")
        if tables is not None and tables != (incident.table,):
            raise _bad("an incident plan covers the incident's table only")
        tables = (incident.table,)
    partition = _partition(doc.get("partition"))
    if partition is not None and (keys is not None or start is not None or end is not None or incident is not None):
        raise _bad("a partition plan takes its keys from the partition's ranges: give no keys, range or incident")
    return PlanRequest(name, tables, keys, start, end, lsn, at_time, overwrite, incident, partition)
