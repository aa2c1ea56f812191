"""Shard reports → the PrefetchPolicy's figures (pure).

Every figure is cumulative since the shard's predictor and cache processes started: the predictor's
``/v1/status`` counts from its start, and the cache's hit/miss counters likewise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KeyCounters:
    """One cache's key-cache counters (``chronoshard_cache_key_*_total``)."""

    hits: float = 0.0
    misses: float = 0.0
    prefetched: float = 0.0
    prefetch_used: float = 0.0


@dataclass(frozen=True)
class ShardSample:
    """What one shard's predictor (``GET :7402/v1/status``) and cache (``/metrics``) answered."""

    shard: int
    predictor: Mapping[str, Any] | None = None  # None: the predictor did not answer
    predictor_error: str | None = None
    hits: float | None = None  # cache counters; None: the cache did not answer
    misses: float | None = None
    cache_error: str | None = None
    keys: KeyCounters | None = None  # None: the cache has no key cache metrics (or did not answer)


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den > 0 else None


def _int(v: Any) -> int:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0


def _recall(reports: Iterable[Mapping[str, Any]]) -> float | None:
    """Shard recalls weighted by their reads: used / (used + missed), with missed = used / recall − used."""
    used = 0.0
    denom = 0.0
    seen_zero = False
    for r in reports:
        rec = r.get("recall")
        if not isinstance(rec, int | float) or isinstance(rec, bool):
            continue
        if rec > 0:
            used += _int(r.get("hintsUsed"))
            denom += _int(r.get("hintsUsed")) / rec
        else:
            seen_zero = True
    if denom > 0:
        return round(used / denom, 4)
    return 0.0 if seen_zero else None


def _shard_row(s: ShardSample) -> dict[str, Any]:
    row: dict[str, Any] = {"shard": s.shard, "reporting": s.predictor is not None}
    p = s.predictor
    # A predictor that has not trained yet (no model file on a new volume) is waiting for data, not failing.
    untrained = p is not None and not p.get("model") and str(p.get("modelError") or "").startswith("no model file")
    if p is not None:
        if p.get("model"):
            row["model"] = str(p["model"])
        elif untrained:
            row["model"] = "untrained"
        for key in ("hintsSent", "hintsUsed", "hintsWasted", "wastedBytes"):
            row[key] = _int(p.get(key))
        for key in ("precision", "recall"):
            if isinstance(p.get(key), int | float):
                row[key] = round(float(p[key]), 4)
    if s.hits is not None and s.misses is not None:
        hr = _ratio(s.hits, s.hits + s.misses)
        if hr is not None:
            row["hitRatio"] = hr
    errors = [e for e in (s.predictor_error and f"predictor: {s.predictor_error}",
                          s.cache_error and f"cache: {s.cache_error}",
                          p is not None and p.get("configError") and f"predictor config: {p['configError']}",
                          not untrained and p is not None and p.get("modelError") and f"model: {p['modelError']}")
              if e]
    if errors:
        row["error"] = "; ".join(errors)[:1024]
    return row


def _key_cache(counters: Iterable[KeyCounters]) -> dict[str, Any] | None:
    """Sum of the caches' key-cache counters; None when no cache reports them."""
    counters = list(counters)
    if not counters:
        return None
    hits = sum(c.hits for c in counters)
    out: dict[str, Any] = {"prefetched": int(sum(c.prefetched for c in counters)),
                           "prefetchUsed": int(sum(c.prefetch_used for c in counters))}
    ratio = _ratio(hits, hits + sum(c.misses for c in counters))
    if ratio is not None:
        out["hitRatio"] = ratio
    return out


def aggregate(samples: Iterable[ShardSample], expected: int) -> dict[str, Any]:
    """The status figures over all shards (keys whose value is unknown are left out)."""
    samples = sorted(samples, key=lambda s: s.shard)
    reports = [s.predictor for s in samples if s.predictor is not None]
    out: dict[str, Any] = {
        "shardsReporting": len(reports),
        "shardsExpected": expected,
        "reporting": f"{len(reports)}/{expected}",
        "hintsSent": sum(_int(r.get("hintsSent")) for r in reports),
        "hintsUsed": sum(_int(r.get("hintsUsed")) for r in reports),
        "hintsWasted": sum(_int(r.get("hintsWasted")) for r in reports),
        "wastedBytes": sum(_int(r.get("wastedBytes")) for r in reports),
        "shards": [_shard_row(s) for s in samples],
    }
    precision = _ratio(out["hintsUsed"], out["hintsUsed"] + out["hintsWasted"])
    if precision is not None:
        out["precision"] = precision
    recall = _recall(reports)
    if recall is not None:
        out["recall"] = recall
    caches = [s for s in samples if s.hits is not None and s.misses is not None]
    hits = sum(s.hits or 0 for s in caches)
    hit_ratio = _ratio(hits, hits + sum(s.misses or 0 for s in caches))
    if hit_ratio is not None:
        out["hitRatio"] = hit_ratio
    key_cache = _key_cache(s.keys for s in samples if s.keys is not None)
    if key_cache is not None:
        out["keyCache"] = key_cache
    models = sorted({str(r["model"]) for r in reports if r.get("model")})
    if models:
        out["activeModel"] = ",".join(models)
    return out
