"""``chronoshard weave status|whatif PLAN`` (a WeavePlan's forecasts, weaves and what-if report, read from the
Kubernetes API) and ``chronoshard weave ls PLAN`` / ``weave state REF --plan PLAN`` (woven snapshots, read from
the shards' weavers at port 7404; docs/weaving.md)."""

from __future__ import annotations

import argparse
import base64
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import IO, Any

from chronoshard.shardnode.client.errors import ChronoshardError, Unavailable, api_message
from chronoshard.shardnode.client.weave import WeaveClient, parse_ref, unix_time

GROUP, VERSION, PLURAL = "chronoshard.io", "v1alpha1", "weaveplans"
COMMANDS = ("weave",)

Table = Callable[[Sequence[str], Sequence[Sequence[object]]], str]
ClientFactory = Callable[[str, int], WeaveClient]  # (shardset, shards) → a client of its weavers


class WeavePlanMissing(ChronoshardError):
    """The WeavePlan (or its ShardSet) named does not exist."""


class WeaveUsage(ChronoshardError):
    """A weave command was given arguments it cannot use."""


# --- pure: showing a plan ----------------------------------------------------------------------------------


def _pct(p: Any) -> str:
    return f"{float(p):.2f}" if isinstance(p, int | float) else "-"


def _size(n: Any) -> str:
    if not isinstance(n, int | float):
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def partition_rows(status: Mapping[str, Any]) -> list[list[object]]:
    """``weave status``: one row per partition (largest forecast first)."""
    rows: list[list[object]] = []
    for p in status.get("partitions") or []:
        f = p.get("forecast") or {}
        rows.append([p.get("id"), p.get("shard"), _size(p.get("bytes")), f"{float(p.get('loadRps') or 0):.1f}",
                     _size(p.get("growthBytesPerHour")) + "/h", _pct(f.get("probability")),
                     f.get("predictedTime") or "-", f.get("reason") or "-", f.get("model") or "-"])
    return rows


def weave_rows(status: Mapping[str, Any]) -> list[list[object]]:
    """``weave status``: one row per weave."""
    return [[w.get("id"), w.get("partition"), w.get("shard"), w.get("splitKey"), _pct(w.get("confidence")),
             w.get("predictedTime") or "-", w.get("snapshots"), _size(w.get("bytes"))]
            for w in status.get("weaves") or []]


def render_status(obj: Mapping[str, Any], table: Table) -> str:
    """Human-readable ``weave status PLAN``."""
    meta, spec, st = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    lines = [f"WeavePlan {meta.get('namespace')}/{meta['name']}: {st.get('phase', 'Pending')}",
             f"ShardSet:        {(spec.get('shardSetRef') or {}).get('name')}",
             f"Mode:            {spec.get('mode', 'weave')}",
             f"Last forecast:   {st.get('lastForecastTime') or '-'}", ""]
    lines.append(table(["partition", "shard", "size", "load/s", "growth", "p(split)", "predicted", "reason", "model"],
                       partition_rows(st)))
    if st.get("weaves"):
        lines.append(table(["weave", "partition", "shard", "split key", "confidence", "predicted", "points", "size"],
                           weave_rows(st)))
    if st.get("splits"):
        lines.append(table(["reshard", "partition", "split key", "created", "phase"],
                           [[s.get("reshard"), s.get("partition"), s.get("splitKey"), s.get("time"), s.get("phase")]
                            for s in st["splits"]]))
    if st.get("conditions"):
        lines.append(table(["condition", "status", "reason", "message"],
                           [[c.get("type"), c.get("status"), c.get("reason"), c.get("message")]
                            for c in st["conditions"]]))
    return "\n".join(lines)


def render_whatif(obj: Mapping[str, Any], table: Table) -> str:
    """Human-readable ``weave whatif PLAN``: per predicted split, the shards before and after, what moves."""
    reports = (obj.get("status") or {}).get("whatIf") or []
    if not reports:
        return f"WeavePlan {obj['metadata']['name']}: no predicted split above its confidence threshold\n"
    out: list[str] = []
    for r in reports:
        f, place = r.get("forecast") or {}, r.get("placement") or {}
        size = f.get("sizeAtWindowEnd") or {}
        out.append(f"Partition {r.get('partition')} split at {r.get('splitKey')}: probability "
                   f"{_pct(f.get('probability'))} by {f.get('predictedTime') or '-'}; size at the window's end "
                   f"{_size(size.get('point'))} (80%: {_size(size.get('low'))} .. {_size(size.get('high'))})")
        out.append(f"Lower half on shard {place.get('lowerHalfShard')}, upper half on shard "
                   f"{place.get('upperHalfShard')}; {_size(r.get('bytesToMove'))} to move, expected cutover pause "
                   f"{r.get('expectedCutoverPauseMs')} ms")
        out.append(table(["shard", "bytes before", "bytes after", "load before", "load after"],
                         [[s.get("shard"), _size(s.get("bytesBefore")), _size(s.get("bytesAfter")),
                           s.get("loadBefore"), s.get("loadAfter")] for s in r.get("shards") or []]))
    return "\n".join(out)


def woven_rows(found: Sequence[Mapping[str, Any]]) -> list[list[object]]:
    """``weave ls``: one row per woven snapshot."""
    return [[w.get("ref"), w.get("weave"), w.get("partition"), w.get("half"), ",".join(w.get("range") or []),
             w.get("pointTime"), w.get("lsn"), w.get("kind"), w.get("rows"), _size(w.get("bytes")),
             _pct(w.get("confidence"))] for w in found]


# --- the Kubernetes API ----------------------------------------------------------------------------------


class WeavePlans:
    """WeavePlan objects of one namespace and their ShardSets (blocking; run in a thread)."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.namespace = namespace

    def _get(self, plural: str, kind: str, name: str) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            obj = self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, name)
        except ApiException as exc:
            if exc.status == 404:
                raise WeavePlanMissing(f"{kind} {self.namespace}/{name} not found ({api_message(exc)})") from None
            raise Unavailable(f"kubernetes API ({self.namespace})", f"HTTP {exc.status}: {api_message(exc)}") from None
        if not isinstance(obj, dict):
            raise Unavailable(f"kubernetes API ({self.namespace})", "answered something other than a JSON object")
        return obj

    def get(self, name: str) -> dict[str, Any]:
        """The WeavePlan; WeavePlanMissing if absent."""
        return self._get(PLURAL, "WeavePlan", name)

    def target(self, name: str) -> tuple[str, int]:
        """The plan's ShardSet and its number of shards."""
        plan = self.get(name)
        shardset = str(((plan.get("spec") or {}).get("shardSetRef") or {}).get("name") or "")
        shards = (self._get("shardsets", "ShardSet", shardset).get("spec") or {}).get("shards")
        return shardset, int(shards) if isinstance(shards, int) else 0


# --- the commands ------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, plans: WeavePlans, client: ClientFactory, out: IO[str], table: Table,
              in_thread: Callable[..., Awaitable[Any]]) -> int:
    """Execute ``weave status|whatif|ls|state``; ``in_thread`` runs the blocking API calls."""
    as_json = args.output == "json"
    cmd = args.weave_command
    if cmd in ("status", "whatif"):
        obj = await in_thread(plans.get, args.plan)
        if as_json:
            body = obj if cmd == "status" else (obj.get("status") or {}).get("whatIf") or []
            out.write(json.dumps(body, indent=2) + "\n")
        else:
            out.write((render_status if cmd == "status" else render_whatif)(obj, table))
        return 0
    plan = args.plan if cmd == "ls" else args.plan_name
    if not plan:
        raise WeaveUsage("weave state needs --plan PLAN: the WeavePlan whose ShardSet's weavers hold the snapshot")
    shardset, shards = await in_thread(plans.target, plan)
    async with client(shardset, shards) as w:
        if cmd == "ls":
            at = unix_time(args.at) if args.at is not None else None
            found = await w.woven(args.partition, at, args.confidence)
            out.write(json.dumps(found, indent=2) + "\n" if as_json else table(
                ["ref", "weave", "partition", "half", "range", "point time", "lsn", "kind", "rows", "size",
                 "confidence"], woven_rows(found)))
            return 0
        try:
            shard, point = parse_ref(args.ref)
        except ValueError as exc:
            raise WeaveUsage(str(exc)) from None
        page = await w.state(shard, point, table=args.table, after=args.after, limit=args.limit, values=args.values)
    if as_json:
        out.write(json.dumps(page, indent=2) + "\n")
    else:
        rows = [[e.get("table"), e.get("key"), e.get("lsn"), e.get("op"), e.get("keyVersion")]
                + ([_value(e.get("value"))] if args.values else []) for e in page.get("entries") or []]
        cols = ["table", "key", "lsn", "op", "key-version"] + (["value"] if args.values else [])
        out.write(table(cols, rows) + (f"next: --after {page['next']}\n" if page.get("next") else ""))
    return 0


def _value(b64: Any) -> str:
    if not isinstance(b64, str):
        return "-"
    raw = base64.b64decode(b64)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return f"<{len(raw)} bytes>"


def add_parsers(sub: Any) -> None:
    """``weave status|whatif|ls|state`` (``sub``: the CLI's subparsers)."""
    wv = sub.add_parser("weave", help="WeavePlans: split forecasts, weaves, what-if, woven snapshots")
    wsub = wv.add_subparsers(dest="weave_command", required=True)
    st = wsub.add_parser("status", help="a WeavePlan's partitions, forecasts, weaves, splits and conditions")
    st.add_argument("plan", metavar="PLAN")
    wi = wsub.add_parser("whatif", help="per predicted split: shards before and after, data to move, cutover pause")
    wi.add_argument("plan", metavar="PLAN")
    ls = wsub.add_parser("ls", help="woven snapshots of a WeavePlan's ShardSet, from every shard's weaver")
    ls.add_argument("plan", metavar="PLAN")
    ls.add_argument("--partition", type=int, default=None, help="the partition forecast to split")
    ls.add_argument("--at", default=None, metavar="TIME",
                    help="newest point at or before this time (RFC 3339 or unix seconds)")
    ls.add_argument("--confidence", type=float, default=None, help="only weaves at least this likely (0..1)")
    state = wsub.add_parser("state", help="the keys of a woven snapshot's half at its point")
    state.add_argument("ref", metavar="REF", help="<shard>:<id> as weave ls prints it")
    state.add_argument("--plan", dest="plan_name", default=None, help="the WeavePlan (its ShardSet's weavers)")
    state.add_argument("--table", default=None, help="only this table")
    state.add_argument("--after", default=None, help="the page after this key (as the previous page's next)")
    state.add_argument("--limit", type=int, default=100, help="at most this many keys (default 100)")
    state.add_argument("--values", action="store_true", help="with the values (needs data read access)")
    for p in (st, wi, ls, state):
        p.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="namespace")
        p.add_argument("-o", "--output", choices=["table", "json"], default=argparse.SUPPRESS, help="output format")
