"""The ShardSet's status from what its children report (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..conditions import set_condition
from ..keyring import KeyringManifest


@dataclass(frozen=True)
class Observed:
    """What the controller saw in the cluster during one reconcile."""

    generation: int
    desired_shards: int
    statefulset: Mapping[str, Any] | None
    keyring: KeyringManifest | None
    partition_map: Mapping[str, Any] | None
    problems: Sequence[tuple[str, str]] = ()  # (reason, message) that make the ShardSet Degraded
    notices: Sequence[tuple[str, str]] = ()  # (reason, message) worth showing but not degrading
    wrapped_versions: Sequence[int] = ()  # key versions stored wrapped under the KEK


def shardset_status(observed: Observed, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """The full ``status`` to write: phase, conditions, shard counts, key versions, partition map."""
    prev = previous or {}
    sts_status = (observed.statefulset or {}).get("status") or {}
    sts_gen = (observed.statefulset or {}).get("metadata", {}).get("generation")
    ready = int(sts_status.get("readyReplicas") or 0)
    updated = int(sts_status.get("updatedReplicas") or 0)
    current_replicas = int(sts_status.get("replicas") or 0)
    sts_observed = sts_status.get("observedGeneration")
    desired = observed.desired_shards
    rolled_out = (
        observed.statefulset is not None
        and sts_observed == sts_gen
        and ready == desired
        and updated == desired
        and current_replicas == desired
    )
    gen = observed.generation
    conds = list(prev.get("conditions") or [])

    if observed.problems:
        reason, message = observed.problems[0]
        extra = "; ".join(m for _, m in observed.problems[1:])
        conds = set_condition(conds, "Degraded", True, reason, f"{message}{'; ' + extra if extra else ''}", gen)
    else:
        conds = set_condition(conds, "Degraded", False, "AsExpected", "No problems found", gen)

    if rolled_out:
        conds = set_condition(conds, "Progressing", False, "RolledOut", f"All {desired} shard(s) are up to date",
                              gen)
        conds = set_condition(conds, "Ready", True, "AllShardsReady", f"{ready}/{desired} shards ready", gen)
    else:
        what = "Creating" if observed.statefulset is None or current_replicas == 0 else "Rolling out"
        conds = set_condition(conds, "Progressing", True, what.replace(" ", ""),
                              f"{what}: {ready}/{desired} shards ready, {updated} updated", gen)
        conds = set_condition(conds, "Ready", False, "ShardsNotReady", f"{ready}/{desired} shards ready", gen)

    if observed.problems:
        phase = "Degraded"
    elif rolled_out:
        phase = "Ready"
    elif ready == 0:
        phase = "Creating"
    else:
        phase = "Progressing"

    status: dict[str, Any] = {
        "phase": phase,
        "observedGeneration": gen,
        "conditions": conds,
        "shards": {"desired": desired, "ready": ready},
        "readyShards": f"{ready}/{desired}",
    }
    if observed.keyring is not None:
        status["keyVersion"] = observed.keyring.primary
        status["keyVersions"] = [{"id": v.id, "state": v.state, "wrapped": v.id in observed.wrapped_versions}
                                 for v in observed.keyring.versions]
    if observed.partition_map is not None:
        status["partitionMap"] = dict(observed.partition_map)
    selector = sts_status.get("selector") or prev.get("selector")
    if selector:
        status["selector"] = selector
    return status
