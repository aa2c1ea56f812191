"""``chronoshard mirror status|switchover|failback``: a MirrorSet's copies and operations, and the one-shot requests
(annotations ``chronoshard.io/switchover-to`` and ``chronoshard.io/failback``) the MirrorSet controller acts on
once per distinct value (docs/mirroring.md), through the Kubernetes API."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any

from chronoshard.shardnode.client.errors import ChronoshardError, Unavailable, api_message

GROUP, VERSION, PLURAL = "chronoshard.io", "v1alpha1", "mirrorsets"
COMMANDS = ("mirror",)
SWITCHOVER_ANNOTATION = "chronoshard.io/switchover-to"
FAILBACK_ANNOTATION = "chronoshard.io/failback"
POLL = 0.5
PATCH_ATTEMPTS = 5  # a conditional patch lost to a concurrent status write is tried again on a fresh read
EXIT_ABORTED, EXIT_TIMEOUT = 1, 4

Table = Callable[[Sequence[str], Sequence[Sequence[object]]], str]


class MirrorSetMissing(ChronoshardError):
    """The MirrorSet named does not exist."""


class MirrorRefused(ChronoshardError):
    """The request cannot be made: not a member, already active, or an operation in progress."""


# --- pure: reading the object ------------------------------------------------------------------------


def members(obj: Mapping[str, Any]) -> list[str]:
    """Every member ShardSet as ``namespace/name``: the source first, then the mirrors in spec order."""
    ns = obj["metadata"].get("namespace") or ""
    spec = obj.get("spec") or {}
    out = [f"{ns}/{(spec.get('sourceRef') or {}).get('name')}"]
    for m in spec.get("mirrors") or []:
        out.append(f"{m.get('namespace') or ns}/{(m.get('shardSetRef') or {}).get('name')}")
    return out


def qualify(target: str, namespace: str) -> str:
    """``name`` (in ``namespace``) or ``namespace/name`` as ``namespace/name``."""
    return target if "/" in target else f"{namespace}/{target}"


def _in_progress(st: Mapping[str, Any]) -> str | None:
    op = st.get("operation")
    if not op:
        return None
    return (f"a {op.get('kind', 'operation')} from {op.get('from', '?')} to {op.get('to', '?')} is in progress "
            f"(step {op.get('step', '?')}, term {op.get('term', '?')}); wait for it to finish")


def check_switchover(obj: Mapping[str, Any], target: str) -> str:
    """The target as ``namespace/name`` if a switchover to it can be asked for; MirrorRefused saying why not."""
    name, ns = obj["metadata"]["name"], obj["metadata"].get("namespace") or ""
    st = obj.get("status") or {}
    full = qualify(target, ns)
    if full not in members(obj):
        raise MirrorRefused(f"{target} is not a member of MirrorSet {ns}/{name} (members: "
                            f"{', '.join(members(obj))})")
    busy = _in_progress(st)
    if busy:
        raise MirrorRefused(f"MirrorSet {ns}/{name}: {busy}")
    if st.get("activeShardSet") == full:
        raise MirrorRefused(f"{full} is already the active ShardSet of MirrorSet {ns}/{name}")
    return full


def switchover_value(obj: Mapping[str, Any], target: str, now: datetime | None = None) -> str:
    """The annotation value asking for a switchover to ``target`` (checked by ``check_switchover``):
    ``namespace/name@<time>``. The controller handles a value once (``lastSwitchoverRequest``) and reads only the
    part before ``@``, so every request is new, even for the member asked for last time."""
    return f"{check_switchover(obj, target)}@{failback_token(now)}"


def check_failback(obj: Mapping[str, Any]) -> str:
    """The source as ``namespace/name`` if a failback can be asked for; MirrorRefused saying why not."""
    name, ns = obj["metadata"]["name"], obj["metadata"].get("namespace") or ""
    st = obj.get("status") or {}
    busy = _in_progress(st)
    if busy:
        raise MirrorRefused(f"MirrorSet {ns}/{name}: {busy}")
    source = members(obj)[0]
    if st.get("activeShardSet") in (None, "", source):
        raise MirrorRefused(f"MirrorSet {ns}/{name} is already active on its source {source}: nothing to fail "
                            "back")
    return source


def request_outcome(obj: Mapping[str, Any], kind: str, value: str,
                    before: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The answer to our request, or None while it is not done.

    The controller records the value it handled (``lastSwitchoverRequest``/``lastFailbackRequest``) in the same
    status write that starts the operation. So, once our value is recorded and no operation is in progress: a new
    ``lastOperation`` (not ``before``, the one seen before asking) is the operation's outcome, and an unchanged one
    means the controller refused the request (outcome ``Refused``; its events say why).
    """
    st = obj.get("status") or {}
    handled = st.get("lastSwitchoverRequest" if kind == "switchover" else "lastFailbackRequest")
    if handled != value or st.get("operation"):
        return None
    last = st.get("lastOperation")
    if last and last != before:
        return dict(last)
    return {"kind": kind, "outcome": "Refused",
            "message": "the MirrorSet controller took the request but started no operation; its events say why "
                       "(kubectl describe mirrorset)"}


def failback_token(now: datetime | None = None) -> str:
    """A fresh value for the failback annotation: the UTC time to the microsecond."""
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- pure: showing it ----------------------------------------------------------------------------------


def summary(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What ``mirror status -o json`` prints: name, members, mode and the whole status."""
    spec = obj.get("spec") or {}
    return {"name": obj["metadata"]["name"], "namespace": obj["metadata"].get("namespace"),
            "members": members(obj), "mode": (spec.get("replication") or {}).get("mode", "async"),
            "failover": spec.get("failover") or {}, "status": obj.get("status") or {}}


def _num(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def _copy_row(shard: Any, c: Mapping[str, Any]) -> list[object]:
    return [shard, c.get("shardSet"), c.get("role", "unknown"), c.get("health", "unknown"), c.get("state", "-"),
            _num(c.get("appliedLSN")), _num(c.get("lagLSN")), _num(c.get("lagSeconds"), "{:.2f}"),
            "; ".join(c.get("reasons") or [])]


def _operation_lines(st: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    op = st.get("operation")
    if op:
        out.append(f"Operation:       {op.get('kind')} {op.get('from')} -> {op.get('to')}, step {op.get('step')}, "
                   f"term {op.get('term')}, since {op.get('startedAt')}"
                   + (f" ({op['reason']})" if op.get("reason") else ""))
    else:
        out.append("Operation:       none in progress")
    last = st.get("lastOperation")
    if last:
        held = last.get("heldSeconds")
        out.append(f"Last operation:  {last.get('kind')} {last.get('from')} -> {last.get('to')}, term "
                   f"{last.get('term')}: {last.get('outcome')} at {last.get('finishedAt')}"
                   + (f", writes held {held:.1f}s" if isinstance(held, int | float) else "")
                   + (f" ({last['message']})" if last.get("message") else ""))
    if st.get("failovers"):
        out.append(f"Failovers:       {st['failovers']} (last {st.get('lastFailoverTime', '-')})")
    return out


def render(s: Mapping[str, Any], table: Table) -> str:
    """Human-readable ``mirror status``: term, active, phase, copies per shard, lost writes, operations."""
    st = s["status"]
    lines = [f"MirrorSet {s['namespace']}/{s['name']}: {st.get('phase', 'Pending')}",
             f"Term:            {_num(st.get('term'))}",
             f"Active:          {st.get('activeShardSet') or '-'}   (source {s['members'][0]}, {s['mode']})",
             *_operation_lines(st), ""]
    rows = [_copy_row(sh.get("shard"), c) for sh in st.get("shards") or [] for c in sh.get("copies") or []]
    if rows:
        lines.append(table(["shard", "copy", "role", "health", "state", "applied-lsn", "lag-lsn", "lag-s",
                            "reasons"], rows))
    else:
        lines.append("No copies reported yet.\n")
    lost = st.get("lostWrites") or []
    if lost:
        lines.append("Lost writes (async failover):\n" + table(
            ["shard", "shardset", "from-lsn", "to-lsn", "count", "confirmed", "term", "time"],
            [[w.get("shard"), w.get("shardSet"), w.get("fromLSN"), w.get("toLSN"), w.get("count"),
              "yes" if w.get("confirmed") else "no", w.get("term"), w.get("time")] for w in lost]))
    if st.get("conditions"):
        lines.append(table(["condition", "status", "reason", "message"],
                           [[c.get("type"), c.get("status"), c.get("reason"), c.get("message")]
                            for c in st["conditions"]]))
    return "\n".join(lines)


# --- the Kubernetes API ----------------------------------------------------------------------------


class MirrorSets:
    """MirrorSet objects of one namespace through the Kubernetes API (blocking; the CLI calls it in a thread)."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.namespace = namespace

    def _call(self, name: str, fn: Callable[[], Any]) -> dict[str, Any] | None:
        """The object; None on 409 (a conditional patch lost a race); errors as the CLI's exceptions."""
        from kubernetes.client.exceptions import ApiException

        try:
            obj = fn()
        except ApiException as exc:
            if exc.status == 404:
                raise MirrorSetMissing(f"MirrorSet {self.namespace}/{name} not found (is the MirrorSet CRD "
                                       "installed?)") from None
            if exc.status == 409:
                return None
            message = api_message(exc)
            if exc.status in (400, 422):
                raise MirrorRefused(f"MirrorSet {self.namespace}/{name}: {message}") from None
            raise Unavailable(f"kubernetes API ({self.namespace})", f"HTTP {exc.status}: {message}") from None
        if not isinstance(obj, dict):
            raise Unavailable(f"kubernetes API ({self.namespace})", "answered something other than a JSON object")
        return obj

    def get(self, name: str) -> dict[str, Any]:
        """The MirrorSet; MirrorSetMissing if absent."""
        obj = self._call(name, lambda: self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                                               PLURAL, name))
        assert obj is not None  # a GET never answers 409
        return obj

    def annotate(self, name: str, value_of: Callable[[dict[str, Any]], str],
                 annotation: str) -> tuple[dict[str, Any], str]:
        """Set ``annotation`` to ``value_of(object)`` (which refuses what cannot be asked) with a merge patch,
        conditional on the resourceVersion that was checked (so no operation can have started in between);
        returns the object read before the patch and the value set."""
        for _ in range(PATCH_ATTEMPTS):
            obj = self.get(name)
            value = value_of(obj)
            body = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"],
                                 "annotations": {annotation: value}}}
            if self._call(name, lambda b=body: self.api.patch_namespaced_custom_object(  # type: ignore[misc]
                    GROUP, VERSION, self.namespace, PLURAL, name, b)) is not None:
                return obj, value
        raise Unavailable(f"MirrorSet {self.namespace}/{name}", f"changed on every one of {PATCH_ATTEMPTS} attempts "
                          "to annotate it; try again")

    def wait(self, name: str, kind: str, value: str, before: Mapping[str, Any] | None,
             timeout: float) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Poll until our request's operation finished (or ``timeout``): the object and the outcome (None if not
        done in time)."""
        deadline = time.monotonic() + timeout
        while True:
            obj = self.get(name)
            done = request_outcome(obj, kind, value, before)
            if done is not None or time.monotonic() >= deadline:
                return obj, done
            time.sleep(POLL)


# --- the commands ----------------------------------------------------------------------------------------


def run(sets: MirrorSets, args: argparse.Namespace, out: IO[str], table: Table) -> int:
    """Execute ``mirror status|switchover|failback``; returns the exit code."""
    if args.mirror_command == "status":
        s = summary(sets.get(args.name))
        out.write(json.dumps(s, indent=2) + "\n" if args.output == "json" else render(s, table))
        return 0
    if args.mirror_command == "switchover":
        kind, annotation = "switchover", SWITCHOVER_ANNOTATION
        before, value = sets.annotate(args.name, lambda o: switchover_value(o, args.to), annotation)
        target = check_switchover(before, args.to)
    else:
        kind, annotation = "failback", FAILBACK_ANNOTATION
        token = failback_token()
        before, value = sets.annotate(args.name, lambda o: check_failback(o) and token, annotation)
        target = check_failback(before)
    last = (before.get("status") or {}).get("lastOperation")
    if args.output != "json":
        out.write(f"requested: {kind} of MirrorSet {sets.namespace}/{args.name} to {target} "
                  f"({annotation}={value})\n")
    if not args.wait:
        if args.output == "json":
            out.write(json.dumps({"requested": kind, "to": target, "annotation": annotation, "value": value}) + "\n")
        return 0
    obj, done = sets.wait(args.name, kind, value, last, args.wait_timeout)
    return _report(obj, done, kind, args, out, table)


def _report(obj: Mapping[str, Any], done: Mapping[str, Any] | None, kind: str, args: argparse.Namespace,
            out: IO[str], table: Table) -> int:
    if args.output == "json":
        out.write(json.dumps({"done": done is not None, "outcome": (done or {}).get("outcome"),
                              "lastOperation": done, **summary(obj)}, indent=2) + "\n")
    elif done is None:
        out.write(f"not finished within {args.wait_timeout:g}s; the {kind} goes on (chronoshard mirror status "
                  f"{args.name})\n" + render(summary(obj), table))
    elif done.get("outcome") == "Refused":
        out.write(f"{kind} Refused: {done['message']}\n")
    else:
        out.write(f"{kind} {done.get('outcome')}: {done.get('from')} -> {done.get('to')}, term {done.get('term')}"
                  + (f" ({done['message']})" if done.get("message") else "") + "\n")
    if done is None:
        return EXIT_TIMEOUT
    return 0 if done.get("outcome") == "Succeeded" else EXIT_ABORTED


def add_parsers(sub: Any) -> None:
    """``mirror status|switchover|failback`` (``sub``: the CLI's subparsers)."""
    m = sub.add_parser("mirror", help="a MirrorSet: status, planned switchover, failback to the source")
    msub = m.add_subparsers(dest="mirror_command", required=True)
    st = msub.add_parser("status", help="term, active ShardSet, every shard's copies, lost writes, operations")
    st.add_argument("name", help="the MirrorSet")
    sw = msub.add_parser("switchover", help="planned switchover to a member ShardSet (nothing is lost)")
    sw.add_argument("name", help="the MirrorSet")
    sw.add_argument("--to", required=True, metavar="SHARDSET", help="the member to make primary: NAME or NS/NAME")
    fb = msub.add_parser("failback", help="switch back to the MirrorSet's source ShardSet")
    fb.add_argument("name", help="the MirrorSet")
    for p in (sw, fb):
        p.add_argument("--wait", action="store_true", help="follow the status until the operation finished")
        p.add_argument("--timeout", dest="wait_timeout", type=float, default=120.0,
                       help="with --wait, give up waiting after this many seconds (default 120; exit 4)")
    for p in (st, sw, fb):
        # -n/-o after the command too (kubectl chronoshard mirror status orders -n team); given there, they win.
        p.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="namespace")
        p.add_argument("-o", "--output", choices=["table", "json"], default=argparse.SUPPRESS,
                       help="output format")
