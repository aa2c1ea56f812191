"""``chronoshard history|at|diff``: what the shards' shadows say about the past, as tables or JSON."""

from __future__ import annotations

import argparse
import base64
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from chronoshard.shardnode.client.history import HistoryClient

COMMANDS = ("history", "at", "diff")


def when(t: Any) -> str:
    """Unix seconds as RFC 3339 UTC (milliseconds), ``-`` when unknown."""
    if isinstance(t, bool) or not isinstance(t, int | float):
        return "-"
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def history_rows(versions: Sequence[Mapping[str, Any]]) -> list[list[object]]:
    """One row per version: LSN, time, op, size, key version."""
    return [[v.get("lsn"), when(v.get("time")), v.get("op"), v.get("size"), v.get("keyVersion")] for v in versions]


def at_summary(table: str, doc: Mapping[str, Any]) -> str:
    """One line: which version a point resolved to, and whether it is exact (hot tier) or a snapshot's."""
    exact = "exact" if doc.get("exact", True) else "as of the nearest snapshot before it (not exact)"
    return (f"{table}/{doc.get('key')}: lsn {doc.get('lsn')} written {when(doc.get('time'))} "
            f"({doc.get('op', 'put')}, {doc.get('size')} bytes, {exact})\n")


def diff_rows(entries: Sequence[Mapping[str, Any]]) -> list[list[object]]:
    """One row per changed key: key, change, sizes and LSNs before/after, shard."""
    return [[e.get("key"), e.get("change"), e.get("sizeBefore"), e.get("sizeAfter"), e.get("lsnBefore"),
             e.get("lsnAfter"), e.get("shard")] for e in entries]


def point_in_time(text: str) -> str:
    """A ``--time`` value as the shadows take it: RFC 3339 kept, unix seconds kept; anything else is refused."""
    try:
        float(text)
        return text
    except ValueError:
        pass
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither RFC 3339 (2026-11-30T09:00:00Z) nor unix "
                                         "seconds") from None
    return text


async def run(args: argparse.Namespace, client: HistoryClient, out: IO[str], bout: IO[bytes],
              table: Callable[[Sequence[str], Sequence[Sequence[object]]], str]) -> None:
    """Execute ``history``, ``at`` or ``diff`` through ``client``; ``table`` formats rows as the CLI does."""
    as_json = args.output == "json"
    async with client as h:
        if args.command == "history":
            versions = [v async for v in h.history(args.table, args.key, limit=args.limit)]
            if as_json:
                out.write(json.dumps({"table": args.table, "key": args.key, "versions": versions}, indent=2) + "\n")
            else:
                out.write(table(["lsn", "time", "op", "size", "key-version"], history_rows(versions)))
        elif args.command == "at":
            doc = await h.at(args.table, args.key, time=args.time, lsn=args.lsn)
            _write_at(args, doc, out, bout, as_json)
        else:
            entries = [e async for e in h.diff(args.table, start=args.start, end=args.end, limit=args.limit)]
            if as_json:
                out.write(json.dumps({"table": args.table, "from": args.start, "to": args.end, "entries": entries},
                                     indent=2) + "\n")
            else:
                out.write(table(["key", "change", "size-before", "size-after", "lsn-before", "lsn-after", "shard"],
                                diff_rows(entries)))


def _write_at(args: argparse.Namespace, doc: Mapping[str, Any], out: IO[str], bout: IO[bytes],
              as_json: bool) -> None:
    if as_json:
        out.write(json.dumps({"table": args.table, **doc}) + "\n")
        return
    value = base64.b64decode(doc["value"]) if doc.get("value") is not None else b""
    if args.out:
        Path(args.out).write_bytes(value)
    if args.raw:
        out.flush()
        bout.write(value)
        bout.flush()
        return
    out.write(at_summary(args.table, doc))


def add_parsers(sub: Any) -> None:
    """The three sub-commands (``sub``: the CLI's subparsers)."""
    hist = sub.add_parser("history", help="every stored version of a key, from its shard's shadow")
    hist.add_argument("table")
    hist.add_argument("key")
    hist.add_argument("--limit", type=int, default=None, help="at most this many versions")
    at = sub.add_parser("at", help="a key as it was at a time or LSN, from its shard's shadow")
    at.add_argument("table")
    at.add_argument("key")
    point = at.add_mutually_exclusive_group(required=True)
    point.add_argument("--time", type=point_in_time, help="RFC 3339 (2026-11-30T09:00:00Z) or unix seconds")
    point.add_argument("--lsn", type=int, help="the shard's log sequence number")
    at.add_argument("--out", help="also write the value to this file")
    at.add_argument("--raw", action="store_true", help="print the value's bytes instead of the summary")
    diff = sub.add_parser("diff", help="keys of a table created, changed or deleted between two times")
    diff.add_argument("table")
    diff.add_argument("--from", dest="start", required=True, type=point_in_time, help="RFC 3339 or unix seconds")
    diff.add_argument("--to", dest="end", required=True, type=point_in_time, help="RFC 3339 or unix seconds")
    diff.add_argument("--limit", type=int, default=None, help="at most this many keys")
