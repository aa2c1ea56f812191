"""The ShadowPolicy controller: one Kopf daemon per policy reports the shadows' capture and history; spec changes
wake the ShardSet.

The ShardSet controller stays the only writer of the StatefulSet and of ``<shardset>-config``: it adds the shadow
container and shadow.json for the policy ``shadowselect.select_shadow_policy`` picks (the oldest valid one). This
controller wakes that ShardSet's loop whenever a policy is created, changed or deleted, and every ``POLL_SECONDS``
asks every shard's shadow for its status and writes capture lag, tiers, oldest restorable point, compression ratio
and the conditions Ready, CaptureBehind and ShardSetMissing into the policy's status.

The same pass asks every shadow for its anomaly incidents (``GET /v1/anomalies``), keeps the newest in
``status.anomalies`` with one ``AnomalyDetected`` event and one count of ``chronoshard_anomalies_detected_total``
per incident, and proposes a Reversion for each closed incident at or above ``anomaly.severityThreshold`` unless
``reversion.mode`` is off (anomalies.py decides; proposals.py creates). The Reversions have no ownerReference to
the policy: deleting the policy keeps the record of what was reverted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from .. import kube, metrics, naming
from ..conditions import get_condition, now_rfc3339, set_condition, status_changed
from ..loop import namespace_of, post_events, run_object_loop
from ..podcontract import SHADOW_CONFIG_FILE, shadow_config
from ..settings import poll_seconds
from ..shadowlookup import shadow_policy_in_force
from ..shadowselect import ShadowSelection
from ..shardpods import config_file_applied, shard_pods
from ..spec.common import SpecError
from ..spec.shadowpolicy import ShadowPolicySpec, parse_shadowpolicy
from ..triggers import TRIGGERS
from . import anomalies, probe, proposals
from .status import ShardSample, aggregate, behind, lag_bound_seconds

KIND = "ShadowPolicy"
PLURAL = "shadowpolicies"
POLL_SECONDS = 10.0
PENDING_SECONDS = 2.0  # while the config is not yet written or the pods are rolling onto the shadow container
FIGURES = ("shardsReporting", "shardsExpected", "reporting", "shards", "captureLagLsn", "captureLagSeconds",
           "oldestRestorableTime", "compressionRatio", "shadowBytes", "versions", "tiers")
PENDING_REASONS = ("ConfigPending", "ShardsNotReporting")
ANOMALY_FIELDS = ("anomalies", "detector")

log = logging.getLogger(__name__)


@dataclass
class Observation:
    """What the API server says about a policy's surroundings (read in one blocking step)."""

    shardset: str | None = None
    spec: ShadowPolicySpec | None = None
    spec_error: str | None = None
    shardset_obj: Mapping[str, Any] | None = None
    selection: ShadowSelection = field(default_factory=ShadowSelection)
    config_applied: bool = False
    cold_secret_missing: bool = False
    expected: int = 0
    pods: dict[int, dict[str, Any]] = field(default_factory=dict)


def observe(body: Mapping[str, Any]) -> Observation:
    """Parse the spec and read the ShardSet, the competing policies, the ConfigMap, the credentials Secret and the
    pods (blocking)."""
    meta = body["metadata"]
    ns = meta["namespace"]
    obs = Observation(shardset=((body.get("spec") or {}).get("shardSetRef") or {}).get("name"))
    try:
        obs.spec = spec = parse_shadowpolicy(body.get("spec"))
    except SpecError as exc:
        obs.spec_error = str(exc)
        return obs
    obs.shardset = spec.shardset
    obs.shardset_obj = kube.get(naming.API_VERSION, "ShardSet", ns, spec.shardset)
    if obs.shardset_obj is None:
        return obs
    obs.selection = shadow_policy_in_force(ns, spec.shardset)
    if obs.selection.name != meta["name"]:
        return obs
    obs.config_applied = config_file_applied(ns, spec.shardset, SHADOW_CONFIG_FILE,
                                             shadow_config(spec, ns, spec.shardset))
    if spec.cold_storage is not None:
        obs.cold_secret_missing = kube.get("v1", "Secret", ns, spec.cold_storage.credentials_secret) is None
    shards = (obs.shardset_obj.get("spec") or {}).get("shards")
    obs.expected = shards if isinstance(shards, int) and shards > 0 else 0
    if obs.config_applied:
        obs.pods = shard_pods(ns, spec.shardset)
    return obs


class _Conditions:
    """The conditions being built for one status."""

    def __init__(self, old: list[dict[str, Any]], gen: int, now: str | None) -> None:
        self.items = old
        self.gen = gen
        self.now = now

    def set(self, type_: str, ok: bool, reason: str, message: str) -> None:
        self.items = set_condition(self.items, type_, ok, reason, message, self.gen, self.now)


def _active(status: dict[str, Any], conds: _Conditions, obs: Observation, samples: list[ShardSample],
            target: str) -> None:
    """Figures and conditions of the policy in force once its config is written."""
    status.update(aggregate(samples, obs.expected))
    rows = status["shards"]
    missing = [f"shard {r['shard']}: {r.get('error', 'not reporting')}" for r in rows if not r["reporting"]]
    failing = [f"shard {r['shard']}: {r['error']}" for r in rows if r["reporting"] and r.get("error")]
    bound = lag_bound_seconds(obs.spec.snapshot_interval) if obs.spec is not None else 60.0
    late = behind(rows, bound)
    conds.set("CaptureBehind", bool(late), "CaptureBehind" if late else "CaptureCurrent",
              "; ".join(late[:5]) if late else f"every reporting shard's capture is within {bound:g}s of its node")
    if missing:
        status["phase"] = "Pending" if not status["shardsReporting"] else "Degraded"
        conds.set("Ready", False, "ShardsNotReporting",
                  f"{status['reporting']} shard shadow(s) report; " + "; ".join(missing[:5]))
    elif obs.cold_secret_missing and obs.spec is not None and obs.spec.cold_storage is not None:
        status["phase"] = "Degraded"
        conds.set("Ready", False, "ColdStorageSecretMissing",
                  f"Secret {obs.spec.cold_storage.credentials_secret} (spec.coldStorage.credentialsSecret.name) "
                  "does not exist: the cold tier cannot reach object storage")
    elif failing:
        status["phase"] = "Degraded"
        conds.set("Ready", False, "ShadowErrors", "; ".join(failing[:5]))
    else:
        status["phase"] = "Degraded" if late else "Active"
        conds.set("Ready", True, "ShardsReporting", f"all {obs.expected} shard shadow(s) of ShardSet {target} report")


def build_status(body: Mapping[str, Any], obs: Observation, samples: list[ShardSample], now: str | None = None
                 ) -> dict[str, Any]:
    """The policy's status from an observation and the shadows' answers (pure)."""
    meta = body["metadata"]
    gen = int(meta.get("generation") or 1)
    old = body.get("status") or {}
    conds = _Conditions(list(old.get("conditions") or []), gen, now)
    status: dict[str, Any] = {"observedGeneration": gen}
    target = obs.shardset or "?"
    if obs.spec_error is not None:
        status["phase"] = "Invalid"
        conds.set("Ready", False, "InvalidSpec", obs.spec_error)
    elif obs.shardset_obj is None:
        status["phase"] = "Waiting"
        msg = f"ShardSet {target} (spec.shardSetRef.name) does not exist in namespace {meta['namespace']}"
        conds.set("ShardSetMissing", True, "ShardSetNotFound", msg)
        conds.set("Ready", False, "ShardSetMissing", msg)
    else:
        conds.set("ShardSetMissing", False, "ShardSetFound", f"ShardSet {target} exists")
        if obs.selection.name != meta["name"]:
            status["phase"] = "Conflict"
            conds.set("Ready", False, "AnotherPolicyInForce",
                      f"ShadowPolicy {obs.selection.name} is older and already shadows ShardSet {target}; this "
                      "policy takes effect only when that one is deleted")
        elif not obs.config_applied:
            status["phase"] = "Waiting"
            conds.set("Ready", False, "ConfigPending",
                      f"waiting for ShardSet {target}'s config ConfigMap to carry this policy's shadow.json")
        else:
            _active(status, conds, obs, samples, target)
    status["conditions"] = conds.items
    return status


def write_status(body: Mapping[str, Any], status: dict[str, Any]) -> bool:
    """Replace the status when it changed (figures left out of ``status`` are removed); True if written."""
    old = body.get("status") or {}
    if not status_changed(old, status):
        return False
    if any(k in status for k in FIGURES):
        status = {**status, "lastUpdateTime": now_rfc3339()}
    patch = {**{k: None for k in old if k not in status}, **status}
    meta = body["metadata"]
    return kube.patch_status(naming.API_VERSION, KIND, meta["namespace"], meta["name"], patch)


Events = list[tuple[str, str, str]]


async def step(body: Mapping[str, Any]) -> tuple[dict[str, Any], Events]:
    """Observe, ask the shadows, propose Reversions for incidents; return the new status and the incidents'
    events."""
    obs = await asyncio.to_thread(observe, body)
    if not (obs.config_applied and obs.expected and obs.spec is not None):
        status = build_status(body, obs, [])
        # Kept while the policy is not probing (a spec change rolls the pods): incidents dropped here would come
        # back as new, with their events and proposals again.
        old = body.get("status") or {}
        status.update({k: old[k] for k in ANOMALY_FIELDS if k in old})
        return status, []
    samples, reports = await asyncio.gather(probe.collect(obs.pods, obs.expected),
                                            probe.collect_anomalies(obs.pods, obs.expected))
    status = build_status(body, obs, samples)
    events = await _anomalies(body, obs.spec, reports, status)
    return status, events


async def _anomalies(body: Mapping[str, Any], spec: ShadowPolicySpec, reports: list[anomalies.ShardAnomalies],
                     status: dict[str, Any]) -> Events:
    """Fill ``status.anomalies``/``status.detector``, count and announce new incidents, propose Reversions."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    old_rows = list((body.get("status") or {}).get("anomalies") or [])
    found = anomalies.incidents(reports)
    rows = anomalies.merge(old_rows, reports, found)
    events: Events = []
    for row in anomalies.new_rows(old_rows, rows):
        metrics.count_anomaly(ns, name, str(row.get("kind") or ""))
        events.append(("Warning", "AnomalyDetected", anomalies.detected_message(row)))
    wanted = anomalies.to_revert(old_rows, rows, found, spec.anomaly.severity_threshold, spec.reversion_mode)
    made, failed = (await asyncio.to_thread(proposals.propose, ns, name, spec.shardset, wanted) if wanted
                    else ({}, {}))
    action = "reverting" if spec.reversion_mode == "auto" else "proposed"
    old_errors = {(r.get("shard"), r.get("id")): r.get("proposalError") for r in old_rows}
    for row in rows:
        ref = (row["shard"], row["id"])
        row.pop("proposalError", None)
        if ref in made:
            row.update(reversion=made[ref], action=action)
            events.append(("Normal", "ReversionProposed",
                           anomalies.proposed_message(made[ref], found[ref], spec.reversion_mode)))
        elif ref in failed:
            row["proposalError"] = failed[ref]
            if old_errors.get(ref) != failed[ref]:  # one event per new error, not one per pass
                events.append(("Warning", "ReversionNotProposed", failed[ref]))
    status["anomalies"] = rows
    status["detector"] = anomalies.detector_summary(reports, spec.anomaly.model)
    return events


def transitions(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Events for a status change: the Ready reason moved, or CaptureBehind turned on or off (pure)."""
    events: list[tuple[str, str, str]] = []
    before, after = old.get("conditions") or [], new.get("conditions") or []
    ready_old, ready_new = get_condition(before, "Ready"), get_condition(after, "Ready")
    if ready_new is not None and (ready_old is None or ready_old.get("reason") != ready_new["reason"]):
        events.append(("Normal" if ready_new["status"] == "True" else "Warning", ready_new["reason"],
                       ready_new["message"]))
    lag_old, lag_new = get_condition(before, "CaptureBehind"), get_condition(after, "CaptureBehind")
    was = lag_old is not None and lag_old.get("status") == "True"
    if lag_new is not None and (lag_new["status"] == "True") != was:
        events.append(("Warning", "CaptureBehind", lag_new["message"]) if lag_new["status"] == "True"
                      else ("Normal", "CaptureCaughtUp", lag_new["message"]))
    return events


@kopf.daemon(naming.GROUP, naming.VERSION, PLURAL, cancellation_timeout=10.0)
async def shadowpolicy_loop(name: str, namespace: str | None, body: kopf.Body, stopped: kopf.DaemonStopped,
                            **_: Any) -> None:
    """Report one ShadowPolicy's phase, capture and history figures every POLL_SECONDS (sooner when woken)."""
    async def one_pass(snap: dict[str, Any]) -> tuple[str, float]:
        status, incident_events = await step(snap)
        await asyncio.to_thread(write_status, snap, status)
        post_events(body, transitions(snap.get("status") or {}, status) + incident_events)
        ready = get_condition(status["conditions"], "Ready") or {}
        delay = PENDING_SECONDS if ready.get("reason") in PENDING_REASONS else poll_seconds(POLL_SECONDS)
        return ("success" if status["phase"] == "Active" else str(status["phase"]).lower()), delay

    await run_object_loop(KIND, namespace_of(KIND, name, namespace), name, body, stopped, one_pass)


@kopf.on.event(naming.GROUP, naming.VERSION, PLURAL)
def shadowpolicy_changed(type: str | None, name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
    """Wake the target ShardSet (it adds or removes the shadow container and shadow.json) on creation, spec change
    and deletion; then this policy's loop."""
    namespace = namespace_of(KIND, name, namespace)
    target = ((body.get("spec") or {}).get("shardSetRef") or {}).get("name")
    observed = (body.get("status") or {}).get("observedGeneration")
    if type == "DELETED" or body["metadata"].get("deletionTimestamp") or observed != body["metadata"].get("generation"):
        if isinstance(target, str):
            TRIGGERS.fire("ShardSet", namespace, target)
        TRIGGERS.fire(KIND, namespace, name)
