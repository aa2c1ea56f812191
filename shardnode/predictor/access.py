"""One access of the cache's access log, and the parsing of log entries into it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

_NUMERIC_SUFFIX = re.compile(r"^(.*?)(\d+)$")


@dataclass(frozen=True, slots=True)
class Access:
    """One request seen by the cache (reads and, in traces, writes)."""

    time: float
    table: str
    key: str
    size: int
    client: str = ""
    hit: bool = False
    write: bool = False
    seq: int = 0


class AccessLogError(ValueError):
    """An access-log entry that cannot be understood."""


def _parse_time(value: Any) -> float:
    if isinstance(value, bool):
        raise AccessLogError("time must be a number or an ISO-8601 string")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError as exc:
            raise AccessLogError(f"time {value!r} is not ISO-8601") from exc
    raise AccessLogError("time must be a number or an ISO-8601 string")


def parse_log_entry(entry: dict[str, Any]) -> Access:
    """Turn one `GET /v1/access-log` entry `{seq,time,table,key,client,hit,size}` into an Access."""
    try:
        table, key = entry["table"], entry["key"]
        seq = int(entry["seq"])
        size = int(entry.get("size") or 0)
    except (KeyError, TypeError, ValueError) as exc:
        raise AccessLogError(f"bad access-log entry: {exc}") from exc
    if not isinstance(table, str) or not isinstance(key, str) or not table or not key:
        raise AccessLogError("table and key must be non-empty strings")
    return Access(
        time=_parse_time(entry.get("time", 0.0)),
        table=table,
        key=key,
        size=max(size, 0),
        client=str(entry.get("client") or ""),
        hit=bool(entry.get("hit", False)),
        write=entry.get("op") in ("write", "put"),
        seq=seq,
    )


def split_numeric(key: str) -> tuple[str, int] | None:
    """Split `blk-000123` into ('blk-', 123) so block runs can be extrapolated; None if no number."""
    m = _NUMERIC_SUFFIX.match(key)
    if m is None:
        return None
    return m.group(1), int(m.group(2))


def offset_key(key: str, delta: int) -> str | None:
    """The key `delta` blocks after `key`, keeping zero padding; None if `key` has no numeric suffix."""
    parts = split_numeric(key)
    if parts is None:
        return None
    prefix, n = parts
    digits = len(key) - len(prefix)
    nxt = n + delta
    if nxt < 0:
        return None
    # Zero-padded keys keep their width; unpadded keys just grow.
    width = digits if key[len(prefix)] == "0" and digits > 1 else 0
    return f"{prefix}{nxt:0{width}d}"
