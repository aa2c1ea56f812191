"""The what-if report of each predicted split (pure; Strimzi's rebalance proposals are the model): per shard,
bytes and load before and after the split and the placement's move, the bytes the move copies, the expected
cutover pause and the forecast with its interval (docs/weaving.md).

The split key is the median keyspace id of the partition's blocks (the weaver's choice), so each half is taken to
hold half the partition's bytes and, lacking per-key load, half its load; a weaver that reports ``lowerBytes`` /
``upperBytes`` on the weave is used as given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_PAUSE_MS = 1000.0  # no cutover of this ShardSet seen yet (docs/weaving.md)
PAUSE_HISTORY = 20  # the newest cutovers the expected pause is taken from


@dataclass(frozen=True)
class ShardLoad:
    """One shard's bytes and requests per second."""

    bytes: int = 0
    load: float = 0.0


def shard_loads(partitions: Iterable[Mapping[str, Any]], shards: int) -> dict[int, ShardLoad]:
    """Bytes and load per shard 0..shards-1 (and any other shard a row names), summed over its partitions."""
    out = {s: ShardLoad() for s in range(shards)}
    for p in partitions:
        s = int(p["shard"])
        cur = out.get(s, ShardLoad())
        out[s] = ShardLoad(cur.bytes + int(p.get("bytes") or 0), cur.load + float(p.get("loadRps") or 0.0))
    return out


def least_loaded(loads: Mapping[int, ShardLoad]) -> int:
    """The shard with the lowest load; fewer bytes, then the lower index, break ties."""
    return min(loads, key=lambda s: (loads[s].load, loads[s].bytes, s))


def upper_half_shard(placement: str, own_shard: int, loads: Mapping[int, ShardLoad]) -> int:
    """Where the upper half goes: ``stay`` keeps it; ``leastLoaded`` picks that shard (its own when it is)."""
    if placement != "leastLoaded" or not loads:
        return own_shard
    return least_loaded(loads)


def expected_pause_ms(pauses_ms: Sequence[float]) -> float:
    """The nearest-rank p99 of the newest cutover pauses (oldest first), or 1000 ms when there are none."""
    recent = sorted(float(p) for p in list(pauses_ms)[-PAUSE_HISTORY:])
    if not recent:
        return DEFAULT_PAUSE_MS
    return recent[max(0, math.ceil(0.99 * len(recent)) - 1)]


def halves(weave: Mapping[str, Any], partition: Mapping[str, Any]) -> tuple[int, int, float, float]:
    """(lower bytes, upper bytes, lower load, upper load) of the partition cut at the weave's split key."""
    total = int(partition.get("bytes") or 0)
    upper = weave.get("upperBytes")
    upper_bytes = int(upper) if isinstance(upper, int) else total // 2
    upper_bytes = min(max(upper_bytes, 0), total)
    load = float(partition.get("loadRps") or 0.0)
    share = upper_bytes / total if total else 0.5
    return total - upper_bytes, upper_bytes, load * (1 - share), load * share


def report(weave: Mapping[str, Any], partition: Mapping[str, Any], loads: Mapping[int, ShardLoad],
           placement: str, pause_ms: float) -> dict[str, Any]:
    """The what-if row of one weave (its partition row gives bytes, load, shard and forecast)."""
    own = int(partition["shard"])
    target = upper_half_shard(placement, own, loads)
    _, upper_bytes, _, upper_load = halves(weave, partition)
    moved = target != own
    rows = []
    for s in sorted(loads):
        before = loads[s]
        after_bytes, after_load = before.bytes, before.load
        if moved and s == own:
            after_bytes, after_load = after_bytes - upper_bytes, after_load - upper_load
        if moved and s == target:
            after_bytes, after_load = after_bytes + upper_bytes, after_load + upper_load
        rows.append({"shard": s, "bytesBefore": before.bytes, "bytesAfter": after_bytes,
                     "loadBefore": round(before.load, 3), "loadAfter": round(max(after_load, 0.0), 3)})
    forecast = partition.get("forecast") or {}
    return {
        "partition": int(weave["partition"]),
        "splitKey": str(weave.get("splitKey") or ""),
        "placement": {"lowerHalfShard": own, "upperHalfShard": target},
        "shards": rows,
        "bytesToMove": upper_bytes if moved else 0,
        "expectedCutoverPauseMs": pause_ms if moved else 0.0,
        "forecast": {k: forecast[k] for k in ("probability", "predictedTime", "reason", "model", "sizeAtWindowEnd")
                     if k in forecast},
    }


def what_if(weaves: Sequence[Mapping[str, Any]], partitions: Sequence[Mapping[str, Any]], shards: int,
            placement: str, pauses_ms: Sequence[float]) -> list[dict[str, Any]]:
    """One report per weave whose partition is in ``partitions`` (the newest weave of a partition only)."""
    by_id = {int(p["id"]): p for p in partitions}
    loads = shard_loads(partitions, shards)
    pause = expected_pause_ms(pauses_ms)
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    for w in weaves:
        pid = int(w["partition"])
        if pid in seen or pid not in by_id:
            continue
        seen.add(pid)
        out.append(report(w, by_id[pid], loads, placement, pause))
    return out


def pauses_from_reshards(reshards: Iterable[Mapping[str, Any]], shardset: str) -> list[float]:
    """The cutover pauses (ms) of ``shardset``'s Reshards, oldest Reshard first, from their status steps."""
    mine = [r for r in reshards if ((r.get("spec") or {}).get("shardSetRef") or {}).get("name") == shardset]
    mine.sort(key=lambda r: str((r.get("status") or {}).get("startTime")
                                or r["metadata"].get("creationTimestamp") or ""))
    out: list[float] = []
    for r in mine:
        for step in (r.get("status") or {}).get("steps") or []:
            ms = step.get("pausedMs")
            if isinstance(ms, int | float) and not isinstance(ms, bool):
                out.append(float(ms))
    return out
