"""The JSON the console answers, shaped from Kubernetes objects and shadow answers (pure functions)."""

from __future__ import annotations

import base64
import binascii
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

PREVIEW_BYTES = 4096
Obj = Mapping[str, Any]


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _status(obj: Obj) -> Obj:
    return obj.get("status") or {}


def _spec(obj: Obj) -> Obj:
    return obj.get("spec") or {}


def refers_to(obj: Obj, shardset: str) -> bool:
    """The object's ``spec.shardSetRef.name`` names ``shardset``."""
    return (_spec(obj).get("shardSetRef") or {}).get("name") == shardset


def _tables(shardset: Obj) -> list[str]:
    out = []
    for t in _spec(shardset).get("tables") or []:
        name = t.get("name") if isinstance(t, Mapping) else t
        if isinstance(name, str):
            out.append(name)
    return out


def shardset_view(shardset: Obj, rotations: Iterable[Obj], policy: Obj | None) -> dict[str, Any]:
    """SHARDSET: the summary of one ShardSet with its KeyRotations and ShadowPolicy (those that name it)."""
    st, spec = _status(shardset), _spec(shardset)
    shards: Obj = st["shards"] if isinstance(st.get("shards"), Mapping) else {}
    ready = st.get("readyShards", shards.get("ready", 0))
    return {"namespace": _meta(shardset).get("namespace"), "name": _meta(shardset).get("name"),
            "shards": shards.get("desired", spec.get("shards")), "readyShards": ready,
            "phase": st.get("phase", "Unknown"), "tables": _tables(shardset),
            "keyVersions": {"current": st.get("keyVersion"), "versions": list(st.get("keyVersions") or [])},
            "rotations": [{"name": _meta(r).get("name"), "phase": _status(r).get("phase", "Pending")}
                          for r in sorted(rotations, key=lambda r: str(_meta(r).get("name")))],
            "shadowPolicy": _meta(policy).get("name") if policy is not None else None}


def reversion_summary(obj: Obj) -> dict[str, Any]:
    """One Reversion in a ShardSet's list: name, phase, digest, keys planned, progress, incident."""
    st = _status(obj)
    plan = st.get("plan") or {}
    return {"name": _meta(obj).get("name"), "phase": st.get("phase", "Planning"), "digest": st.get("digest"),
            "keys": plan.get("keys"), "progress": st.get("progress") or {},
            "incident": _spec(obj).get("incident")}


def shardset_detail(shardset: Obj, rotations: Iterable[Obj], policy: Obj | None,
                    reversions: Iterable[Obj]) -> dict[str, Any]:
    """SHARDSET plus the policy's anomalies and detector state, and the Reversions that name the ShardSet."""
    pst = _status(policy) if policy is not None else {}
    return {**shardset_view(shardset, rotations, policy), "anomalies": list(pst.get("anomalies") or []),
            "detector": pst.get("detector"),
            "reversions": [reversion_summary(r) for r in sorted(reversions, key=lambda r: str(_meta(r).get("name")))]}


def reversion_view(obj: Obj, may_patch: bool) -> dict[str, Any]:
    """A Reversion as the console shows it; ``canApprove`` only while it awaits approval and RBAC lets the user
    patch it."""
    st = _status(obj)
    phase = st.get("phase", "Planning")
    return {"name": _meta(obj).get("name"), "namespace": _meta(obj).get("namespace"), "phase": phase,
            "spec": dict(_spec(obj)), "plan": st.get("plan") or {}, "digest": st.get("digest"),
            "progress": st.get("progress") or {}, "conditions": list(st.get("conditions") or []),
            "canApprove": bool(may_patch and phase == "AwaitingApproval" and st.get("digest"))}


def value_view(doc: Obj, download: str) -> dict[str, Any]:
    """A value at a point: UTF-8 text when it is text, else a hex dump; only the first 4 KiB of either."""
    raw = value_bytes(doc)
    head = raw[:PREVIEW_BYTES]
    text: str | None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character cut at 4 KiB is still text: retry without the last incomplete bytes.
        text = _cut_text(head) if len(raw) > PREVIEW_BYTES else None
    if text is not None and any(ord(c) < 32 and c not in "\t\n\r" or c == "\x7f" for c in text):
        text = None  # valid UTF-8 but control bytes (NULs, escapes): binary, shown as hex
    return {"lsn": doc.get("lsn"), "time": doc.get("time"), "size": doc.get("size", len(raw)),
            "text": text, "hex": None if text is not None else hex_dump(head),
            "truncated": len(raw) > PREVIEW_BYTES, "download": download}


def _cut_text(head: bytes) -> str | None:
    for cut in (1, 2, 3):
        try:
            return head[:-cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def value_bytes(doc: Obj) -> bytes:
    """The bytes of a shadow ``at`` answer (base64 ``value``; none for a delete)."""
    value = doc.get("value")
    if not isinstance(value, str):
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return b""


def hex_dump(data: bytes, width: int = 16) -> str:
    """Offset, hex bytes and printable ASCII, one line per ``width`` bytes."""
    lines = []
    for off in range(0, len(data), width):
        chunk = data[off:off + width]
        ascii_ = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{off:08x}  {chunk.hex(' '):<{width * 3 - 1}}  {ascii_}")
    return "\n".join(lines)


def history_view(versions: Sequence[Obj]) -> dict[str, Any]:
    """A key's versions without their values (the value is asked for one point at a time)."""
    return {"versions": [{"lsn": v.get("lsn"), "time": v.get("time"), "op": v.get("op"), "size": v.get("size"),
                          "identity": v.get("identity")} for v in versions]}


def merge_timeline(per_shard: Mapping[int, Obj], threshold: float | None) -> dict[str, Any]:
    """Every shard's windows and incidents of one table, each marked with its shard, in time order."""
    windows = [{"shard": s, "start": w.get("start"), "end": w.get("end"), "score": w.get("score"),
                "features": w.get("features"), "incident": w.get("incident")}
               for s, doc in per_shard.items() for w in doc.get("windows") or []]
    windows.sort(key=lambda w: (_num(w["start"]), w["shard"]))
    incidents = [{**i, "shard": s} for s, doc in per_shard.items() for i in doc.get("incidents") or []]
    incidents.sort(key=lambda i: (_num(i.get("startTime", i.get("start"))), i["shard"]))
    return {"threshold": threshold, "windows": windows, "incidents": incidents}


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.inf


def detector_threshold(policy: Obj | None, table: str) -> float | None:
    """The alarm threshold the ShadowPolicy's status (or its spec) states for ``table``, if any."""
    if policy is None:
        return None
    det = _status(policy).get("detector") or {}
    for src in ((det.get("states") or {}).get(table) if isinstance(det.get("states"), Mapping) else None,
                det, _spec(policy).get("anomaly") or {}):
        if isinstance(src, Mapping) and isinstance(src.get("threshold"), int | float):
            return float(src["threshold"])
    return None


def merge_state(per_shard: Mapping[int, Obj], limit: int) -> dict[str, Any]:
    """The first ``limit`` live keys over every shard's page, in key order; ``next`` when any shard has more."""
    entries = heapq.merge(*([{"key": e.get("key"), "lsn": e.get("lsn"), "size": e.get("size"), "shard": s}
                             for e in doc.get("entries") or []] for s, doc in sorted(per_shard.items())),
                          key=lambda e: str(e["key"]))
    page: list[dict[str, Any]] = []
    for e in entries:
        if len(page) == limit:
            break
        page.append(e)
    more = len(page) == limit and (sum(len(d.get("entries") or []) for d in per_shard.values()) > limit
                                   or any(d.get("next") for d in per_shard.values()))
    return {"entries": page, "next": page[-1]["key"] if more and page else None}


def point(text: str, name: str) -> str:
    """A time query value as the shadows take it: unix seconds or RFC 3339; ValueError otherwise."""
    try:
        if math.isfinite(float(text)):
            return text
    except ValueError:
        pass
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name} must be RFC 3339 (2026-11-30T09:00:00Z) or unix seconds") from None
    return text


# ---- MirrorSets (docs/mirroring.md) ----------------------------------------------------------------------
def mirrorset_members(obj: Obj) -> list[str]:
    """``namespace/name`` of every member ShardSet: the source first, then the mirrors in spec order (a mirror
    without a namespace is in the MirrorSet's)."""
    ns, spec = _meta(obj).get("namespace"), _spec(obj)
    source = (spec.get("sourceRef") or {}).get("name")
    out = [f"{ns}/{source}"] if isinstance(source, str) else []
    for m in spec.get("mirrors") or []:
        if isinstance(m, Mapping) and isinstance((m.get("shardSetRef") or {}).get("name"), str):
            out.append(f"{m.get('namespace') or ns}/{m['shardSetRef']['name']}")
    return out


def _condition(st: Obj, kind: str) -> Obj | None:
    return next((c for c in st.get("conditions") or [] if isinstance(c, Mapping) and c.get("type") == kind), None)


def mirrorset_summary(obj: Obj) -> dict[str, Any]:
    """One MirrorSet in a list: members, term, active member, phase, mode, the operation's kind and step, whether
    writes were lost and not all confirmed."""
    st = _status(obj)
    op = st.get("operation") or {}
    lost = [w for w in st.get("lostWrites") or [] if isinstance(w, Mapping)]
    ready = _condition(st, "Ready")
    return {"namespace": _meta(obj).get("namespace"), "name": _meta(obj).get("name"),
            "members": mirrorset_members(obj), "term": st.get("term"), "activeShardSet": st.get("activeShardSet"),
            "phase": st.get("phase", "Pending"), "mode": (_spec(obj).get("replication") or {}).get("mode"),
            "ready": ready.get("status") if ready is not None else None,
            "operation": {"kind": op.get("kind"), "step": op.get("step")} if op else None,
            "lostWrites": len(lost), "unconfirmedLostWrites": sum(1 for w in lost if not w.get("confirmed"))}


def _copy_row(c: Obj) -> dict[str, Any]:
    keys = ("shardSet", "role", "health", "state", "appliedLSN", "lastLSN", "lagLSN", "lagSeconds", "latencyMs",
            "errorRate", "capacity", "restarts", "consistentAt")
    row = {k: c.get(k) for k in keys}
    row["reasons"] = [str(r) for r in c.get("reasons") or []]
    row["role"], row["health"] = row["role"] or "unknown", row["health"] or "unknown"
    return row


def mirrorset_view(obj: Obj) -> dict[str, Any]:
    """A MirrorSet as the console's page shows it: the summary, conditions, per-shard copies (members in spec
    order), the operation in progress, the last one and the lost writes (oldest first)."""
    st = _status(obj)
    order = {m: i for i, m in enumerate(mirrorset_members(obj))}
    shards = []
    for s in sorted((s for s in st.get("shards") or [] if isinstance(s, Mapping)), key=lambda s: _num(s.get("shard"))):
        copies = [_copy_row(c) for c in s.get("copies") or [] if isinstance(c, Mapping)]
        copies.sort(key=lambda c: (c["role"] != "primary", order.get(str(c["shardSet"]), len(order))))
        shards.append({"shard": s.get("shard"), "primary": s.get("primary"), "copies": copies})
    lost = sorted((dict(w) for w in st.get("lostWrites") or [] if isinstance(w, Mapping)),
                  key=lambda w: (_num(w.get("term")), _num(w.get("shard"))))
    for w in lost:
        w["confirmed"] = bool(w.get("confirmed"))
    op = st.get("operation")
    return {**mirrorset_summary(obj), "spec": dict(_spec(obj)), "conditions": list(st.get("conditions") or []),
            "shards": shards, "operation": dict(op) if isinstance(op, Mapping) and op else None,
            "lastOperation": st.get("lastOperation") or None, "lostWrites": lost,
            "failovers": st.get("failovers"), "lastFailoverTime": st.get("lastFailoverTime"),
            "mirrors": list(st.get("mirrors") or [])}


def mirrorset_of(mirrorsets: Iterable[Obj], namespace: str, shardset: str) -> dict[str, Any] | None:
    """The MirrorSet ``namespace/shardset`` belongs to (as its source or a mirror) and its role there, or None."""
    key = f"{namespace}/{shardset}"
    for m in sorted(mirrorsets, key=lambda m: (str(_meta(m).get("namespace")), str(_meta(m).get("name")))):
        members = mirrorset_members(m)
        if key in members:
            st = _status(m)
            return {"namespace": _meta(m).get("namespace"), "name": _meta(m).get("name"),
                    "role": "source" if members[0] == key else "mirror",
                    "active": st.get("activeShardSet") == key, "phase": st.get("phase", "Pending"),
                    "term": st.get("term")}
    return None


def weaveplan_of(plans: Iterable[Obj], shardset: str) -> dict[str, Any] | None:
    """The WeavePlan in force for ``shardset`` (the oldest naming it, as the operator picks) shaped for the
    ShardSet page: phase, mode, the partitions most likely to split, the what-if reports and the splits made."""
    mine = [p for p in plans if refers_to(p, shardset) and not _meta(p).get("deletionTimestamp")]
    if not mine:
        return None
    plan = min(mine, key=lambda p: (str(_meta(p).get("creationTimestamp") or ""), str(_meta(p).get("name"))))
    st, spec = _status(plan), _spec(plan)
    parts = [{"id": r.get("id"), "shard": r.get("shard"), "bytes": r.get("bytes"), "loadRps": r.get("loadRps"),
              "probability": (r.get("forecast") or {}).get("probability"),
              "predictedTime": (r.get("forecast") or {}).get("predictedTime")}
             for r in st.get("partitions") or [] if isinstance(r, Mapping)]
    return {"name": _meta(plan).get("name"), "phase": st.get("phase", "Pending"), "mode": spec.get("mode", "weave"),
            "confidenceThreshold": spec.get("confidenceThreshold", 0.75),
            "lastForecastTime": st.get("lastForecastTime"), "partitions": parts[:5],
            "whatIf": [dict(w) for w in st.get("whatIf") or [] if isinstance(w, Mapping)],
            "splits": [dict(s) for s in st.get("splits") or [] if isinstance(s, Mapping)]}
