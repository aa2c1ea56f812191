"""Shared spec parsing: SpecError, durations, quantities and a strict field reader.

The readers here mirror what the CRD schemas in `crds/` enforce (types, enums, bounds, patterns,
defaults, unknown fields), so the operator never acts on a spec the API server would refuse.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, overload

# The same patterns as the CRDs (RE2 and Python agree on these; Python uses fullmatch).
DURATION_PATTERN = r"([0-9]+(\.[0-9]+)?(ms|s|m|h))+"
QUANTITY_PATTERN = (
    r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?"
)
NAME_PATTERN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DURATION_MAX_LENGTH = 32
DATETIME_PATTERN = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_NS_PER_UNIT = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
# Go's time.ParseDuration (which CEL's duration() uses) refuses anything beyond int64 nanoseconds.
_MAX_DURATION_NS = 2**63 - 1
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
            "P": Decimal("1e15"), "E": Decimal("1e18")}


class SpecError(ValueError):
    """A spec field is invalid; `field_path` names it (e.g. `spec.storage.size`)."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field_path = field_path
        self.message = message


def parse_duration(value: str, field_path: str = "duration") -> timedelta:
    """Parse a duration like `1h30m`, `1.5s`, `250ms` (units h, m, s, ms) into a timedelta."""
    if not isinstance(value, str) or not re.fullmatch(DURATION_PATTERN, value):
        raise SpecError(field_path, f"{value!r} is not a duration like 30s, 5m, 1h30m or 250ms")
    if len(value) > DURATION_MAX_LENGTH:
        raise SpecError(field_path, f"must be at most {DURATION_MAX_LENGTH} characters")
    total_ns = Decimal(0)
    for number, unit in _DURATION_PART.findall(value):
        total_ns += Decimal(number) * _NS_PER_UNIT[unit]
    if total_ns > _MAX_DURATION_NS:
        raise SpecError(field_path, f"{value!r} is too long a duration")
    return timedelta(microseconds=int(total_ns) / 1000)


def check_quantity(value: Any, field_path: str = "quantity") -> str | int:
    """Refuse anything that is not a Kubernetes quantity (an integer or a string like 1Gi); returns it as given."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise SpecError(field_path, f"{value!r} is not a quantity (integer or string like 1Gi, 500M, 250m)")
    quantity_decimal(value, field_path)
    return value


def quantity_decimal(value: str | int, field_path: str = "quantity") -> Decimal:
    """Exact value of a Kubernetes quantity (what CEL's quantity() compares)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise SpecError(field_path, f"{value!r} is not a quantity (integer or string like 1Gi, 500M, 250m)")
    if isinstance(value, int):
        if value < 0:
            raise SpecError(field_path, "must not be negative")
        return Decimal(value)
    if not re.fullmatch(QUANTITY_PATTERN, value):
        raise SpecError(field_path, f"{value!r} is not a quantity like 1Gi, 500M or 250m")
    match = re.fullmatch(r"([0-9.]+)([KMGTPE]i|[numkMGTPE]|[eE][-+]?[0-9.]+)?", value)
    if match is None:  # QUANTITY_PATTERN accepted it, so this split always matches
        raise SpecError(field_path, f"{value!r} is not a quantity like 1Gi, 500M or 250m")
    number, suffix = match.group(1), match.group(2) or ""
    try:
        if suffix in _BINARY:
            return Decimal(number) * _BINARY[suffix]
        if suffix in _DECIMAL:
            return Decimal(number) * _DECIMAL[suffix]
        return Decimal(number + suffix)
    except InvalidOperation as exc:
        raise SpecError(field_path, f"{value!r} is not a quantity") from exc


def parse_quantity(value: str | int, field_path: str = "quantity") -> int:
    """Kubernetes quantity → whole base units (bytes), rounded up like Kubernetes does (`1Ki` → 1024)."""
    return math.ceil(quantity_decimal(value, field_path))


def parse_cpu_millis(value: str | int, field_path: str = "cpu") -> int:
    """CPU quantity → millicores, rounded up (`500m` → 500, `2` → 2000)."""
    return math.ceil(quantity_decimal(value, field_path) * 1000)


class Fields:
    """Strict reader over one object of a spec: typed getters with defaults and bounds, and `done()`
    which refuses any key no getter asked for (the API server refuses unknown fields the same way).

    A getter returns ``T | None`` (None when the key is absent or null), ``T`` when given a default, and the
    ``required_*`` getters return ``T`` or refuse the spec, so callers never narrow an Optional themselves.
    """

    def __init__(self, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise SpecError(path, f"must be an object, got {type(data).__name__}")
        self.data: Mapping[str, Any] = data
        self.path = path
        self._seen: set[str] = set()

    @classmethod
    def root(cls, spec: Any) -> Fields:
        """The reader over a whole `spec`; a missing spec is refused like the schema's `required: [spec]`."""
        if spec is None:
            raise SpecError("spec", "Required value")
        return cls(spec, "spec")

    def _get(self, key: str, required: bool = False) -> Any:
        self._seen.add(key)
        value = self.data.get(key)
        if value is None and required:
            raise SpecError(self.sub(key), "Required value")
        return value

    def sub(self, key: str) -> str:
        """Path of a child field."""
        return f"{self.path}.{key}"

    def done(self) -> None:
        """Refuse keys that no getter read."""
        unknown = sorted(set(self.data) - self._seen)
        if unknown:
            raise SpecError(self.sub(unknown[0]), "unknown field")

    def obj(self, key: str) -> Fields:
        """A nested object; absent → empty (mirrors `default: {}` in the schema)."""
        return Fields(self._get(key), self.sub(key))

    def maybe_obj(self, key: str) -> Fields | None:
        """A nested optional object without a default: None when absent."""
        value = self._get(key)
        return None if value is None else Fields(value, self.sub(key))

    def has(self, key: str) -> bool:
        """True when the key is present and not null (the key counts as read)."""
        self._seen.add(key)
        return self.data.get(key) is not None

    @overload
    def integer(self, key: str, *, default: int, minimum: int | None = None, maximum: int | None = None) -> int: ...
    @overload
    def integer(self, key: str, *, default: None = None, minimum: int | None = None,
                maximum: int | None = None) -> int | None: ...
    def integer(self, key: str, *, default: int | None = None, minimum: int | None = None,
                maximum: int | None = None) -> int | None:
        """An integer within [minimum, maximum]."""
        value = self._get(key)
        if value is None:
            return default
        return check_int(value, self.sub(key), minimum=minimum, maximum=maximum)

    def required_integer(self, key: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
        """An integer within [minimum, maximum] that must be present."""
        return check_int(self._get(key, required=True), self.sub(key), minimum=minimum, maximum=maximum)

    @overload
    def number(self, key: str, *, default: float, minimum: float | None = None,
               maximum: float | None = None) -> float: ...
    @overload
    def number(self, key: str, *, default: None = None, minimum: float | None = None,
               maximum: float | None = None) -> float | None: ...
    def number(self, key: str, *, default: float | None = None, minimum: float | None = None,
               maximum: float | None = None) -> float | None:
        """A number (integer or float) within [minimum, maximum]."""
        value = self._get(key)
        if value is None:
            return default
        path = self.sub(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(path, f"must be a number, got {type(value).__name__}")
        _check_bounds(value, path, minimum, maximum)
        return float(value)

    @overload
    def boolean(self, key: str, *, default: bool) -> bool: ...
    @overload
    def boolean(self, key: str, *, default: None = None) -> bool | None: ...
    def boolean(self, key: str, *, default: bool | None = None) -> bool | None:
        """A boolean."""
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise SpecError(self.sub(key), f"must be a boolean, got {type(value).__name__}")
        return value

    @overload
    def string(self, key: str, *, default: str, enum: Iterable[str] | None = None, pattern: str | None = None,
               max_length: int | None = None, min_length: int | None = None) -> str: ...
    @overload
    def string(self, key: str, *, default: None = None, enum: Iterable[str] | None = None,
               pattern: str | None = None, max_length: int | None = None,
               min_length: int | None = None) -> str | None: ...
    def string(self, key: str, *, default: str | None = None, enum: Iterable[str] | None = None,
               pattern: str | None = None, max_length: int | None = None,
               min_length: int | None = None) -> str | None:
        """A string, optionally from an enum, matching a pattern, within length bounds."""
        value = self._get(key)
        if value is None:
            return default
        return check_str(value, self.sub(key), enum=enum, pattern=pattern,
                         max_length=max_length, min_length=min_length)

    def required_string(self, key: str, *, enum: Iterable[str] | None = None, pattern: str | None = None,
                        max_length: int | None = None, min_length: int | None = None) -> str:
        """A string that must be present, optionally from an enum, matching a pattern, within length bounds."""
        return check_str(self._get(key, required=True), self.sub(key), enum=enum, pattern=pattern,
                         max_length=max_length, min_length=min_length)

    @overload
    def duration(self, key: str, *, default: str, positive: bool = False) -> timedelta: ...
    @overload
    def duration(self, key: str, *, default: None = None, positive: bool = False) -> timedelta | None: ...
    def duration(self, key: str, *, default: str | None = None, positive: bool = False) -> timedelta | None:
        """A duration string → timedelta; `positive` refuses zero (the schema's CEL rule `> 0s`)."""
        value = self._get(key)
        if value is None:
            value = default
        if value is None:
            return None
        if not isinstance(value, str):
            raise SpecError(self.sub(key), f"must be a string, got {type(value).__name__}")
        if len(value) > DURATION_MAX_LENGTH:
            raise SpecError(self.sub(key), f"must be at most {DURATION_MAX_LENGTH} characters")
        result = parse_duration(value, self.sub(key))
        if positive and result <= timedelta(0):
            raise SpecError(self.sub(key), "must be longer than 0s")
        return result

    @overload
    def quantity(self, key: str, *, default: str) -> str | int: ...
    @overload
    def quantity(self, key: str, *, default: None = None) -> str | int | None: ...
    def quantity(self, key: str, *, default: str | None = None) -> str | int | None:
        """A quantity (int or string like 1Gi), validated, returned as given."""
        value = self._get(key)
        if value is None:
            value = default
        if value is None:
            return None
        return check_quantity(value, self.sub(key))

    def date_time(self, key: str) -> datetime | None:
        """An RFC 3339 date-time string."""
        value = self._get(key)
        if value is None:
            return None
        path = self.sub(key)
        if not isinstance(value, str) or not re.fullmatch(DATETIME_PATTERN, value):
            raise SpecError(path, f"{value!r} is not an RFC 3339 date-time like 2026-11-21T10:00:00Z")
        try:
            return datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
        except ValueError as exc:
            raise SpecError(path, f"{value!r} is not a valid date-time") from exc

    def string_map(self, key: str) -> dict[str, str]:
        """An object of string values (labels, annotations, nodeSelector)."""
        value = self._get(key)
        if value is None:
            return {}
        path = self.sub(key)
        if not isinstance(value, Mapping):
            raise SpecError(path, f"must be an object, got {type(value).__name__}")
        for k, v in value.items():
            if not isinstance(v, str):
                raise SpecError(f"{path}.{k}", f"must be a string, got {type(v).__name__}")
        return dict(value)

    def array(self, key: str, *, required: bool = False, min_items: int | None = None,
              max_items: int | None = None, default: list[Any] | None = None) -> list[Any]:
        """A list within item-count bounds (items are checked by the caller)."""
        value = self._get(key, required)
        if value is None:
            return list(default or [])
        path = self.sub(key)
        if not isinstance(value, list):
            raise SpecError(path, f"must be a list, got {type(value).__name__}")
        if min_items is not None and len(value) < min_items:
            raise SpecError(path, f"must have at least {min_items} item(s)")
        if max_items is not None and len(value) > max_items:
            raise SpecError(path, f"must have at most {max_items} items")
        return value

    def ref(self, key: str) -> str:
        """A required same-namespace reference `{name: ...}` → the name."""
        self._get(key, required=True)
        ref = self.obj(key)
        name = ref.required_string("name", pattern=NAME_PATTERN, max_length=63)
        ref.done()
        return name


def check_int(value: Any, path: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Refuse non-integers (bools too) and values outside [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"must be an integer, got {type(value).__name__}")
    _check_bounds(value, path, minimum, maximum)
    return value


def check_str(value: Any, path: str, *, enum: Iterable[str] | None = None, pattern: str | None = None,
              max_length: int | None = None, min_length: int | None = None) -> str:
    """Refuse non-strings and strings outside the enum, pattern or length bounds."""
    if not isinstance(value, str):
        raise SpecError(path, f"must be a string, got {type(value).__name__}")
    if enum is not None:
        allowed = list(enum)
        if value not in allowed:
            raise SpecError(path, f"Unsupported value {value!r}: supported values: {', '.join(allowed)}")
    if max_length is not None and len(value) > max_length:
        raise SpecError(path, f"must be at most {max_length} characters")
    if min_length is not None and len(value) < min_length:
        raise SpecError(path, f"must be at least {min_length} characters")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise SpecError(path, f"{value!r} does not match {pattern}")
    return value


def _check_bounds(value: float, path: str, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise SpecError(path, f"must be greater than or equal to {minimum}")
    if maximum is not None and value > maximum:
        raise SpecError(path, f"must be less than or equal to {maximum}")
