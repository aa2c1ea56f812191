"""MirrorSet spec: a source ShardSet, its mirrors, replication, health, prediction, failover, consistency, tokens."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from chronoshard.operator.spec.common import NAME_PATTERN, Fields, SpecError, check_str, parse_duration

REPLICATION_MODES = ("async", "sync")
PREDICTION_MODELS = ("logistic-regression", "gradient-boosting")
FAILOVER_POLICIES = ("automatic", "predictive", "manual")
FAILBACK_POLICIES = ("automatic", "manual")
DEFAULT_WINDOWS = ("5m", "15m", "30m")
# A primary renews its Lease every third of it; below 3s a renewal round trip could eat a whole period.
MIN_LEASE_DURATION = timedelta(seconds=3)
# One-shot requests on the MirrorSet, each handled once per distinct value (recorded in the status).
SWITCHOVER_ANNOTATION = "chronoshard.io/switchover-to"  # value: <name> or <namespace>/<name> of a member
FAILBACK_ANNOTATION = "chronoshard.io/failback"  # value: any token; switches back to spec.sourceRef


@dataclass(frozen=True)
class Mirror:
    """One mirror ShardSet; namespace None means the MirrorSet's own namespace."""

    shardset: str
    namespace: str | None = None
    zone: str | None = None


@dataclass(frozen=True)
class Health:
    """Health monitor thresholds."""

    latency_threshold_ms: int = 250
    error_rate_threshold: float = 0.05
    capacity_threshold: float = 0.9
    probe_interval: timedelta = timedelta(seconds=10)
    failure_threshold: int = 3  # consecutive failed probes => unavailable


@dataclass(frozen=True)
class Prediction:
    """The predicted-unavailability model."""

    windows: tuple[timedelta, ...] = tuple(timedelta(minutes=m) for m in (5, 15, 30))
    unavailability_threshold: float = 0.7
    model: str = "gradient-boosting"


@dataclass(frozen=True)
class Tokens:
    """Lifetimes of the three token tiers."""

    temporary_ttl: timedelta = timedelta(minutes=5)
    provisional_ttl: timedelta = timedelta(minutes=15)
    valid_ttl: timedelta = timedelta(hours=1)


@dataclass(frozen=True)
class MirrorSetSpec:
    """A parsed, defaulted MirrorSet spec."""

    source: str
    mirrors: tuple[Mirror, ...]
    replication_mode: str = "async"
    max_lag: timedelta = timedelta(seconds=30)
    sync_timeout: timedelta = timedelta(seconds=10)
    hold_timeout: timedelta = timedelta(seconds=5)
    health: Health = field(default_factory=Health)
    prediction: Prediction = field(default_factory=Prediction)
    failover_policy: str = "predictive"
    failback: str = "manual"
    lease_duration: timedelta = timedelta(seconds=15)
    switchover_timeout: timedelta = timedelta(seconds=30)
    consistency_interval: timedelta = timedelta(minutes=10)
    tokens: Tokens = field(default_factory=Tokens)

    def mirror_namespace(self, mirror: Mirror, own_namespace: str) -> str:
        """The namespace of `mirror` for a MirrorSet living in `own_namespace`."""
        return mirror.namespace or own_namespace


def parse_mirrorset(spec: Mapping[str, Any] | None) -> MirrorSetSpec:
    """Validate and default a MirrorSet `spec` exactly as the CRD schema does; raise SpecError otherwise."""
    f = Fields.root(spec)
    source = f.ref("sourceRef")
    mirrors = tuple(_mirror(Fields(item, f"spec.mirrors[{i}]"))
                    for i, item in enumerate(f.array("mirrors", required=True, min_items=1, max_items=8)))

    r = f.obj("replication")
    mode = r.string("mode", default="async", enum=REPLICATION_MODES)
    max_lag = r.duration("maxLag", default="30s", positive=True)
    sync_timeout = r.duration("syncTimeout", default="10s", positive=True)
    hold_timeout = r.duration("holdTimeout", default="5s", positive=True)
    r.done()

    h = f.obj("health")
    health = Health(
        latency_threshold_ms=h.integer("latencyThresholdMs", default=250, minimum=1, maximum=600000),
        error_rate_threshold=h.number("errorRateThreshold", default=0.05, minimum=0, maximum=1),
        capacity_threshold=h.number("capacityThreshold", default=0.9, minimum=0, maximum=1),
        probe_interval=h.duration("probeInterval", default="10s", positive=True),
        failure_threshold=h.integer("failureThreshold", default=3, minimum=1, maximum=100),
    )
    h.done()

    p = f.obj("prediction")
    prediction = Prediction(
        windows=_windows(p),
        unavailability_threshold=p.number("unavailabilityThreshold", default=0.7, minimum=0, maximum=1),
        model=p.string("model", default="gradient-boosting", enum=PREDICTION_MODELS),
    )
    p.done()

    fo = f.obj("failover")
    policy = fo.string("policy", default="predictive", enum=FAILOVER_POLICIES)
    failback = fo.string("failback", default="manual", enum=FAILBACK_POLICIES)
    lease_duration = fo.duration("leaseDuration", default="15s")
    if lease_duration < MIN_LEASE_DURATION:  # the schema's CEL rule `>= 3s`
        raise SpecError(fo.sub("leaseDuration"), "failover.leaseDuration must be a duration of at least 3s")
    switchover_timeout = fo.duration("switchoverTimeout", default="30s", positive=True)
    fo.done()

    c = f.obj("consistency")
    consistency_interval = c.duration("interval", default="10m", positive=True)
    c.done()

    t = f.obj("tokens")
    tokens = Tokens(
        temporary_ttl=t.duration("temporaryTTL", default="5m", positive=True),
        provisional_ttl=t.duration("provisionalTTL", default="15m", positive=True),
        valid_ttl=t.duration("validTTL", default="1h", positive=True),
    )
    t.done()
    f.done()

    for m in mirrors:
        if m.namespace is None and m.shardset == source:
            raise SpecError("spec.mirrors", "a mirror must not be the source ShardSet itself "
                            "(mirrors[].shardSetRef.name equals sourceRef.name in the same namespace)")
    if len({(m.namespace, m.shardset) for m in mirrors}) != len(mirrors):
        raise SpecError("spec.mirrors",
                        "mirrors must be distinct (the same shardSetRef.name and namespace appear twice)")
    return MirrorSetSpec(
        source=source,
        mirrors=mirrors,
        replication_mode=mode,
        max_lag=max_lag,
        sync_timeout=sync_timeout,
        hold_timeout=hold_timeout,
        health=health,
        prediction=prediction,
        failover_policy=policy,
        failback=failback,
        lease_duration=lease_duration,
        switchover_timeout=switchover_timeout,
        consistency_interval=consistency_interval,
        tokens=tokens,
    )


def _mirror(f: Fields) -> Mirror:
    name = f.ref("shardSetRef")
    namespace = f.string("namespace", pattern=NAME_PATTERN, max_length=63)
    zone = f.string("zone", max_length=63)
    f.done()
    return Mirror(shardset=name, namespace=namespace, zone=zone)


def _windows(p: Fields) -> tuple[timedelta, ...]:
    raw = p.array("windows", min_items=1, max_items=8, default=list(DEFAULT_WINDOWS))
    seen: list[str] = []
    windows: list[timedelta] = []
    for i, item in enumerate(raw):
        path = f"spec.prediction.windows[{i}]"
        text = check_str(item, path, max_length=32)
        if text in seen:  # x-kubernetes-list-type: set
            raise SpecError(path, f"Duplicate value: {text!r}")
        seen.append(text)
        window = parse_duration(text, path)
        if window <= timedelta(0):
            raise SpecError(path, "prediction.windows entries must be durations longer than 0s")
        windows.append(window)
    return tuple(windows)
