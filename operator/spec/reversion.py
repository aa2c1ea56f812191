"""Reversion spec: which blocks of a ShardSet go back to which point in time, and whether the run is approved."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chronoshard.operator.spec.common import Fields, SpecError, check_str

TABLE_NAME_PATTERN = r"[a-z0-9]([-a-z0-9_]*[a-z0-9])?"
MAX_TABLES = 64
MAX_KEYS = 1000
MAX_KEY_LENGTH = 256
DIGEST_MAX_LENGTH = 64
MAX_INCIDENT_ID_LENGTH = 320
MAX_SHARD = 255
MAX_PARTITION = 2**31 - 1  # the CRD's int32


@dataclass(frozen=True)
class IncidentRef:
    """One anomaly incident: its id is unique on the shadow of ``shard`` only."""

    shard: int
    table: str
    id: str


@dataclass(frozen=True)
class KeyRange:
    """Keys k with start <= k <= end (string order, both ends included)."""

    start: str
    end: str


@dataclass(frozen=True)
class ReversionSpec:
    """A parsed, defaulted Reversion spec (``tables``/``keys`` None: every table / every key)."""

    shardset: str
    point_in_time: datetime
    tables: tuple[str, ...] | None = None
    keys: tuple[str, ...] | None = None
    key_range: KeyRange | None = None
    overwrite_later_writes: bool = False
    approve: str | None = None
    incident: IncidentRef | None = None
    partition: int | None = None  # every key of that partition's ranges (alone)


def parse_reversion(spec: Mapping[str, Any] | None) -> ReversionSpec:
    """Validate and default a Reversion `spec` exactly as the CRD schema does; raise SpecError otherwise."""
    f = Fields.root(spec)
    shardset = f.ref("shardSetRef")
    tables = _strings(f, "tables", MAX_TABLES, pattern=TABLE_NAME_PATTERN, max_length=63) if f.has("tables") else None
    keys = _strings(f, "keys", MAX_KEYS, min_length=1, max_length=MAX_KEY_LENGTH) if f.has("keys") else None
    range_fields = f.maybe_obj("range")
    key_range = _range(range_fields) if range_fields is not None else None
    point = f.date_time("pointInTime")
    if point is None:
        raise SpecError("spec.pointInTime", "Required value")
    overwrite = f.boolean("overwriteLaterWrites", default=False)
    approve = f.string("approve", max_length=DIGEST_MAX_LENGTH)
    incident_fields = f.maybe_obj("incident")
    incident = _incident(incident_fields) if incident_fields is not None else None
    partition = f.integer("partition", minimum=0, maximum=MAX_PARTITION)
    f.done()
    if incident is not None and (keys is not None or key_range is not None):
        # The CRD's CEL rule (fieldPath .incident) refuses the same.
        raise SpecError("spec.incident", "incident selects the keys itself; it cannot be given with keys or range")
    if partition is not None and (keys is not None or key_range is not None or incident is not None):
        # The CRD's CEL rule (fieldPath .partition) refuses the same.
        raise SpecError("spec.partition", "partition selects the keys itself (its ranges); it cannot be given with "
                        "keys, range or incident")
    return ReversionSpec(shardset=shardset, point_in_time=point, tables=tables, keys=keys, key_range=key_range,
                         overwrite_later_writes=overwrite, approve=approve, incident=incident, partition=partition)


def _incident(f: Fields) -> IncidentRef:
    shard = f.required_integer("shard", minimum=0, maximum=MAX_SHARD)
    table = f.required_string("table", pattern=TABLE_NAME_PATTERN, max_length=63)
    ident = f.required_string("id", min_length=1, max_length=MAX_INCIDENT_ID_LENGTH)
    f.done()
    return IncidentRef(shard, table, ident)


def _strings(f: Fields, key: str, max_items: int, *, pattern: str | None = None, min_length: int | None = None,
             max_length: int) -> tuple[str, ...]:
    """A ``x-kubernetes-list-type: set`` of strings: bounded, each item checked, no duplicates."""
    out: list[str] = []
    for i, item in enumerate(f.array(key, min_items=1, max_items=max_items)):
        value = check_str(item, f"spec.{key}[{i}]", pattern=pattern, min_length=min_length, max_length=max_length)
        if value in out:
            raise SpecError(f"spec.{key}[{i}]", f"Duplicate value: {value!r}")
        out.append(value)
    return tuple(out)


def _range(f: Fields) -> KeyRange:
    start = f.required_string("start", max_length=MAX_KEY_LENGTH)
    end = f.required_string("end", max_length=MAX_KEY_LENGTH)
    f.done()
    if start > end:
        raise SpecError("spec.range.start", "range.start must not sort after range.end")
    return KeyRange(start, end)
