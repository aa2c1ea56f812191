"""``chronoshard anomalies`` (the incidents in the ShadowPolicies' status, through the Kubernetes API),
``chronoshard anomalies show ID --shard N --table T`` (the incident's keys, from that shard's shadow) and
``chronoshard whatif TABLE --file F`` (a batch checked by the owning shards' shadows without being applied).

The list reads the policies' ``status.anomalies``, not the shadows: it is already merged over the shards, says
what the policy did (``action``, ``reversion``), and needs only the Kubernetes API, like ``restore``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from chronoshard.shardnode.client.anomalies import BatchError, incident_keys, parse_batch, whatif
from chronoshard.shardnode.client.errors import Unavailable
from chronoshard.shardnode.client.history import HistoryClient

GROUP, VERSION = "chronoshard.io", "v1alpha1"
COMMANDS = ("anomalies", "whatif")
EXIT_WOULD_ALARM = 1

Table = Callable[[Sequence[str], Sequence[Sequence[object]]], str]


class AnomalyUsage(ValueError):
    """Bad arguments or batch file (exit 2)."""


def incident_rows(policies: Sequence[Mapping[str, Any]], shardset: str | None, table: str | None
                  ) -> list[dict[str, Any]]:
    """Every incident in the policies' status (those of ``shardset`` only, when given), newest first, each with
    its policy's name."""
    rows = []
    for p in policies:
        if shardset and ((p.get("spec") or {}).get("shardSetRef") or {}).get("name") != shardset:
            continue
        for row in (p.get("status") or {}).get("anomalies") or []:
            if table is None or row.get("table") == table:
                rows.append({"policy": p["metadata"]["name"], **row})
    rows.sort(key=lambda r: str(r.get("detectedTime") or r.get("startTime") or ""), reverse=True)
    return rows


def render_incidents(rows: Sequence[Mapping[str, Any]], table: Table) -> str:
    """The incidents as a table."""
    if not rows:
        return "no anomaly incidents\n"
    return table(["shard", "id", "table", "state", "kind", "start", "keys", "severity", "identities", "action",
                  "reversion"],
                 [[r.get("shard"), r.get("id"), r.get("table"), r.get("state"), r.get("kind"), r.get("startTime"),
                   r.get("keys"), f"{float(r.get('severity') or 0):.2f}", ",".join(r.get("identities") or []),
                   r.get("action"), r.get("reversion") or r.get("proposalError") or ""] for r in rows])


def render_whatif(table_name: str, n: int, doc: Mapping[str, Any], table: Table) -> str:
    """The merged what-if answer."""
    c = doc["counts"]
    verdict = "WOULD ALARM" if doc["wouldAlarm"] else "would not alarm"
    threshold = doc.get("threshold")
    lines = [f"What-if on {table_name}: {n} change(s) over {len(doc['perShard'])} shard(s), nothing applied",
             f"Changes:  create {c['create']}, overwrite {c['overwrite']}, delete {c['delete']}, unchanged "
             f"{c['unchanged']} ({doc['bytes']} bytes)",
             f"Score:    {doc['score']:.2f}, severity {doc['severity']:.2f}"
             + (f" (threshold {float(threshold):.2f})" if isinstance(threshold, int | float) else "")
             + f": {verdict}", ""]
    if doc.get("drivers"):
        lines.append(table(["feature", "value", "usual", "weight"],
                           [[d.get("feature"), d.get("value"), d.get("usual"), d.get("weight")]
                            for d in doc["drivers"]]))
    lines.append(table(["shard", "changes", "score", "severity", "alarm"],
                       [[r["shard"], r["changes"], f"{r['score']:.2f}", f"{r['severity']:.2f}",
                         "yes" if r["wouldAlarm"] else "no"] for r in doc["perShard"]]))
    return "\n".join(lines)


def list_policies(api_client: Any, namespace: str) -> list[dict[str, Any]]:
    """The namespace's ShadowPolicies (blocking)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        listing = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
            GROUP, VERSION, namespace, "shadowpolicies")
    except ApiException as exc:
        raise Unavailable(f"kubernetes API ({namespace})", f"HTTP {exc.status} {exc.reason}") from None
    if not isinstance(listing, dict):
        raise Unavailable(f"kubernetes API ({namespace})", "answered something other than a JSON object")
    return list(listing.get("items") or [])


def list_incidents(args: argparse.Namespace, policies: Sequence[Mapping[str, Any]], out: IO[str],
                   table: Table) -> int:
    """``chronoshard anomalies``."""
    rows = incident_rows(policies, args.shardset, args.table)
    out.write(json.dumps(rows, indent=2) + "\n" if args.output == "json" else render_incidents(rows, table))
    return 0


def read_batch(path: str, stdin: IO[bytes]) -> list[dict[str, str]]:
    """The batch file (``-``: standard input), checked."""
    try:
        raw = stdin.read() if path == "-" else Path(path).read_bytes()
        return parse_batch(json.loads(raw))
    except OSError as exc:
        raise AnomalyUsage(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:  # BatchError too
        raise AnomalyUsage(f"{path}: {exc}") from None


async def run(args: argparse.Namespace, client: HistoryClient | None, out: IO[str], stdin: IO[bytes],
              table: Table) -> int:
    """``anomalies show`` and ``whatif`` through the shadows (``anomalies`` without ``show`` is list_incidents)."""
    if client is None:
        raise AnomalyUsage("this command goes to the shards' shadows")
    as_json = args.output == "json"
    if args.command == "whatif":
        changes = read_batch(args.file, stdin)
        async with client as h:
            try:
                doc = await whatif(h, args.table, changes, args.identity)
            except BatchError as exc:
                raise Unavailable(args.table, str(exc)) from None
        out.write(json.dumps(doc, indent=2) + "\n" if as_json else render_whatif(args.table, len(changes), doc, table))
        return EXIT_WOULD_ALARM if doc["wouldAlarm"] else 0
    async with client as h:
        keys = [k async for k in incident_keys(h, args.shard, args.table, args.id, limit=args.limit)]
    if as_json:
        out.write(json.dumps({"shard": args.shard, "table": args.table, "id": args.id, "keys": keys}, indent=2) + "\n")
    else:
        out.write(table(["key", "first-lsn", "last-lsn", "before-lsn", "bytes"],
                        [[k.get("key"), k.get("firstLsn"), k.get("lastLsn"), k.get("beforeLsn"), k.get("bytes")]
                         for k in keys]))
    return 0


def check(args: argparse.Namespace) -> None:
    """``anomalies [show ID]``: the words after the command; fills ``args.id`` for show."""
    if args.command != "anomalies":
        return
    words = list(args.what or [])
    args.id = None
    if not words:
        return
    if words[0] != "show" or len(words) != 2:
        raise AnomalyUsage("usage: anomalies [--table T]  or  anomalies show ID --shard N --table T")
    if args.shard is None or args.table is None:
        raise AnomalyUsage("anomalies show ID needs --shard N (the shard that detected it: ids are unique per "
                           "shard) and --table T")
    args.id = words[1]


def add_parsers(sub: Any) -> None:
    """The two sub-commands (``sub``: the CLI's subparsers)."""
    an = sub.add_parser("anomalies", help="anomaly incidents of the ShadowPolicies (show ID: an incident's keys)")
    an.add_argument("what", nargs="*", metavar="show ID", help="show ID lists the keys of incident ID")
    an.add_argument("--table", help="only this table's incidents (show: the incident's table)")
    an.add_argument("--shard", type=int, help="show: the shard whose shadow detected the incident")
    an.add_argument("--limit", type=int, default=None, help="show: at most this many keys")
    wi = sub.add_parser("whatif", help="what a batch of puts and deletes would do and score, without applying it; "
                                       "exit 1 when it would alarm")
    wi.add_argument("table")
    wi.add_argument("--file", required=True, help='{"changes": [...]} (value base64 or text); - for stdin')
    wi.add_argument("--identity", default=None, help="score the batch as written by this user")
