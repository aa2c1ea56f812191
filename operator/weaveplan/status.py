"""Every shard's weaver report (``GET :7404/v1/status``) into the WeavePlan's status rows (pure).

A weaver answers ``{"partitions": [{id, bytes, blocks, loadRps, growthBytesPerHour, samples, forecast}],
"weaves": [...], "lastForecastTime", "lastWeaveTime", "shadow", "errors"}`` (docs/weaving.md). Times may come as
unix seconds or RFC 3339; the status always carries RFC 3339.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

MAX_ROWS = 256  # the CRD's maxItems for partitions, weaves and whatIf
FORECAST_FIELDS = ("probability", "predictedTime", "reason", "model", "sizeAtWindowEnd", "explanation")


@dataclass(frozen=True)
class WeaverReport:
    """One shard's weaver answer, or why there is none."""

    shard: int
    body: Mapping[str, Any] | None = None
    error: str | None = None


def rfc3339(value: Any) -> str | None:
    """A time as the status writes it (second precision, UTC ``Z``); None for anything that is not a time."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, str):
        parsed = parse_time(value)
        return None if parsed is None else parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return None


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 string or unix seconds as an aware datetime; None when it is neither."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), UTC)
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def duration_text(seconds: float) -> str:
    """Seconds as the CRD's duration syntax (``24h``, ``90m``, ``45s``)."""
    s = int(round(seconds))
    if s and s % 3600 == 0:
        return f"{s // 3600}h"
    if s and s % 60 == 0:
        return f"{s // 60}m"
    return f"{s}s"


def _num(value: Any, default: float = 0.0) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def forecast_row(raw: Any) -> dict[str, Any] | None:
    """The forecast object of a partition row: the contract's fields, times as RFC 3339."""
    if not isinstance(raw, Mapping):
        return None
    row = {k: raw[k] for k in FORECAST_FIELDS if k in raw}
    row["probability"] = min(1.0, max(0.0, _num(raw.get("probability"))))
    if "predictedTime" in row:
        row["predictedTime"] = rfc3339(row["predictedTime"])
    return row


def partition_row(shard: int, raw: Mapping[str, Any]) -> dict[str, Any] | None:
    """One partition of one shard's report as a status row; None when it has no id."""
    pid = _int(raw.get("id"))
    if pid is None:
        return None
    row: dict[str, Any] = {
        "id": pid, "shard": shard, "bytes": _int(raw.get("bytes")) or 0, "blocks": _int(raw.get("blocks")) or 0,
        "growthBytesPerHour": _num(raw.get("growthBytesPerHour")), "loadRps": _num(raw.get("loadRps")),
    }
    forecast = forecast_row(raw.get("forecast"))
    if forecast is not None:
        row["forecast"] = forecast
    return row


def weave_row(shard: int, raw: Mapping[str, Any]) -> dict[str, Any] | None:
    """One weave of one shard's report as a status row; None without an id or partition."""
    wid, pid = raw.get("id"), _int(raw.get("partition"))
    if not isinstance(wid, str) or pid is None:
        return None
    window = raw.get("window")  # the weaver's seconds (or already a duration)
    if not isinstance(window, str):
        window = duration_text(_num(window, _num(raw.get("windowSeconds"))))
    split_key = raw.get("splitKey")
    if isinstance(split_key, int) and not isinstance(split_key, bool):
        split_key = f"{split_key:016x}"
    return {
        "id": wid, "partition": pid, "shard": shard, "splitKey": str(split_key or ""),
        "confidence": _num(raw.get("confidence")), "predictedTime": rfc3339(raw.get("predictedTime")),
        "window": window, "snapshots": _int(raw.get("snapshots")) or 0,
        "sourceSnapshot": _int(raw.get("sourceSnapshot")), "sourceLsn": _int(raw.get("sourceLsn")),
        "bytes": _int(raw.get("bytes")) or 0,
    }


def probability(row: Mapping[str, Any]) -> float:
    """A partition row's forecast probability (0 without a forecast)."""
    return _num((row.get("forecast") or {}).get("probability"))


@dataclass(frozen=True)
class Aggregate:
    """The status rows built from all shards' reports."""

    partitions: list[dict[str, Any]]
    weaves: list[dict[str, Any]]
    last_forecast_time: str | None
    reporting: int
    shadow: bool  # every reporting weaver sees the shadow's history
    problems: list[str]  # "shard N: ..." for each shard that did not answer or cannot read its weave.json
    warnings: list[str] = field(default_factory=list)  # "shard N: ..." the weavers' recent errors (transient)

    def fields(self) -> dict[str, Any]:
        """The status fields these rows fill."""
        out: dict[str, Any] = {"partitions": self.partitions, "weaves": self.weaves,
                               "weaveCount": len(self.weaves), "shardsReporting": self.reporting}
        if self.last_forecast_time is not None:
            out["lastForecastTime"] = self.last_forecast_time
        return out


def _shard_rows(report: WeaverReport, body: Mapping[str, Any]
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    parts = [r for r in (partition_row(report.shard, p) for p in body.get("partitions") or []
                         if isinstance(p, Mapping)) if r is not None]
    weaves = [r for r in (weave_row(report.shard, w) for w in body.get("weaves") or []
                          if isinstance(w, Mapping)) if r is not None]
    return parts, weaves


def aggregate(reports: Iterable[WeaverReport]) -> Aggregate:
    """Partitions (largest forecast first, at most 256), weaves (soonest first), the newest forecast time over
    all shards, and what is missing."""
    partitions: list[dict[str, Any]] = []
    weaves: list[dict[str, Any]] = []
    times: list[datetime] = []
    problems: list[str] = []
    warnings: list[str] = []
    reporting, shadow = 0, True
    for report in sorted(reports, key=lambda r: r.shard):
        if report.body is None:
            problems.append(f"shard {report.shard}: {report.error or 'not reporting'}")
            continue
        reporting += 1
        parts, woven = _shard_rows(report, report.body)
        partitions += parts
        weaves += woven
        shadow = shadow and bool(report.body.get("shadow"))
        t = parse_time(report.body.get("lastForecastTime"))
        if t is not None:
            times.append(t)
        warnings += [f"shard {report.shard}: {e}" for e in report.body.get("errors") or [] if isinstance(e, str)]
        if isinstance(report.body.get("configError"), str):
            problems.append(f"shard {report.shard}: weave.json: {report.body['configError']}")
    partitions.sort(key=lambda r: (-probability(r), r["id"]))
    far = "9999-12-31T23:59:59Z"
    weaves.sort(key=lambda w: (w["predictedTime"] or far, w["partition"], w["id"]))
    newest = rfc3339(max(times).timestamp()) if times else None
    return Aggregate(partitions[:MAX_ROWS], weaves[:MAX_ROWS], newest, reporting, shadow and reporting > 0,
                     problems, warnings)


def above(partitions: Sequence[Mapping[str, Any]], threshold: float) -> set[int]:
    """Ids of the partitions forecast to split with at least ``threshold``."""
    return {int(p["id"]) for p in partitions if probability(p) >= threshold and (p.get("forecast") or {})}


def lead(interval: timedelta) -> timedelta:
    """How long before the predicted crossing a split must start: ``max(interval, 30m)`` (docs/weaving.md)."""
    return max(interval, timedelta(minutes=30))
