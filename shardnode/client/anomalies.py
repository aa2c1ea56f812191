"""The shadows' anomaly routes from the client side: an incident's keys from the shadow of the shard that detected
it, and a what-if batch split by the partition map to each owning shard's shadow with the answers merged.

The batch file is ``{"changes": [{"op": "put", "key": K, "value": <base64>} | {"op": "put", "key": K, "text": T}
| {"op": "delete", "key": K}]}``; ``text`` is sent as its UTF-8 bytes in base64 (the shadow takes ``value``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from chronoshard.shardnode.client.aio import ROUTED_HEADER, raise_for
from chronoshard.shardnode.client.history import PAGE, HistoryClient
from chronoshard.shardnode.keyspace.partitioning import PartitionMap

MAX_CHANGES = 10_000  # what one shadow takes in one what-if
COUNTS = ("create", "overwrite", "delete", "unchanged")


class BatchError(ValueError):
    """The what-if file is not a batch of the contract's shape."""


def parse_batch(doc: Any) -> list[dict[str, str]]:
    """The changes of a batch file, each as the shadow takes it (``text`` turned into base64 ``value``)."""
    changes = doc.get("changes") if isinstance(doc, Mapping) else None
    if not isinstance(changes, list) or not changes:
        raise BatchError('the file must be {"changes": [...]} with at least one change')
    if len(changes) > MAX_CHANGES:
        raise BatchError(f"at most {MAX_CHANGES} changes in one what-if, got {len(changes)}")
    return [_change(i, c) for i, c in enumerate(changes)]


def _change(i: int, c: Any) -> dict[str, str]:
    where = f"changes[{i}]"
    if not isinstance(c, Mapping) or not isinstance(c.get("key"), str) or not c["key"]:
        raise BatchError(f"{where}: needs a non-empty string key")
    if c.get("op") == "delete":
        return {"op": "delete", "key": c["key"]}
    if c.get("op") != "put":
        raise BatchError(f"{where}: op must be put or delete, got {c.get('op')!r}")
    if ("value" in c) == ("text" in c):
        raise BatchError(f"{where}: a put needs value (base64) or text, exactly one")
    if "text" in c:
        if not isinstance(c["text"], str):
            raise BatchError(f"{where}: text must be a string")
        return {"op": "put", "key": c["key"], "value": base64.b64encode(c["text"].encode()).decode()}
    try:
        base64.b64decode(str(c["value"]), validate=True)
    except (binascii.Error, ValueError):
        raise BatchError(f"{where}: value is not base64") from None
    return {"op": "put", "key": c["key"], "value": str(c["value"])}


def split(pmap: PartitionMap, table: str, changes: Sequence[Mapping[str, str]]) -> dict[int, list[Mapping[str, str]]]:
    """The changes by owning shard, each shard's in the batch's order."""
    out: dict[int, list[Mapping[str, str]]] = {}
    for c in changes:
        out.setdefault(pmap.shard_of(table, c["key"]), []).append(c)
    return out


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0.0


def merge(answers: Mapping[int, Mapping[str, Any]], sizes: Mapping[int, int]) -> dict[str, Any]:
    """One answer for the whole batch: counts and bytes summed, score and severity the highest shard's (its
    drivers too), wouldAlarm if any shard's would; ``perShard`` keeps each shard's."""
    counts = {k: sum(int(_num((a.get("counts") or {}).get(k))) for a in answers.values()) for k in COUNTS}
    worst = max(sorted(answers), key=lambda s: (_num(answers[s].get("score")), -s))
    top = answers[worst]
    return {"counts": counts, "bytes": sum(int(_num(a.get("bytes"))) for a in answers.values()),
            "score": max(_num(a.get("score")) for a in answers.values()),
            "severity": max(_num(a.get("severity")) for a in answers.values()),
            "wouldAlarm": any(bool(a.get("wouldAlarm")) for a in answers.values()),
            "threshold": top.get("threshold"), "detector": top.get("detector"), "drivers": top.get("drivers") or [],
            "perShard": [{"shard": s, "changes": sizes.get(s, 0), "score": _num(answers[s].get("score")),
                          "severity": _num(answers[s].get("severity")),
                          "wouldAlarm": bool(answers[s].get("wouldAlarm"))} for s in sorted(answers)]}


def _table_path(table: str, *rest: str) -> str:
    return "/v1/tables/" + "/".join(quote(p, safe="") for p in (table, *rest))


def _doc(payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise BatchError("the shadow answered something other than a JSON object")
    return doc


async def incident_keys(h: HistoryClient, shard: int, table: str, incident: str,
                        limit: int | None = None) -> AsyncIterator[dict[str, Any]]:
    """The keys an incident changed, from the shadow of the shard that detected it, page by page in key order."""
    path = _table_path(table, "anomalies", incident, "keys")
    after: str | None = None
    count = 0
    while True:
        params = {"limit": str(PAGE), **({"after": after} if after is not None else {})}
        url, status, payload = await h.call(shard, path, params=params)
        raise_for(status, payload, url, table, None, h.transport.credentials)
        doc = _doc(payload)
        keys = doc.get("keys") or []
        for k in keys:
            if limit is not None and count >= limit:
                return
            yield k
            count += 1
        after = doc.get("next")
        if not after or not keys:
            return


async def whatif(h: HistoryClient, table: str, changes: Sequence[Mapping[str, str]],
                 identity: str | None = None) -> dict[str, Any]:
    """Each owning shard's shadow answers for its part of the batch; one retry with a fresh map after a 421."""
    for attempt in (0, 1):
        pmap = await h.partition_map(refresh=attempt == 1)
        parts = split(pmap, table, changes)
        answers: dict[int, Mapping[str, Any]] = {}
        misdirected = False
        for shard, part in sorted(parts.items()):
            body = {"changes": list(part), **({"identity": identity} if identity else {})}
            url, status, payload = await h.call(
                shard, _table_path(table, "whatif"), method="POST", body=json.dumps(body).encode(),
                headers={ROUTED_HEADER: str(pmap.epoch), "Content-Type": "application/json"})
            if status == 421 and attempt == 0:
                misdirected = True
                break
            raise_for(status, payload, url, table, None, h.transport.credentials)
            answers[shard] = _doc(payload)
        if not misdirected:
            return merge(answers, {s: len(p) for s, p in parts.items()})
    raise AssertionError("unreachable")  # pragma: no cover
