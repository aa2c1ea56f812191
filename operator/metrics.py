"""Prometheus metrics of the operator process (reconciles, errors, managed objects)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter(
    "chronoshard_operator_reconciles_total",
    "Reconciles by kind and outcome (success, degraded, invalid, error)",
    ["kind", "outcome"],
)
RECONCILE_SECONDS = Histogram(
    "chronoshard_operator_reconcile_duration_seconds",
    "Time one reconcile took, by kind",
    ["kind"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ERRORS = Counter(
    "chronoshard_operator_errors_total",
    "Errors while reconciling, by kind and reason",
    ["kind", "reason"],
)
MANAGED = Gauge(
    "chronoshard_operator_managed_objects",
    "Custom objects this operator process currently manages, by kind",
    ["kind"],
)
API_REQUESTS = Counter(
    "chronoshard_operator_api_requests_total",
    "Requests the operator's own Kubernetes client sent (not Kopf's watches, patches and events), by verb and "
    "resource; divided by chronoshard_operator_reconciles_total it is the API cost of a reconcile",
    ["verb", "resource"],
)
ROTATIONS = Counter(
    "chronoshard_keyrotation_rotations_total",
    "Key rotations that ended, by reason (scheduled, manual, compromise, ...) and outcome",
    ["reason", "outcome"],
)
ROTATION_PHASE_SECONDS = Histogram(
    "chronoshard_keyrotation_phase_duration_seconds",
    "Time a key rotation spent in each phase",
    ["phase"],
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 86400),
)
BLOCKS_REWRAPPED = Counter(
    "chronoshard_keyrotation_blocks_rewrapped_total",
    "Blocks re-encrypted onto a new key version by finished rotations, by ShardSet",
    ["namespace", "shardset"],
)
KEY_VERSION = Gauge(
    "chronoshard_shardset_key_version",
    "The primary table key version of each ShardSet",
    ["namespace", "shardset"],
)

ANOMALIES = Counter(
    "chronoshard_anomalies_detected_total",
    "Anomaly incidents the shards' shadows detected, counted once per incident when a ShadowPolicy first reports it",
    ["namespace", "shadowpolicy", "kind"],
)


def count_anomaly(namespace: str, policy: str, kind: str) -> None:
    """Count one newly reported incident of ``kind`` (encryption, mass-delete, ...)."""
    ANOMALIES.labels(namespace=namespace, shadowpolicy=policy, kind=kind or "unknown").inc()


def record_rotation(reason: str, outcome: str, namespace: str, shardset: str, blocks: int) -> None:
    """Count one finished rotation and the blocks it rewrapped."""
    ROTATIONS.labels(reason=reason, outcome=outcome).inc()
    BLOCKS_REWRAPPED.labels(namespace=namespace, shardset=shardset).inc(blocks)


def observe_phase(phase: str, seconds: float) -> None:
    """Record how long a rotation stayed in ``phase``."""
    ROTATION_PHASE_SECONDS.labels(phase=phase).observe(seconds)


def set_key_version(namespace: str, shardset: str, version: int) -> None:
    """Set a ShardSet's current primary key version."""
    KEY_VERSION.labels(namespace=namespace, shardset=shardset).set(version)


def observe_reconcile(kind: str, outcome: str, seconds: float) -> None:
    """Count one reconcile of ``kind`` with its outcome and duration."""
    RECONCILES.labels(kind=kind, outcome=outcome).inc()
    RECONCILE_SECONDS.labels(kind=kind).observe(seconds)


def count_api_request(verb: str, resource: str) -> None:
    """Count one request of the operator's own client (``GET``/``LIST``/``PATCH``/... on a resource plural)."""
    API_REQUESTS.labels(verb=verb, resource=resource).inc()


def record_error(kind: str, reason: str) -> None:
    """Count one error (e.g. ``api-409``) while reconciling ``kind``."""
    ERRORS.labels(kind=kind, reason=reason).inc()


def set_managed(kind: str, count: int) -> None:
    """Set how many objects of ``kind`` this process manages."""
    MANAGED.labels(kind=kind).set(count)


def start_metrics_server(port: int, host: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` on ``host:port`` in a background thread (in a pod: the pod IP, never 0.0.0.0)."""
    start_http_server(port, addr=host)


MIRROR_HEALTH_STATES = ("healthy", "degraded", "unavailable", "unknown")
MIRROR_LAG = Gauge(
    "chronoshard_mirrorset_lag_seconds",
    "Replication lag of each copy of each shard of a MirrorSet's members (0 on the primary)",
    ["namespace", "mirrorset", "shardset", "shard"],
)
MIRROR_HEALTH = Gauge(
    "chronoshard_mirrorset_copy_health",
    "1 for the health state each copy of each shard is in (healthy, degraded, unavailable, unknown), else 0",
    ["namespace", "mirrorset", "shardset", "shard", "state"],
)
MIRROR_OPERATIONS = Counter(
    "chronoshard_mirrorset_failovers_total",
    "Changes of primary a MirrorSet finished, by kind (failover, switchover, failback) and outcome",
    ["namespace", "mirrorset", "kind", "outcome"],
)
MIRROR_HELD_SECONDS = Histogram(
    "chronoshard_mirrorset_held_seconds",
    "Time writes were refused during a change of primary (fence to promotion), by kind",
    ["kind"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


def set_mirrorset_copy(namespace: str, mirrorset: str, shardset: str, shard: int, health: str,
                       lag_seconds: float | None) -> None:
    """Record one copy's health state and lag (``shardset`` is ``namespace/name``)."""
    labels = {"namespace": namespace, "mirrorset": mirrorset, "shardset": shardset, "shard": str(shard)}
    for state in MIRROR_HEALTH_STATES:
        MIRROR_HEALTH.labels(**labels, state=state).set(1 if state == health else 0)
    if lag_seconds is not None:
        MIRROR_LAG.labels(**labels).set(lag_seconds)


def count_mirrorset_operation(namespace: str, mirrorset: str, kind: str, outcome: str, held_seconds: float) -> None:
    """Count one finished failover/switchover/failback and how long writes were held."""
    MIRROR_OPERATIONS.labels(namespace=namespace, mirrorset=mirrorset, kind=kind, outcome=outcome).inc()
    MIRROR_HELD_SECONDS.labels(kind=kind).observe(held_seconds)


RESHARD_STEPS = Counter(
    "chronoshard_reshard_steps_total",
    "Reshard steps that ended, by ShardSet, step type (split, move, merge) and end phase (Completed, Failed)",
    ["namespace", "shardset", "type", "phase"],
)
RESHARDS = Counter(
    "chronoshard_reshards_total",
    "Reshards that ended, by ShardSet and end phase (Completed, Failed, RolledBack)",
    ["namespace", "shardset", "phase"],
)
RESHARD_CUTOVER_PAUSE = Histogram(
    "chronoshard_reshard_cutover_pause_seconds",
    "The write pause of each move's successful cutover (fence to new map on the source)",
    ["namespace", "shardset"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)
RESHARD_MOVE_BLOCKS = Gauge(
    "chronoshard_reshard_move_blocks",
    "The running move's blocks: copied so far, and total in the snapshot being copied",
    ["namespace", "reshard", "kind"],
)
RESHARD_MOVE_LAG = Gauge(
    "chronoshard_reshard_move_lag_seconds",
    "How far the running move's target is behind its source (0 once caught up)",
    ["namespace", "reshard"],
)


def record_reshard(namespace: str, reshard: str, shardset: str, steps_ended: Sequence[tuple[str, str]],
                   pauses_ms: Sequence[float], finished: str | None,
                   move_progress: tuple[int, int, float | None] | None) -> None:
    """Count what one Reshard status write changed (operator/reshard/plan.py ``transitions``)."""
    for step_type, phase in steps_ended:
        RESHARD_STEPS.labels(namespace=namespace, shardset=shardset, type=step_type, phase=phase).inc()
    for ms in pauses_ms:
        RESHARD_CUTOVER_PAUSE.labels(namespace=namespace, shardset=shardset).observe(ms / 1000.0)
    if finished:
        RESHARDS.labels(namespace=namespace, shardset=shardset, phase=finished).inc()
    if move_progress is not None:
        copied, total, lag = move_progress
        RESHARD_MOVE_BLOCKS.labels(namespace=namespace, reshard=reshard, kind="copied").set(copied)
        RESHARD_MOVE_BLOCKS.labels(namespace=namespace, reshard=reshard, kind="total").set(total)
        if lag is not None:
            RESHARD_MOVE_LAG.labels(namespace=namespace, reshard=reshard).set(lag)
    elif finished or steps_ended:
        forget_reshard_move(namespace, reshard)


def forget_reshard_move(namespace: str, reshard: str) -> None:
    """Drop a Reshard's move gauges (no move running, or the Reshard is gone)."""
    for kind in ("copied", "total"):
        try:
            RESHARD_MOVE_BLOCKS.remove(namespace, reshard, kind)
        except KeyError:
            pass
    try:
        RESHARD_MOVE_LAG.remove(namespace, reshard)
    except KeyError:
        pass


WEAVEPLAN_SPLIT_PROBABILITY = Gauge(
    "chronoshard_weaveplan_split_probability",
    "A WeavePlan's forecast probability that the partition splits within the prediction window",
    ["namespace", "weaveplan", "partition"],
)
WEAVEPLAN_PARTITION_BYTES = Gauge(
    "chronoshard_weaveplan_partition_bytes", "A partition's stored bytes as its shard's weaver last sampled them",
    ["namespace", "weaveplan", "partition"],
)
WEAVEPLAN_PARTITION_LOAD = Gauge(
    "chronoshard_weaveplan_partition_load_rps", "A partition's recent reads plus writes per second",
    ["namespace", "weaveplan", "partition"],
)
WEAVEPLAN_WEAVES = Gauge(
    "chronoshard_weaveplan_weaves", "Weaves (predicted splits being woven) over all shards of a WeavePlan",
    ["namespace", "weaveplan"],
)
_WEAVEPLAN_PARTITIONS: dict[tuple[str, str], set[str]] = {}


def set_weaveplan(namespace: str, plan: str, partitions: Sequence[Mapping[str, Any]], weaves: int) -> None:
    """A WeavePlan's per-partition gauges from its status rows; partitions no longer reported are dropped."""
    seen: set[str] = set()
    for row in partitions:
        pid = str(row.get("id"))
        seen.add(pid)
        probability = float((row.get("forecast") or {}).get("probability") or 0.0)
        WEAVEPLAN_SPLIT_PROBABILITY.labels(namespace, plan, pid).set(probability)
        WEAVEPLAN_PARTITION_BYTES.labels(namespace, plan, pid).set(float(row.get("bytes") or 0))
        WEAVEPLAN_PARTITION_LOAD.labels(namespace, plan, pid).set(float(row.get("loadRps") or 0.0))
    for pid in _WEAVEPLAN_PARTITIONS.get((namespace, plan), set()) - seen:
        _remove_partition(namespace, plan, pid)
    _WEAVEPLAN_PARTITIONS[(namespace, plan)] = seen
    WEAVEPLAN_WEAVES.labels(namespace, plan).set(weaves)


def _remove_partition(namespace: str, plan: str, pid: str) -> None:
    for gauge in (WEAVEPLAN_SPLIT_PROBABILITY, WEAVEPLAN_PARTITION_BYTES, WEAVEPLAN_PARTITION_LOAD):
        try:
            gauge.remove(namespace, plan, pid)
        except KeyError:
            pass


def forget_weaveplan(namespace: str, plan: str) -> None:
    """Drop a deleted WeavePlan's gauges."""
    for pid in _WEAVEPLAN_PARTITIONS.pop((namespace, plan), set()):
        _remove_partition(namespace, plan, pid)
    try:
        WEAVEPLAN_WEAVES.remove(namespace, plan)
    except KeyError:
        pass
