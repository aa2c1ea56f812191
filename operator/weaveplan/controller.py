"""The WeavePlan controller: one Kopf daemon per plan aggregates its weavers' forecasts and weaves, writes the
what-if report and, in mode split, creates the Reshard of a split that is due (docs/weaving.md).

The ShardSet controller stays the only writer of the StatefulSet and of ``<shardset>-config``: it adds the
``weaver`` container and weave.json for the plan ``weaveselect.select_weave_plan`` picks (the oldest valid one).
This controller wakes that ShardSet's loop whenever a plan is created, changed or deleted, and every
``POLL_SECONDS`` asks every shard's weaver for its status (``probe.py``); the rows (``status.py``), the what-if
(``whatif.py``), the split decision (``splits.py``) and the status and events (``report.py``) are pure.
The Reshards it creates are owned by the plan (deleting the plan deletes their record, not the split done).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from chronoshard.shardnode.keyspace.partitioning import PartitionMap
from kubernetes.client.exceptions import ApiException

from .. import kube, metrics, naming
from ..conditions import get_condition, now_rfc3339, status_changed
from ..loop import namespace_of, post_events, run_object_loop
from ..podcontract import PARTITION_MAP_FILE, WEAVE_CONFIG_FILE, weave_config
from ..shadowlookup import shadow_policy_in_force
from ..shardpods import config_file_applied, shard_pods
from ..spec.common import SpecError
from ..spec.weaveplan import parse_weaveplan
from ..triggers import TRIGGERS
from ..weavelookup import weave_plan_in_force
from . import probe
from .report import KIND, Observation, build_status, keep_silent_shards, split_rows, transitions
from .splits import SplitDecision, decide
from .status import Aggregate, aggregate
from .whatif import pauses_from_reshards, what_if

PLURAL = "weaveplans"
POLL_SECONDS = 10.0
PENDING_SECONDS = 2.0
PENDING_REASONS = ("ConfigPending", "WeaversNotReporting")

log = logging.getLogger(__name__)


def _partition_map(ns: str, shardset: str) -> PartitionMap | None:
    cm = kube.get("v1", "ConfigMap", ns, naming.partitions_config_map_name(shardset))
    text = ((cm or {}).get("data") or {}).get(PARTITION_MAP_FILE)
    if not text:
        return None
    try:
        return PartitionMap.from_json(text)
    except ValueError:
        return None


def _reshards(ns: str) -> list[dict[str, Any]]:
    try:
        return kube.list_objects(naming.API_VERSION, "Reshard", ns)
    except ApiException as exc:
        if exc.status == 404:  # no Reshard CRD: nothing to wait for, no pauses seen
            return []
        raise


def observe(body: Mapping[str, Any]) -> Observation:
    """Parse the spec and read the ShardSet, the competing plans, the ConfigMaps, the ShadowPolicy in force, the
    Reshards and the pods (blocking)."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    obs = Observation(shardset=((body.get("spec") or {}).get("shardSetRef") or {}).get("name"))
    try:
        obs.spec = spec = parse_weaveplan(body.get("spec"))
    except SpecError as exc:
        obs.spec_error = str(exc)
        return obs
    shardset_obj = kube.get(naming.API_VERSION, "ShardSet", ns, spec.shardset)
    obs.shardset_found = shardset_obj is not None
    if shardset_obj is None:
        return obs
    obs.selection = weave_plan_in_force(ns, spec.shardset)
    if obs.selection.name != name:
        return obs
    obs.config_applied = config_file_applied(ns, spec.shardset, WEAVE_CONFIG_FILE, weave_config(spec, ns, name))
    shards = (shardset_obj.get("spec") or {}).get("shards")
    obs.expected = shards if isinstance(shards, int) and shards > 0 else 0
    obs.shadow_policy = shadow_policy_in_force(ns, spec.shardset).name
    grace = ((shardset_obj.get("spec") or {}).get("partitioning") or {}).get("gracePeriod")
    obs.grace_period = grace if isinstance(grace, str) else None
    obs.pmap = _partition_map(ns, spec.shardset)
    obs.reshards = _reshards(ns)
    if obs.config_applied:
        obs.pods = shard_pods(ns, spec.shardset)
    return obs


def create_reshard(body: Mapping[str, Any], create: Mapping[str, Any]) -> bool:
    """Create the split's Reshard, owned by the plan; True also when it exists already (a pass that created it
    and stopped before writing the status)."""
    meta = body["metadata"]
    obj = {
        "apiVersion": naming.API_VERSION, "kind": "Reshard",
        "metadata": {"name": create["name"], "namespace": meta["namespace"],
                     "labels": {"chronoshard.io/weaveplan": meta["name"]},
                     "ownerReferences": [naming.owner_reference({**body, "kind": KIND})]},
        "spec": create["spec"],
    }
    try:
        kube.create(obj)
    except ApiException as exc:
        log.warning("WeavePlan %s/%s: could not create Reshard %s: HTTP %s %s", meta["namespace"], meta["name"],
                    create["name"], exc.status, exc.reason)
        return False
    return True


def write_status(body: Mapping[str, Any], status: dict[str, Any]) -> bool:
    """Replace the status when it changed (fields left out of ``status`` are removed); True if written."""
    old = body.get("status") or {}
    if not status_changed(old, status):
        return False
    patch = {**{k: None for k in old if k not in status}, **status}
    meta = body["metadata"]
    return kube.patch_status(naming.API_VERSION, KIND, meta["namespace"], meta["name"], patch)


Events = list[tuple[str, str, str]]


async def step(body: Mapping[str, Any], now: datetime | None = None) -> tuple[dict[str, Any], Events]:
    """Observe, ask the weavers, decide the what-if and the split, create a due Reshard; the status and events."""
    obs = await asyncio.to_thread(observe, body)
    old = body.get("status") or {}
    spec = obs.spec
    agg = Aggregate([], [], None, 0, False, [])
    decision, made = SplitDecision(), False
    rows: list[dict[str, Any]] = []
    splits = list(old.get("splits") or [])
    if spec is not None and obs.config_applied and obs.expected:
        reports = await probe.collect(obs.pods, obs.expected)
        agg = keep_silent_shards(aggregate(reports), old, {r.shard for r in reports if r.body is None})
        shards = obs.pmap.shards if obs.pmap is not None else obs.expected
        rows = what_if(agg.weaves, agg.partitions, shards, spec.placement,
                       pauses_from_reshards(obs.reshards, spec.shardset))
        if obs.pmap is not None and agg.reporting:
            decision = decide(body["metadata"]["name"], spec, agg.weaves, agg.partitions, obs.pmap, obs.reshards,
                              [str(r.get("reshard")) for r in splits], now or datetime.now(UTC), obs.grace_period)
        if decision.create is not None:
            made = await asyncio.to_thread(create_reshard, body, decision.create)
        splits = split_rows(splits, decision, made, now_rfc3339(), obs.reshards)
    status = build_status(body, obs, agg, rows, decision, splits)
    events = transitions(old, status, spec, decision, made)
    meta = body["metadata"]
    metrics.set_weaveplan(meta["namespace"], meta["name"], status.get("partitions") or [],
                          int(status.get("weaveCount") or 0))
    return status, events


@kopf.daemon(naming.GROUP, naming.VERSION, PLURAL, cancellation_timeout=10.0)
async def weaveplan_loop(name: str, namespace: str | None, body: kopf.Body, stopped: kopf.DaemonStopped,
                         **_: Any) -> None:
    """Report one WeavePlan's forecasts, weaves and what-if every POLL_SECONDS (sooner when woken)."""
    async def one_pass(snap: dict[str, Any]) -> tuple[str, float]:
        status, events = await step(snap)
        await asyncio.to_thread(write_status, snap, status)
        post_events(body, events + _ready_event(snap.get("status") or {}, status))
        ready = get_condition(status["conditions"], "Ready") or {}
        delay = PENDING_SECONDS if ready.get("reason") in PENDING_REASONS else POLL_SECONDS
        return str(status["phase"]).lower(), delay

    await run_object_loop(KIND, namespace_of(KIND, name, namespace), name, body, stopped, one_pass)


def _ready_event(old: Mapping[str, Any], new: Mapping[str, Any]) -> Events:
    before = get_condition(old.get("conditions") or [], "Ready")
    after = get_condition(new.get("conditions") or [], "Ready")
    if after is None or (before is not None and before.get("reason") == after.get("reason")):
        return []
    return [("Normal" if after["status"] == "True" else "Warning", str(after["reason"]), str(after["message"]))]


@kopf.on.event(naming.GROUP, naming.VERSION, PLURAL)
def weaveplan_changed(type: str | None, name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
    """Wake the target ShardSet (it adds or removes the weaver container and weave.json) on creation, spec change
    and deletion; then this plan's loop."""
    namespace = namespace_of(KIND, name, namespace)
    target = ((body.get("spec") or {}).get("shardSetRef") or {}).get("name")
    observed = (body.get("status") or {}).get("observedGeneration")
    if type == "DELETED" or body["metadata"].get("deletionTimestamp") or observed != body["metadata"].get("generation"):
        if isinstance(target, str):
            TRIGGERS.fire("ShardSet", namespace, target)
        if type == "DELETED":
            metrics.forget_weaveplan(namespace, name)
        TRIGGERS.fire(KIND, namespace, name)
