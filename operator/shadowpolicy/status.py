"""Shadow reports → the ShadowPolicy's figures and conditions (pure).

Each shard's shadow answers ``GET :7403/v1/status`` with its capture (``capture.lagLsn``, ``capture.lagSeconds``,
``capture.state``), its tiers (``tiers.{hot,warm,cold}.{versions,bytes,rawBytes}``), ``compressionRatio`` and
``oldestRestorableTime``; a missing key is left out of the status, never guessed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

TIERS = ("hot", "warm", "cold")
# A capture more than this far behind its node is reported as CaptureBehind (or its snapshot interval, if longer:
# a shadow that keeps up within one interval still writes every snapshot on time).
MIN_LAG_BOUND_SECONDS = 60.0
BEHIND_STATES = ("behind",)


@dataclass(frozen=True)
class ShardSample:
    """What one shard's shadow answered at ``GET /v1/status`` (``report`` None: it did not answer)."""

    shard: int
    report: Mapping[str, Any] | None = None
    error: str | None = None


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def to_time(v: Any) -> dt.datetime | None:
    """A unix-seconds number or an RFC 3339 string as an aware datetime; None for anything else."""
    if isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
        return dt.datetime.fromtimestamp(float(v), dt.UTC)
    if isinstance(v, str) and v:
        try:
            parsed = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return None


def rfc3339(when: dt.datetime) -> str:
    """Kubernetes' date-time form, second precision (truncated: the point is restorable, not a later one)."""
    return when.astimezone(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _obj(report: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = report.get(key)
    return value if isinstance(value, Mapping) else {}


def _lag(report: Mapping[str, Any]) -> tuple[int | None, float | None]:
    capture = _obj(report, "capture")
    lsn = _int(capture.get("lagLsn", report.get("lagLsn")))
    seconds = _num(capture.get("lagSeconds", report.get("lagSeconds")))
    return lsn, seconds


def _tiers(report: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    raw = report.get("tiers")
    out: dict[str, dict[str, int]] = {}
    if not isinstance(raw, Mapping):
        return out
    for tier in TIERS:
        t = raw.get(tier)
        if not isinstance(t, Mapping):
            continue
        figures = {k: n for k in ("bytes", "rawBytes", "versions") if (n := _int(t.get(k))) is not None}
        if figures:
            out[tier] = figures
    return out


def _errors(s: ShardSample) -> list[str]:
    r = s.report
    if r is None:
        return [s.error or "not reporting"]
    capture, keyring = _obj(r, "capture"), _obj(r, "keyring")
    found = [f"capture: {capture['error']}" if capture.get("error") else "",
             f"config: {r['configError']}" if r.get("configError") else "",
             f"keyring: {keyring['loadError']}" if keyring.get("loadError") else ""]
    return [e for e in found if e]


def shard_row(s: ShardSample) -> dict[str, Any]:
    """One ``status.shards`` entry."""
    row: dict[str, Any] = {"shard": s.shard, "reporting": s.report is not None}
    r = s.report
    if r is not None:
        capture = _obj(r, "capture")
        if isinstance(capture.get("state"), str):
            row["state"] = capture["state"][:64]
        lsn, seconds = _lag(r)
        if lsn is not None:
            row["captureLagLsn"] = lsn
        if seconds is not None:
            row["captureLagSeconds"] = round(seconds, 3)
        oldest = to_time(r.get("oldestRestorableTime"))
        if oldest is not None:
            row["oldestRestorableTime"] = rfc3339(oldest)
        ratio = _num(r.get("compressionRatio"))
        if ratio is not None:
            row["compressionRatio"] = round(ratio, 3)
        tiers = _tiers(r)
        if tiers:
            row["tiers"] = tiers
    errors = _errors(s)
    if errors:
        row["error"] = "; ".join(errors)[:1024]
    return row


def _sum_tiers(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    total: dict[str, dict[str, int]] = {}
    for row in rows:
        for tier, figures in (row.get("tiers") or {}).items():
            acc = total.setdefault(tier, {})
            for k, n in figures.items():
                acc[k] = acc.get(k, 0) + n
    return total


def aggregate(samples: Iterable[ShardSample], expected: int) -> dict[str, Any]:
    """The status figures over all shards: the slowest capture, the latest oldest point (every shard can be
    restored to it), sums of the tiers, and raw over stored bytes; unknown figures are left out."""
    rows = [shard_row(s) for s in sorted(samples, key=lambda s: s.shard)]
    reporting = [r for r in rows if r["reporting"]]
    out: dict[str, Any] = {"shardsReporting": len(reporting), "shardsExpected": expected,
                           "reporting": f"{len(reporting)}/{expected}", "shards": rows}
    lags = [r["captureLagLsn"] for r in reporting if "captureLagLsn" in r]
    if lags:
        out["captureLagLsn"] = max(lags)
    seconds = [r["captureLagSeconds"] for r in reporting if "captureLagSeconds" in r]
    if seconds:
        out["captureLagSeconds"] = max(seconds)
    oldest = [r.get("oldestRestorableTime") for r in reporting]
    # Only when every shard says: a shard that does not could hold nothing from that far back.
    if reporting and len(reporting) == expected and all(oldest):
        # RFC 3339 UTC strings of one form sort as times.
        out["oldestRestorableTime"] = max(str(o) for o in oldest)
    tiers = _sum_tiers(reporting)
    if tiers:
        out["tiers"] = tiers
        stored = sum(t.get("bytes", 0) for t in tiers.values())
        raw = sum(t.get("rawBytes", 0) for t in tiers.values())
        out["shadowBytes"] = stored
        out["versions"] = sum(t.get("versions", 0) for t in tiers.values())
        if stored > 0 and raw > 0:
            out["compressionRatio"] = round(raw / stored, 3)
    return out


def lag_bound_seconds(snapshot_interval: dt.timedelta) -> float:
    """How far a capture may lag before the policy says CaptureBehind."""
    return max(MIN_LAG_BOUND_SECONDS, snapshot_interval.total_seconds())


def behind(rows: Iterable[Mapping[str, Any]], bound_seconds: float) -> list[str]:
    """Why shards are CaptureBehind: a slot the node trimmed past (re-seeding), or lag over the bound."""
    found: list[str] = []
    for r in rows:
        if not r.get("reporting"):
            continue
        if r.get("state") in BEHIND_STATES:
            found.append(f"shard {r['shard']}: the node trimmed its change log past the capture; re-seeding "
                         "(history before the gap is not exact)")
        elif (r.get("captureLagSeconds") or 0) > bound_seconds:
            found.append(f"shard {r['shard']}: {r['captureLagSeconds']}s ({r.get('captureLagLsn', '?')} changes) "
                         f"behind its node, over the {bound_seconds:g}s bound")
    return found
