"""``chronoshard restore`` (create a Reversion, wait for its plan, print it) and ``chronoshard approve`` (show the
plan and its digest, then set ``spec.approve`` to that digest), through the Kubernetes API."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any

from chronoshard.shardnode.client.errors import ChronoshardError, Unavailable, api_message

GROUP, VERSION, PLURAL = "chronoshard.io", "v1alpha1", "reversions"
COMMANDS = ("restore", "approve")
POLL = 0.5
PLANNED = ("AwaitingApproval", "Running", "Completed", "Failed")
FINISHED = ("Completed", "Failed")

Table = Callable[[Sequence[str], Sequence[Sequence[object]]], str]


class ReversionMissing(ChronoshardError):
    """The Reversion named does not exist."""


class ReversionRefused(ChronoshardError):
    """The command cannot go on: not planned yet, already run, another spec under that name, or not confirmed."""


def rfc3339(text: str) -> str:
    """``--time`` as the CRD's pointInTime: RFC 3339 kept as given, unix seconds converted to UTC."""
    try:
        return datetime.fromtimestamp(float(text), UTC).isoformat().replace("+00:00", "Z")
    except ValueError:
        pass
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither RFC 3339 (2026-11-30T09:00:00Z) nor unix "
                                         "seconds") from None
    return text


def reversion_object(args: argparse.Namespace) -> dict[str, Any]:
    """The Reversion ``restore`` creates from its flags."""
    if args.key and (args.start is not None or args.end is not None):
        raise ReversionRefused("give --key or --start/--end, not both")
    if (args.start is None) != (args.end is None):
        raise ReversionRefused("a range needs both --start and --end")
    spec: dict[str, Any] = {"shardSetRef": {"name": args.shardset}, "tables": list(dict.fromkeys(args.table)),
                            "pointInTime": args.time, "overwriteLaterWrites": bool(args.overwrite_later)}
    if args.key:
        spec["keys"] = list(dict.fromkeys(args.key))
    if args.start is not None:
        spec["range"] = {"start": args.start, "end": args.end}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Reversion", "metadata": {"name": args.name}, "spec": spec}


def summary(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What ``restore`` and ``approve`` show of a Reversion (also their ``-o json``)."""
    spec, st = obj.get("spec") or {}, obj.get("status") or {}
    return {"name": obj["metadata"]["name"], "namespace": obj["metadata"].get("namespace"),
            "phase": st.get("phase", "Planning"), "shardSet": (spec.get("shardSetRef") or {}).get("name"),
            "pointInTime": spec.get("pointInTime"), "tables": spec.get("tables"), "keys": spec.get("keys"),
            "range": spec.get("range"), "incident": spec.get("incident"),
            "overwriteLaterWrites": spec.get("overwriteLaterWrites", False),
            "digest": st.get("digest"), "approved": spec.get("approve"), "plan": st.get("plan") or {},
            "progress": st.get("progress") or {},
            "conditions": [{k: c.get(k) for k in ("type", "status", "reason", "message")}
                           for c in st.get("conditions") or []]}


def render(s: Mapping[str, Any], table: Table) -> str:
    """Human-readable plan, digest, progress and conditions."""
    plan, prog = s["plan"], s["progress"]
    what = ", ".join(filter(None, [f"tables {', '.join(s['tables'])}" if s["tables"] else "every table",
                                   f"keys {', '.join(s['keys'])}" if s["keys"] else None,
                                   f"keys {s['range']['start']}..{s['range']['end']}" if s["range"] else None,
                                   f"the keys incident {s['incident'].get('id')} of shard "
                                   f"{s['incident'].get('shard')} changed" if s.get("incident") else None]))
    lines = [f"Reversion {s['namespace']}/{s['name']}: {s['phase']}",
             f"ShardSet:      {s['shardSet']}   ({what})",
             f"Point in time: {s['pointInTime']}   (later writes "
             f"{'overwritten' if s['overwriteLaterWrites'] else 'skipped'})"]
    if plan:
        lines += [f"Plan:          {plan.get('keys', 0)} key(s): restore {plan.get('restore', 0)}, create "
                  f"{plan.get('create', 0)}, delete {plan.get('delete', 0)} ({plan.get('bytes', 0)} bytes), "
                  f"{plan.get('conflicts', 0)} conflict(s)",
                  f"Digest:        {s['digest']}"]
    if prog and s["phase"] in ("Running", "Completed", "Failed"):
        lines.append(f"Progress:      {prog.get('summary')} (done {prog.get('done', 0)}, skipped "
                     f"{prog.get('skipped', 0)}, conflicts {prog.get('conflicts', 0)}, remaining "
                     f"{prog.get('remaining', 0)})")
    lines.append("")
    if plan.get("perShard"):
        lines.append(table(["shard", "restore", "create", "delete", "bytes", "conflicts", "digest"],
                           [[r.get("shard"), r.get("restore"), r.get("create"), r.get("delete"), r.get("bytes"),
                             r.get("conflicts"), str(r.get("digest", ""))[:12]] for r in plan["perShard"]]))
    if s["conditions"]:
        lines.append(table(["condition", "status", "reason", "message"],
                           [[c["type"], c["status"], c["reason"], c["message"]] for c in s["conditions"]]))
    if s["phase"] == "AwaitingApproval":
        lines.append(f"To run it: kubectl chronoshard approve {s['name']}" +
                     (f" -n {s['namespace']}" if s["namespace"] else "") + "\n")
    return "\n".join(lines)


class Reversions:
    """Reversion objects of one namespace through the Kubernetes API (blocking; the CLI calls it in a thread)."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.namespace = namespace

    def _call(self, what: str, fn: Callable[[], Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            obj = fn()
        except ApiException as exc:
            if exc.status == 404:
                raise ReversionMissing(f"Reversion {self.namespace}/{what} not found (is the Reversion CRD "
                                       "installed?)") from None
            message = api_message(exc)
            if exc.status in (400, 409, 422):
                raise ReversionRefused(f"Reversion {self.namespace}/{what}: {message}") from None
            raise Unavailable(f"kubernetes API ({self.namespace})", f"HTTP {exc.status}: {message}") from None
        if not isinstance(obj, dict):
            raise Unavailable(f"kubernetes API ({self.namespace})", "answered something other than a JSON object")
        return obj

    def get(self, name: str) -> dict[str, Any]:
        """The Reversion; ReversionMissing if absent."""
        return self._call(name, lambda: self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                                                PLURAL, name))

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create it; an existing one with the same spec is taken as it is (the command can be run again)."""
        name = obj["metadata"]["name"]
        try:
            return self._call(name, lambda: self.api.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, dict(obj), field_validation="Strict"))
        except ReversionRefused as exc:
            if "already exists" not in str(exc):
                raise
        existing = self.get(name)
        mine = dict(obj["spec"])
        theirs = {k: v for k, v in (existing.get("spec") or {}).items() if k != "approve"}
        if theirs != mine:
            raise ReversionRefused(f"Reversion {self.namespace}/{name} exists with another spec; pick another "
                                   "name or delete it first")
        return existing

    def approve(self, name: str, digest: str) -> dict[str, Any]:
        """Set ``spec.approve`` to ``digest``."""
        return self._call(name, lambda: self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": {"approve": digest}}))

    def wait(self, name: str, phases: Sequence[str], timeout: float) -> dict[str, Any]:
        """Poll until the phase is one of ``phases``; returns the object as last read (its phase may be another
        one when ``timeout`` passed)."""
        deadline = time.monotonic() + timeout
        while True:
            obj = self.get(name)
            if (obj.get("status") or {}).get("phase") in phases or time.monotonic() >= deadline:
                return obj
            time.sleep(POLL)


def restore(revs: Reversions, args: argparse.Namespace, out: IO[str], table: Table) -> int:
    """Create the Reversion, wait for its plan (``--wait`` seconds), print it; exit 1 if it failed, 4 if the plan
    did not come in time."""
    revs.create(reversion_object(args))
    obj = revs.wait(args.name, PLANNED, args.wait)
    return _show(obj, args, out, table, planned_in_time=(obj.get("status") or {}).get("phase") in PLANNED)


def approve(revs: Reversions, args: argparse.Namespace, out: IO[str], stdin: IO[bytes], table: Table) -> int:
    """Show the plan and digest, ask (unless ``--yes``), then approve exactly the digest that was shown."""
    obj = revs.get(args.name)
    st = obj.get("status") or {}
    phase, digest = st.get("phase", "Planning"), st.get("digest")
    if phase != "AwaitingApproval" or not digest:
        raise ReversionRefused(f"Reversion {args.name} is {phase}: only a planned Reversion awaiting approval can "
                               "be approved")
    if args.output != "json":
        out.write(render(summary(obj), table))
    if not args.yes:
        out.write(f"Approve digest {digest} and run this plan? [y/N] ")
        out.flush()
        answer = stdin.readline().decode("utf-8", "replace").strip().lower()
        if answer not in ("y", "yes"):
            raise ReversionRefused("not approved; nothing runs")
    revs.approve(args.name, digest)
    if args.output != "json":
        out.write(f"approved: Reversion {args.name} runs digest {digest[:12]}\n")
    if args.wait:
        obj = revs.wait(args.name, FINISHED, args.wait)
        return _show(obj, args, out, table, planned_in_time=True)
    if args.output == "json":
        out.write(json.dumps(summary(revs.get(args.name)), indent=2) + "\n")
    return 0


def _show(obj: Mapping[str, Any], args: argparse.Namespace, out: IO[str], table: Table,
          planned_in_time: bool) -> int:
    s = summary(obj)
    out.write(json.dumps(s, indent=2) + "\n" if args.output == "json" else render(s, table))
    if s["phase"] == "Failed":
        return 1
    return 0 if planned_in_time else 4


def add_parsers(sub: Any) -> None:
    """``restore`` and ``approve`` (``sub``: the CLI's subparsers)."""
    r = sub.add_parser("restore", help="create a Reversion (put keys back as they were at a time), wait for its "
                                       "plan and print it")
    r.add_argument("name", help="name of the Reversion to create")
    r.add_argument("--table", action="append", required=True, help="table to put back (repeatable)")
    r.add_argument("--key", action="append", default=[], help="only this key (repeatable)")
    r.add_argument("--start", default=None, help="first key of a range (with --end; both ends included)")
    r.add_argument("--end", default=None, help="last key of a range")
    r.add_argument("--time", required=True, type=rfc3339, help="the point to go back to: RFC 3339 or unix seconds")
    r.add_argument("--overwrite-later", action="store_true",
                   help="also overwrite keys written after the plan was made (default: skip and count them)")
    r.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the plan (default 60)")
    a = sub.add_parser("approve", help="show a Reversion's plan and digest, then approve that digest so it runs")
    a.add_argument("name")
    a.add_argument("--yes", action="store_true", help="do not ask")
    a.add_argument("--wait", type=float, default=0.0, help="then wait this many seconds for the run to finish")
