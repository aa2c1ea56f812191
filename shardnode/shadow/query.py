"""Query parameters of the time-travel API, checked strictly: a bad one is a 400 JSON error, never a guess.

Times are RFC 3339 with an offset (``2026-12-02T10:00:00Z``) or unix seconds (``1764669600.5``); an LSN is a
non-negative integer. Keys follow the block API's rules (serving/http_common.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web
from chronoshard.shardnode.serving.http_common import ApiError, check_key, int_query

MAX_LIMIT = 1000
MAX_LSN = 2**63 - 1


@dataclass(frozen=True)
class At:
    """A point in the history: exactly one of an LSN and a time."""

    lsn: int | None
    time: float | None


def parse_time(raw: str, name: str = "time") -> float:
    """Unix seconds from RFC 3339 (with an offset) or a number of seconds; ApiError 400 otherwise."""
    try:
        value = float(raw)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise ApiError(400, "invalid_parameter",
                           f"{name} must be RFC 3339 (2026-12-02T10:00:00Z) or unix seconds") from None
        if parsed.tzinfo is None:
            raise ApiError(400, "invalid_parameter", f"{name} needs a UTC offset (Z or +hh:mm)") from None
        value = parsed.timestamp()
    if not math.isfinite(value) or value < 0:
        raise ApiError(400, "invalid_parameter", f"{name} must be a time after 1970")
    return value


def parse_lsn(raw: str, name: str = "lsn") -> int:
    """A non-negative LSN; ApiError 400 otherwise."""
    try:
        value = int(raw, 10)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer") from None
    if not 0 <= value <= MAX_LSN:
        raise ApiError(400, "invalid_parameter", f"{name} must be between 0 and {MAX_LSN}")
    return value


def point(request: web.Request, time_name: str = "time", lsn_name: str = "lsn", *, required: bool = True) -> At:
    """The point named by ``time_name`` or ``lsn_name`` (not both); neither is the present unless required."""
    raw_time, raw_lsn = request.query.get(time_name), request.query.get(lsn_name)
    if raw_time is not None and raw_lsn is not None:
        raise ApiError(400, "invalid_parameter", f"give {time_name} or {lsn_name}, not both")
    if raw_time is None and raw_lsn is None:
        if required:
            raise ApiError(400, "invalid_parameter", f"{time_name} or {lsn_name} is required")
        return At(None, None)
    if raw_lsn is not None:
        return At(parse_lsn(raw_lsn, lsn_name), None)
    assert raw_time is not None
    return At(None, parse_time(raw_time, time_name))


def limit(request: web.Request, default: int = 100) -> int:
    """``limit``: 1..1000."""
    return int_query(request, "limit", default, 1, MAX_LIMIT)


def after_lsn(request: web.Request) -> int:
    """``after`` as an LSN (history pages)."""
    raw = request.query.get("after")
    return 0 if raw is None else parse_lsn(raw, "after")


def key_query(request: web.Request, name: str) -> str | None:
    """An optional key-valued parameter (``after``, ``start``, ``end``), checked as block keys are."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return check_key(raw)
    except ApiError:
        raise ApiError(400, "invalid_parameter", f"{name} must be a key: 1-1024 characters without '/' or "
                       "control characters") from None


def values_flag(request: web.Request, default: bool) -> bool:
    """``values``: true or false."""
    raw = request.query.get("values")
    if raw is None:
        return default
    if raw not in ("true", "false"):
        raise ApiError(400, "invalid_parameter", "values must be true or false")
    return raw == "true"
