"""The PrefetchPolicy controller: one Kopf daemon per policy reports prefetch quality; spec changes wake the ShardSet.

The ShardSet controller stays the only writer of ``<shardset>-config``: it renders predictor.json and
cache.json from the policy ``prefetchselect.select_policy`` picks (the oldest valid one). This controller wakes that
ShardSet's loop whenever a policy is created, changed or deleted, and every ``POLL_SECONDS`` asks every shard's
predictor and cache how prefetching goes and writes the figures, phase and conditions into the policy's status.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from .. import kube, naming
from ..conditions import now_rfc3339, set_condition, status_changed
from ..loop import namespace_of, run_object_loop
from ..podcontract import PREDICTOR_CONFIG_FILE
from ..prefetchconfig import predictor_config
from ..prefetchlookup import policy_in_force
from ..prefetchselect import Selection
from ..settings import poll_seconds
from ..shardpods import shard_pods
from ..spec.common import SpecError
from ..spec.prefetchpolicy import parse_prefetchpolicy
from ..triggers import TRIGGERS
from . import probe
from .status import ShardSample, aggregate

KIND = "PrefetchPolicy"
PLURAL = "prefetchpolicies"
POLL_SECONDS = 10.0
PENDING_SECONDS = 1.0  # while the config for this policy is not yet written or not yet loaded by the shards
FIGURES = ("activeModel", "hitRatio", "keyCache", "precision", "recall", "wastedBytes", "hintsSent", "hintsUsed",
           "hintsWasted", "shardsReporting", "shardsExpected", "reporting", "shards")

log = logging.getLogger(__name__)


@dataclass
class Observation:
    """What the API server says about a policy's surroundings (read in one blocking step)."""

    shardset: str | None = None
    spec_error: str | None = None
    shardset_obj: Mapping[str, Any] | None = None
    selection: Selection = field(default_factory=Selection)
    config_applied: bool = False
    expected: int = 0
    pods: dict[int, dict[str, Any]] = field(default_factory=dict)


def _config_applied(ns: str, shardset: str, wanted: Mapping[str, Any]) -> bool:
    """True when the mounted predictor.json already holds this policy's settings."""
    cm = kube.get("v1", "ConfigMap", ns, naming.config_map_name(shardset))
    raw = ((cm or {}).get("data") or {}).get(PREDICTOR_CONFIG_FILE)
    if raw is None:
        return False
    try:
        doc = json.loads(raw)
    except ValueError:
        return False
    return isinstance(doc, dict) and all(doc.get(k) == v for k, v in wanted.items())


def observe(body: Mapping[str, Any]) -> Observation:
    """Parse the spec and read the ShardSet, the competing policies, the ConfigMap and the pods (blocking)."""
    meta = body["metadata"]
    ns = meta["namespace"]
    obs = Observation(shardset=((body.get("spec") or {}).get("shardSetRef") or {}).get("name"))
    try:
        spec = parse_prefetchpolicy(body.get("spec"))
    except SpecError as exc:
        obs.spec_error = str(exc)
        return obs
    obs.shardset = spec.shardset
    obs.shardset_obj = kube.get(naming.API_VERSION, "ShardSet", ns, spec.shardset)
    if obs.shardset_obj is None:
        return obs
    obs.selection = policy_in_force(ns, spec.shardset)
    if obs.selection.name != meta["name"]:
        return obs
    obs.config_applied = _config_applied(ns, spec.shardset, predictor_config(spec))
    shards = (obs.shardset_obj.get("spec") or {}).get("shards")
    obs.expected = shards if isinstance(shards, int) and shards > 0 else 0
    if obs.config_applied:
        obs.pods = shard_pods(ns, spec.shardset)
    return obs


def build_status(body: Mapping[str, Any], obs: Observation, samples: list[ShardSample], now: str | None = None
                 ) -> dict[str, Any]:
    """The policy's status from an observation and the shards' answers (pure)."""
    meta = body["metadata"]
    gen = int(meta.get("generation") or 1)
    old = body.get("status") or {}
    conds: list[dict[str, Any]] = list(old.get("conditions") or [])
    status: dict[str, Any] = {"observedGeneration": gen}
    target = obs.shardset or "?"

    def ready(ok: bool, reason: str, message: str) -> None:
        nonlocal conds
        conds = set_condition(conds, "Ready", ok, reason, message, gen, now)

    def conflict(on: bool, reason: str, message: str) -> None:
        nonlocal conds
        conds = set_condition(conds, "Conflict", on, reason, message, gen, now)

    if obs.spec_error is not None:
        status["phase"] = "Invalid"
        ready(False, "InvalidSpec", obs.spec_error)
    elif obs.shardset_obj is None:
        status["phase"] = "Waiting"
        ready(False, "ShardSetNotFound",
              f"ShardSet {target} (spec.shardSetRef.name) does not exist in namespace {meta['namespace']}")
    elif obs.selection.name != meta["name"]:
        status["phase"] = "Conflict"
        in_force = obs.selection.name
        msg = (f"PrefetchPolicy {in_force} is older and already configures ShardSet {target}; "
               "this policy takes effect only when that one is deleted")
        conflict(True, "AnotherPolicyInForce", msg)
        ready(False, "Conflict", msg)
    else:
        if any(c.get("type") == "Conflict" for c in conds):
            conflict(False, "InForce", f"this policy configures ShardSet {target}")
        if not obs.config_applied:
            status["phase"] = "Waiting"
            ready(False, "ConfigPending", f"waiting for ShardSet {target}'s config ConfigMap to carry this policy")
        else:
            status["phase"] = "Active"
            status.update(aggregate(samples, obs.expected))
            missing = [f"shard {r['shard']}: {r.get('error', 'not reporting')}" for r in status["shards"]
                       if not r["reporting"]]
            # kubelet refreshes a mounted ConfigMap only every minute or so: until then a predictor still runs the
            # previous settings (enabled false), or reports why it refused the file.
            unloaded = [s for s in samples if s.predictor is not None
                        and (s.predictor.get("enabled") is not True or s.predictor.get("configError"))]
            if obs.expected and not missing and unloaded:
                ready(False, "ConfigNotLoaded", "; ".join(
                    f"shard {s.shard}: predictor " + (f"refused its config: {s.predictor['configError']}"
                                                      if s.predictor and s.predictor.get("configError")
                                                      else "has not loaded this policy yet") for s in unloaded[:5]))
            elif obs.expected and not missing:
                ready(True, "ShardsReporting", f"all {obs.expected} shard predictor(s) report with this policy")
            else:
                ready(False, "ShardsNotReporting",
                      f"{status['reporting']} shard predictor(s) report" + ("; " + "; ".join(missing[:5])
                                                                           if missing else ""))
    status["conditions"] = conds
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


async def step(body: Mapping[str, Any]) -> dict[str, Any]:
    """Observe, ask the shards, and return the new status."""
    obs = await asyncio.to_thread(observe, body)
    samples: list[ShardSample] = []
    if obs.config_applied and obs.expected:
        samples = await probe.collect(obs.pods, obs.expected)
    return build_status(body, obs, samples)


@kopf.daemon(naming.GROUP, naming.VERSION, PLURAL, cancellation_timeout=10.0)
async def prefetchpolicy_loop(name: str, namespace: str | None, body: kopf.Body, stopped: kopf.DaemonStopped,
                              **_: Any) -> None:
    """Report one PrefetchPolicy's phase and prefetch figures every POLL_SECONDS (sooner when woken)."""
    last_reason: str | None = None

    async def one_pass(snap: dict[str, Any]) -> tuple[str, float]:
        nonlocal last_reason
        status = await step(snap)
        await asyncio.to_thread(write_status, snap, status)
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        if ready["reason"] != last_reason:
            (kopf.info if ready["status"] == "True" else kopf.warn)(
                body, reason=ready["reason"], message=ready["message"])
            last_reason = ready["reason"]
        pending = ready["reason"] in ("ConfigPending", "ConfigNotLoaded")
        delay = PENDING_SECONDS if pending else poll_seconds(POLL_SECONDS)
        return ("success" if status["phase"] == "Active" else status["phase"].lower()), delay

    await run_object_loop(KIND, namespace_of(KIND, name, namespace), name, body, stopped, one_pass)


@kopf.on.event(naming.GROUP, naming.VERSION, PLURAL)
def prefetchpolicy_changed(type: str | None, name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
    """Wake the target ShardSet (it rewrites the config) on creation, spec change and deletion; then this loop."""
    namespace = namespace_of(KIND, name, namespace)
    target = ((body.get("spec") or {}).get("shardSetRef") or {}).get("name")
    observed = (body.get("status") or {}).get("observedGeneration")
    if type == "DELETED" or body["metadata"].get("deletionTimestamp") or observed != body["metadata"].get("generation"):
        if isinstance(target, str):
            TRIGGERS.fire("ShardSet", namespace, target)
        TRIGGERS.fire(KIND, namespace, name)
