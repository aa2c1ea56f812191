"""``chronoshard split|move|merge`` and ``chronoshard reshard status``: ask for a layout change of a ShardSet by
creating a Reshard object, and show a Reshard's steps and the running step's progress, through the Kubernetes API
(docs/resharding.md). The Reshard controller does the work; these commands never talk to a shard."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any

from chronoshard.shardnode.client.errors import ChronoshardError, Unavailable, api_message
from chronoshard.shardnode.keyspace.partitioning import PartitionMap, format_id, parse_id

GROUP, VERSION, PLURAL = "chronoshard.io", "v1alpha1", "reshards"
COMMANDS = ("split", "move", "merge", "reshard")
DONE = ("Completed", "Failed", "RolledBack")
POLL = 1.0
EXIT_FAILED, EXIT_TIMEOUT = 1, 4

Table = Callable[[Sequence[str], Sequence[Sequence[object]]], str]


class ReshardMissing(ChronoshardError):
    """The Reshard (or the ShardSet's partition map) named does not exist."""


class ReshardRefused(ChronoshardError):
    """The request cannot be made: no such partition or shard, a bad split point, or the API refused it."""


# --- pure: building the object ------------------------------------------------------------------------


def _partition(pmap: PartitionMap, pid: int, shardset: str) -> Any:
    found = [p for p in pmap.partitions if p.id == pid]
    if not found:
        ids = ", ".join(str(p.id) for p in sorted(pmap.partitions, key=lambda p: p.id))
        raise ReshardRefused(f"ShardSet {shardset} has no partition {pid} at map epoch {pmap.epoch} (partitions: "
                             f"{ids})")
    return found[0]


def _check_shard(pmap: PartitionMap, shard: int, shardset: str) -> None:
    if not 0 <= shard < pmap.shards:
        raise ReshardRefused(f"ShardSet {shardset} has shards 0..{pmap.shards - 1} at map epoch {pmap.epoch}, not "
                             f"{shard}")


def split_steps(pmap: PartitionMap, shardset: str, partition: int, at: str | None,
                move_upper_to: int | None) -> list[dict[str, Any]]:
    """The steps of ``split`` (checked against the map in force): a split at ``at`` (16 hex digits, within
    ``start+1..end`` of the partition; absent: the node's median), then with ``move_upper_to`` a move of the upper
    half, whose id is the largest id in the map + 1."""
    p = _partition(pmap, partition, shardset)
    split: dict[str, Any] = {"partition": partition}
    if at is not None:
        try:
            point = parse_id(at.lower().rjust(16, "0"))
        except ValueError:
            raise ReshardRefused(f"--at {at!r}: a keyspace id is up to 16 hex digits") from None
        if not p.start < point <= p.end:
            raise ReshardRefused(f"--at {format_id(point)} would leave a half of partition {partition} empty: it must "
                                 f"be in {format_id(p.start + 1)}..{format_id(p.end)}")
        split["at"] = format_id(point)
    steps: list[dict[str, Any]] = [{"split": split}]
    if move_upper_to is not None:
        _check_shard(pmap, move_upper_to, shardset)
        if move_upper_to != p.shard:
            upper = max(q.id for q in pmap.partitions) + 1
            steps.append({"move": {"partition": upper, "toShard": move_upper_to}})
    return steps


def move_steps(pmap: PartitionMap, shardset: str, partition: int, to: int) -> list[dict[str, Any]]:
    """The step of ``move``: partition ``partition`` to shard ``to`` (refused if it is there already)."""
    p = _partition(pmap, partition, shardset)
    _check_shard(pmap, to, shardset)
    if p.shard == to:
        raise ReshardRefused(f"partition {partition} of ShardSet {shardset} is on shard {to} already")
    return [{"move": {"partition": partition, "toShard": to}}]


def merge_steps(pmap: PartitionMap, shardset: str, first: int, second: int) -> list[dict[str, Any]]:
    """The step of ``merge``: two adjacent partitions on one shard (refused otherwise; the lower id is kept)."""
    a, b = sorted((_partition(pmap, first, shardset), _partition(pmap, second, shardset)), key=lambda p: p.start)
    if a.id == b.id or a.end + 1 != b.start:
        raise ReshardRefused(f"partitions {first} and {second} of ShardSet {shardset} are not adjacent")
    if a.shard != b.shard:
        raise ReshardRefused(f"partitions {a.id} (shard {a.shard}) and {b.id} (shard {b.shard}) are on different "
                             "shards: move one first")
    return [{"merge": {"partitions": sorted((first, second))}}]


def reshard_object(shardset: str, namespace: str, kind: str, steps: list[dict[str, Any]],
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A Reshard with a generated name ``<shardset>-<kind>-xxxxx`` (``extra``: gracePeriod, cutoverTimeout)."""
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Reshard",
            "metadata": {"generateName": f"{shardset}-{kind}-", "namespace": namespace},
            "spec": {"shardSetRef": {"name": shardset}, "steps": steps, **(extra or {})}}


# --- pure: showing it --------------------------------------------------------------------------------------


def _what(step: Mapping[str, Any]) -> tuple[str, str]:
    """(type, what it asks) of a spec step."""
    if "split" in step:
        s = step["split"]
        return "split", f"partition {s.get('partition')}" + (f" at {s['at']}" if s.get("at") else " at its median")
    if "move" in step:
        s = step["move"]
        return "move", f"partition {s.get('partition')} to shard {s.get('toShard')}"
    if "merge" in step:
        return "merge", "partitions " + " + ".join(str(p) for p in step["merge"].get("partitions") or [])
    return "?", json.dumps(dict(step))


def _pct(done: Any, total: Any) -> str:
    if not isinstance(done, int | float) or not isinstance(total, int | float):
        return "-"
    return f"{done}/{total}" + (f" ({done / total * 100:.1f}%)" if total else "")


def _move_parts(st: Mapping[str, Any]) -> list[str]:
    parts: list[str] = []
    if st.get("fromShard") is not None:
        parts.append(f"shard {st.get('fromShard')} -> {st.get('toShard')}")
    if st.get("totalBlocks") is not None or st.get("copiedBlocks") is not None:
        parts.append(f"copied {_pct(st.get('copiedBlocks'), st.get('totalBlocks'))}")
    if isinstance(st.get("lagSeconds"), int | float):
        parts.append(f"lag {st['lagSeconds']:.2f}s")
    if st.get("sourceLsn") is not None:
        parts.append(f"source LSN {st['sourceLsn']}")
    if st.get("cutoverAttempts"):
        parts.append(f"cutover attempts {st['cutoverAttempts']}")
    if isinstance(st.get("pausedMs"), int | float):
        parts.append(f"write pause {st['pausedMs']:.0f} ms")
    verified = st.get("verified")
    if isinstance(verified, Mapping):
        parts.append(f"verified {verified.get('blocks')} blocks at LSN {verified.get('sourceLsn')}: "
                     + ("match" if verified.get("matched") else "MISMATCH"))
    if st.get("purgedBlocks") is not None:
        parts.append(f"purged {st['purgedBlocks']} blocks")
    return parts


def progress(st: Mapping[str, Any]) -> str:
    """One step's progress as text: copied/total, lag, source LSN, cutover attempts and pause, verification."""
    parts: list[str] = []
    if st.get("type") == "split" and st.get("splitAt"):
        parts.append(f"at {st['splitAt']}")
    if st.get("partitions"):
        parts.append("partitions " + ", ".join(str(p) for p in st["partitions"]))
    parts += _move_parts(st)
    if st.get("epoch") is not None:
        parts.append(f"epoch {st['epoch']}")
    if st.get("message"):
        parts.append(str(st["message"]))
    return ", ".join(parts) or "-"


def step_rows(obj: Mapping[str, Any]) -> list[list[object]]:
    """One row per spec step: index, type, phase (Pending until the status names it), what, progress."""
    status_steps = {s.get("index"): s for s in (obj.get("status") or {}).get("steps") or []
                    if isinstance(s, Mapping)}
    rows: list[list[object]] = []
    for i, step in enumerate((obj.get("spec") or {}).get("steps") or []):
        kind, what = _what(step)
        st = status_steps.get(i) or {}
        rows.append([i, kind, st.get("phase", "Pending"), what, progress(st)])
    return rows


def age(created: str | None, now: datetime | None = None) -> str:
    """kubectl-style age of a creation timestamp (``5s``, ``3m``, ``2h``, ``4d``)."""
    if not created:
        return "-"
    then = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    secs = max(int(((now or datetime.now(UTC)) - then).total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def list_rows(objs: Sequence[Mapping[str, Any]], now: datetime | None = None) -> list[list[object]]:
    """``reshard status`` without a name: name, ShardSet, phase, current step (of how many), age."""
    rows: list[list[object]] = []
    for o in sorted(objs, key=lambda o: o["metadata"]["name"]):
        st, spec = o.get("status") or {}, o.get("spec") or {}
        steps = len(spec.get("steps") or [])
        current = st.get("currentStep")
        rows.append([o["metadata"]["name"], (spec.get("shardSetRef") or {}).get("name"), st.get("phase", "Pending"),
                     f"{current + 1}/{steps}" if isinstance(current, int) else f"-/{steps}",
                     age(o["metadata"].get("creationTimestamp"), now)])
    return rows


def render(obj: Mapping[str, Any], table: Table) -> str:
    """Human-readable ``reshard status NAME``: phase, ShardSet, every step with its phase and progress, conditions."""
    meta, spec, st = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    steps = spec.get("steps") or []
    current = st.get("currentStep")
    lines = [f"Reshard {meta.get('namespace')}/{meta['name']}: {st.get('phase', 'Pending')}",
             f"ShardSet:        {(spec.get('shardSetRef') or {}).get('name')}",
             "Step:            " + (f"{current + 1} of {len(steps)}" if isinstance(current, int) else
                                     f"- of {len(steps)}"), ""]
    lines.append(table(["step", "type", "phase", "what", "progress"], step_rows(obj)))
    if st.get("conditions"):
        lines.append(table(["condition", "status", "reason", "message"],
                           [[c.get("type"), c.get("status"), c.get("reason"), c.get("message")]
                            for c in st["conditions"]]))
    return "\n".join(lines)


# --- the Kubernetes API ----------------------------------------------------------------------------------


class Reshards:
    """Reshard objects of one namespace and the partition map of a ShardSet (blocking; run in a thread)."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace

    def _call(self, what: str, fn: Callable[[], Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            obj = fn()
        except ApiException as exc:
            message = api_message(exc)
            if exc.status == 404:
                raise ReshardMissing(f"{what} not found ({message}; is the Reshard CRD installed?)") from None
            if exc.status in (400, 409, 422):
                raise ReshardRefused(f"{what}: {message}") from None
            raise Unavailable(f"kubernetes API ({self.namespace})", f"HTTP {exc.status}: {message}") from None
        if not isinstance(obj, dict):
            raise Unavailable(f"kubernetes API ({self.namespace})", "answered something other than a JSON object")
        return obj

    def partition_map(self, shardset: str) -> PartitionMap:
        """The map in force as the operator published it (``<shardset>-partitions``)."""
        from chronoshard.shardnode.client.discovery import MAP_KEY, partitions_config_map_name

        name = partitions_config_map_name(shardset)
        cm = self._call(f"ConfigMap {self.namespace}/{name} (the partition map of ShardSet {shardset})",
                        lambda: self.core.read_namespaced_config_map(name, self.namespace).to_dict())
        try:
            return PartitionMap.from_json((cm.get("data") or {}).get(MAP_KEY) or "")
        except ValueError as exc:
            raise Unavailable(f"ConfigMap {self.namespace}/{name}", str(exc)) from None

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create the Reshard; the object as created (with its generated name)."""
        return self._call(f"Reshard in {self.namespace}", lambda: self.api.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body))

    def get(self, name: str) -> dict[str, Any]:
        """The Reshard; ReshardMissing if absent."""
        return self._call(f"Reshard {self.namespace}/{name}", lambda: self.api.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name))

    def list(self) -> list[dict[str, Any]]:
        """Every Reshard of the namespace."""
        items = self._call(f"Reshards in {self.namespace}", lambda: self.api.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL)).get("items") or []
        return [i for i in items if isinstance(i, dict)]

    def wait(self, name: str, timeout: float) -> dict[str, Any]:
        """Poll until the Reshard is Completed, Failed or RolledBack, or ``timeout`` passed; the last object read."""
        deadline = time.monotonic() + timeout
        while True:
            obj = self.get(name)
            if (obj.get("status") or {}).get("phase") in DONE or time.monotonic() >= deadline:
                return obj
            time.sleep(POLL)


# --- the commands ------------------------------------------------------------------------------------------


def _steps(reshards: Reshards, args: argparse.Namespace) -> list[dict[str, Any]]:
    pmap = reshards.partition_map(args.shardset_name)
    if args.command == "split":
        return split_steps(pmap, args.shardset_name, args.partition, args.at, args.move_upper_to)
    if args.command == "move":
        return move_steps(pmap, args.shardset_name, args.partition, args.to)
    return merge_steps(pmap, args.shardset_name, args.partitions[0], args.partitions[1])


def run(reshards: Reshards, args: argparse.Namespace, out: IO[str], table: Table) -> int:
    """Execute ``split|move|merge`` or ``reshard status``; returns the exit code."""
    as_json = args.output == "json"
    if args.command == "reshard":
        if args.name is None:
            objs = reshards.list()
            out.write(json.dumps(objs, indent=2) + "\n" if as_json else
                      table(["name", "shardset", "phase", "step", "age"], list_rows(objs)))
            return 0
        obj = reshards.get(args.name)
        out.write(json.dumps(obj, indent=2) + "\n" if as_json else render(obj, table))
        return 0
    extra = {k: v for k, v in (("gracePeriod", args.grace_period), ("cutoverTimeout", args.cutover_timeout))
             if v is not None}
    body = reshard_object(args.shardset_name, reshards.namespace, args.command, _steps(reshards, args), extra)
    created = reshards.create(body)
    name = created["metadata"]["name"]
    if not args.wait:
        out.write(json.dumps(created, indent=2) + "\n" if as_json else f"reshard.chronoshard.io/{name} created\n")
        return 0
    obj = reshards.wait(name, args.wait_timeout)
    phase = (obj.get("status") or {}).get("phase", "Pending")
    out.write(json.dumps(obj, indent=2) + "\n" if as_json else f"reshard.chronoshard.io/{name} created\n"
              + render(obj, table))
    if phase not in DONE:
        return EXIT_TIMEOUT
    return 0 if phase == "Completed" else EXIT_FAILED


def add_parsers(sub: Any) -> None:
    """``split``, ``move``, ``merge`` and ``reshard status`` (``sub``: the CLI's subparsers)."""
    sp = sub.add_parser("split", help="split a partition in two (a Reshard; optionally move the upper half)")
    sp.add_argument("shardset_name", metavar="SHARDSET")
    sp.add_argument("partition", type=int, metavar="PARTITION")
    sp.add_argument("--at", default=None, metavar="HEX", help="the first keyspace id of the upper half (16 hex "
                                                              "digits; default: the median of its blocks)")
    sp.add_argument("--move-upper-to", type=int, default=None, metavar="SHARD",
                    help="then move the upper half (id: the largest id in the map + 1) to this shard")
    mv = sub.add_parser("move", help="move a partition to another shard, online (a Reshard)")
    mv.add_argument("shardset_name", metavar="SHARDSET")
    mv.add_argument("partition", type=int, metavar="PARTITION")
    mv.add_argument("--to", type=int, required=True, metavar="SHARD", help="the shard to move it to")
    mg = sub.add_parser("merge", help="merge two adjacent partitions of one shard (a Reshard)")
    mg.add_argument("shardset_name", metavar="SHARDSET")
    mg.add_argument("partitions", type=int, nargs=2, metavar="PARTITION")
    for p in (sp, mv, mg):
        p.add_argument("--grace-period", default=None, help="how long the source keeps moved blocks (e.g. 5m)")
        p.add_argument("--cutover-timeout", default=None, help="the longest write pause of a cutover (e.g. 2s)")
        p.add_argument("--wait", action="store_true", help="follow the Reshard until it finished")
        p.add_argument("--timeout", dest="wait_timeout", type=float, default=600.0,
                       help="with --wait, give up waiting after this many seconds (default 600; exit 4)")
    rs = sub.add_parser("reshard", help="Reshards: their steps, phases and progress")
    rsub = rs.add_subparsers(dest="reshard_command", required=True)
    st = rsub.add_parser("status", help="every Reshard of the namespace, or one's steps and progress")
    st.add_argument("name", nargs="?", default=None, help="the Reshard (default: list them)")
    for p in (sp, mv, mg, st):
        # -n/-o after the command too (kubectl chronoshard reshard status x -n team); given there, they win.
        p.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="namespace")
        p.add_argument("-o", "--output", choices=["table", "json"], default=argparse.SUPPRESS,
                       help="output format")
