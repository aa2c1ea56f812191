"""The WeavePlan's status, conditions and events from one observation (pure; docs/weaving.md).

Phases: Failed (invalid spec), Pending (no ShardSet, another plan in force, config not yet written, no weaver
reporting), Splitting (a Reshard this plan made is running), Weaving (weaves exist), Forecasting (mode forecast,
or no ShadowPolicy to weave from), Idle (nothing forecast above the threshold).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chronoshard.shardnode.keyspace.partitioning import PartitionMap

from ..conditions import set_condition
from ..spec.weaveplan import WeavePlanSpec
from ..weaveselect import WeaveSelection
from .splits import FINISHED, SplitDecision
from .status import Aggregate, above, lead, parse_time, probability

MAX_SPLITS = 64
KIND = "WeavePlan"


@dataclass
class Observation:
    """What the API server says about a plan's surroundings (read in one blocking step)."""

    shardset: str | None = None
    spec: WeavePlanSpec | None = None
    spec_error: str | None = None
    shardset_found: bool = False
    selection: WeaveSelection = field(default_factory=WeaveSelection)
    config_applied: bool = False
    shadow_policy: str | None = None  # the ShadowPolicy in force on the ShardSet
    expected: int = 0
    pods: dict[int, dict[str, Any]] = field(default_factory=dict)
    pmap: PartitionMap | None = None
    reshards: list[dict[str, Any]] = field(default_factory=list)
    grace_period: str | None = None  # the ShardSet's spec.partitioning.gracePeriod, as written


def keep_silent_shards(agg: Aggregate, old: Mapping[str, Any], silent: set[int]) -> Aggregate:
    """The rows of the shards asked that did not answer this pass (``silent``) kept from the previous status, so a
    weaver's restart neither empties the report nor announces its weaves as dropped (a shard no longer asked, after
    a scale-down, keeps none)."""
    parts = agg.partitions + [p for p in old.get("partitions") or [] if p.get("shard") in silent]
    weaves = agg.weaves + [w for w in old.get("weaves") or [] if w.get("shard") in silent]
    parts.sort(key=lambda r: (-probability(r), r["id"]))
    far = "9999-12-31T23:59:59Z"
    weaves.sort(key=lambda w: (w.get("predictedTime") or far, w["partition"], w["id"]))
    return Aggregate(parts, weaves, agg.last_forecast_time or old.get("lastForecastTime"), agg.reporting,
                     agg.shadow, agg.problems, agg.warnings)


def split_rows(old: Sequence[Mapping[str, Any]], decision: SplitDecision, made: bool, now: str,
               reshards: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``status.splits``: the Reshards this plan created with their phase as last seen (newest 64)."""
    rows = [dict(r) for r in old]
    if made and decision.create is not None:
        c = decision.create
        if not any(r.get("reshard") == c["name"] for r in rows):
            rows.append({"partition": c["partition"], "reshard": c["name"], "splitKey": c["splitKey"], "time": now,
                         "phase": "Pending"})
    phases = {r["metadata"]["name"]: (r.get("status") or {}).get("phase") or "Pending" for r in reshards}
    for r in rows:
        if r.get("reshard") in phases:
            r["phase"] = phases[r["reshard"]]
    return rows[-MAX_SPLITS:]


def running_split(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The name of a Reshard of this plan not yet finished."""
    for r in rows:
        if r.get("phase") not in FINISHED:
            return str(r.get("reshard"))
    return None


class _Conditions:
    def __init__(self, old: list[dict[str, Any]], gen: int, now: str | None) -> None:
        self.items, self.gen, self.now = old, gen, now

    def set(self, type_: str, ok: bool, reason: str, message: str) -> None:
        self.items = set_condition(self.items, type_, ok, reason, message, self.gen, self.now)


def _pending(obs: Observation, name: str, namespace: str) -> tuple[str, str] | None:
    """(reason, message) when the plan cannot run yet."""
    target = obs.shardset or "?"
    if not obs.shardset_found:
        return "ShardSetMissing", f"ShardSet {target} (spec.shardSetRef.name) does not exist in namespace {namespace}"
    if obs.selection.name != name:
        return ("AnotherPlanInForce", f"WeavePlan {obs.selection.name} is older and already forecasts ShardSet "
                f"{target}; this plan takes effect only when that one is deleted")
    if not obs.config_applied:
        return "ConfigPending", f"waiting for ShardSet {target}'s config ConfigMap to carry this plan's weave.json"
    return None


def _weaving(conds: _Conditions, spec: WeavePlanSpec, obs: Observation, agg: Aggregate) -> None:
    if spec.mode == "forecast":
        conds.set("Weaving", False, "ModeForecast", "mode forecast: splits are forecast, nothing is woven")
    elif obs.shadow_policy is None:
        conds.set("Weaving", False, "ShadowPolicyRequired",
                  f"ShardSet {spec.shardset} has no ShadowPolicy: woven snapshots are built from its history, so "
                  "this plan only forecasts until one exists")
    elif agg.weaves:
        conds.set("Weaving", True, "Weaving", f"{len(agg.weaves)} predicted split(s) being woven")
    else:
        conds.set("Weaving", False, "NoSplitPredicted",
                  f"no partition is forecast to split with at least {spec.confidence_threshold:g}")


def _splitting(conds: _Conditions, spec: WeavePlanSpec, decision: SplitDecision, running: str | None) -> None:
    if spec.mode != "split":
        conds.set("Splitting", False, "ModeNotSplit", f"mode {spec.mode}: splits are not carried out")
    elif running is not None:
        conds.set("Splitting", True, "SplitRunning", f"Reshard {running} carries out a predicted split")
    elif decision.waiting_for is not None:
        conds.set("Splitting", False, "ReshardRunning",
                  f"a split is due but Reshard {decision.waiting_for} of the ShardSet runs (one at a time)")
    elif decision.skips:
        conds.set("Splitting", False, decision.skips[0].reason, "; ".join(s.message for s in decision.skips[:5]))
    else:
        conds.set("Splitting", False, "NoSplitPredicted", "no predicted split is due")


def _phase(spec: WeavePlanSpec, obs: Observation, agg: Aggregate, running: str | None) -> str:
    if running is not None:
        return "Splitting"
    if agg.weaves:
        return "Weaving"
    if spec.mode == "forecast" or obs.shadow_policy is None:
        return "Forecasting"
    return "Idle"


def build_status(body: Mapping[str, Any], obs: Observation, agg: Aggregate, what_if: list[dict[str, Any]],
                 decision: SplitDecision, splits: list[dict[str, Any]], now: str | None = None) -> dict[str, Any]:
    """The plan's status (figures, phase and the conditions Ready, Forecasting, Weaving, Splitting)."""
    meta = body["metadata"]
    gen = int(meta.get("generation") or 1)
    old = body.get("status") or {}
    conds = _Conditions(list(old.get("conditions") or []), gen, now)
    status: dict[str, Any] = {"observedGeneration": gen}
    if obs.spec is None:
        status["phase"] = "Failed"
        conds.set("Ready", False, "InvalidSpec", obs.spec_error or "invalid spec")
        status["conditions"] = conds.items
        return status
    pending = _pending(obs, meta["name"], meta["namespace"])
    if pending is not None:
        status["phase"] = "Pending"
        conds.set("Ready", False, *pending)
        status["conditions"] = conds.items
        return status
    status.update(agg.fields())
    status["whatIf"] = what_if
    if splits:
        status["splits"] = splits
    running = running_split(splits)
    status["phase"] = _phase(obs.spec, obs, agg, running) if agg.reporting else "Pending"
    if agg.problems and not agg.reporting:
        conds.set("Ready", False, "WeaversNotReporting", "; ".join(agg.problems[:5]))
    elif agg.problems:
        conds.set("Ready", False, "WeaverErrors", "; ".join(agg.problems[:5]))
    else:
        # A weaver's recent errors (its node not up yet, a pass that failed) are shown, not a failure of the plan.
        recent = f"; recent weaver errors: {'; '.join(agg.warnings[-3:])}" if agg.warnings else ""
        conds.set("Ready", True, "WeaversReporting", f"all {obs.expected} shard weaver(s) report{recent}")
    if agg.last_forecast_time:
        conds.set("Forecasting", True, "Forecasting", f"last forecast {agg.last_forecast_time}")
    else:
        conds.set("Forecasting", False, "NoForecastYet", "no weaver has forecast yet (the first runs one interval "
                  "after it starts)")
    _weaving(conds, obs.spec, obs, agg)
    _splitting(conds, obs.spec, decision, running)
    status["conditions"] = conds.items
    return status


Events = list[tuple[str, str, str]]


def _forecast_message(row: Mapping[str, Any]) -> str:
    f = row.get("forecast") or {}
    when = f.get("predictedTime") or "within the window"
    return (f"partition {row['id']} (shard {row['shard']}) is forecast to split by {when} with probability "
            f"{probability(row):.2f} ({f.get('reason') or 'size'}, model {f.get('model') or '?'})")


def transitions(old: Mapping[str, Any], new: Mapping[str, Any], spec: WeavePlanSpec | None,
                decision: SplitDecision, made: bool) -> Events:
    """Forecast, Woven, WeaveDropped, SplitScheduled and SplitStarted events for one status change."""
    if spec is None or "partitions" not in new:
        return []
    events: Events = []
    before = above(old.get("partitions") or [], spec.confidence_threshold)
    for row in new["partitions"]:
        if probability(row) >= spec.confidence_threshold and row.get("forecast") and int(row["id"]) not in before:
            events.append(("Normal", "Forecast", _forecast_message(row)))
    old_ids = {w["id"]: w for w in old.get("weaves") or []}
    new_ids = {w["id"]: w for w in new.get("weaves") or []}
    for wid, w in new_ids.items():
        if wid not in old_ids:
            events.append(("Normal", "Woven", f"weave {wid}: partition {w['partition']} split at {w['splitKey']} "
                           f"(confidence {w['confidence']:.2f}), {w['snapshots']} point(s)"))
            due = parse_time(w.get("predictedTime"))
            if spec.mode == "split" and due is not None:
                events.append(("Normal", "SplitScheduled",
                               f"partition {w['partition']} will be split at {_fmt(due - lead(spec.interval))} "
                               f"if still forecast with at least {spec.confidence_threshold:g}"))
    for wid, w in old_ids.items():
        if wid not in new_ids:
            events.append(("Normal", "WeaveDropped", f"weave {wid} of partition {w.get('partition')} dropped"))
    if made and decision.create is not None:
        c = decision.create
        events.append(("Normal", "SplitStarted", f"created Reshard {c['name']}: split partition {c['partition']} at "
                       f"{c['splitKey']}" + _move_text(c)))
    return events


def _fmt(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _move_text(create: Mapping[str, Any]) -> str:
    steps = create["spec"]["steps"]
    if len(steps) < 2:
        return ", both halves stay"
    move = steps[1]["move"]
    return f", then move partition {move['partition']} to shard {move['toShard']}"
