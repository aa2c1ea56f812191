"""PrefetchPolicy spec: the predictor sidecar's model, horizon, threshold, budgets and feedback loop."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from chronoshard.operator.spec.common import Fields, SpecError, parse_quantity

MODELS = ("successor", "learned", "auto")


@dataclass(frozen=True)
class Budget:
    """Upper bounds on prefetch traffic per shard."""

    bytes_per_second: int = 16 * 2**20
    requests_per_second: int = 200
    max_inflight: int = 16


@dataclass(frozen=True)
class Feedback:
    """The loop that measures hint outcomes and adjusts."""

    enabled: bool = True
    target_precision: float = 0.6
    window: timedelta = timedelta(minutes=10)


@dataclass(frozen=True)
class KeyPrefetch:
    """Prefetching of unwrapped table keys (the KEK belongs to the ShardSet: spec.keyEncryption)."""

    enabled: bool = False
    key_cache_size: int = 64


@dataclass(frozen=True)
class Training:
    """Background retraining of the learned model."""

    interval: timedelta = timedelta(minutes=15)
    history_window: timedelta = timedelta(hours=24)


@dataclass(frozen=True)
class PrefetchPolicySpec:
    """A parsed, defaulted PrefetchPolicy spec."""

    shardset: str
    model: str = "auto"
    horizon: timedelta = timedelta(minutes=5)
    score_threshold: float = 0.5
    budget: Budget = field(default_factory=Budget)
    cache_budget_bytes: int | None = None
    feedback: Feedback = field(default_factory=Feedback)
    key_prefetch: KeyPrefetch = field(default_factory=KeyPrefetch)
    training: Training = field(default_factory=Training)


def parse_prefetchpolicy(spec: Mapping[str, Any] | None) -> PrefetchPolicySpec:
    """Validate and default a PrefetchPolicy `spec` exactly as the CRD schema does; raise SpecError otherwise."""
    f = Fields.root(spec)
    shardset = f.ref("shardSetRef")
    model = f.string("model", default="auto", enum=MODELS)
    horizon = f.duration("horizon", default="5m", positive=True)
    threshold = f.number("scoreThreshold", default=0.5, minimum=0, maximum=1)

    b = f.obj("budget")
    budget = Budget(
        bytes_per_second=parse_quantity(b.quantity("bytesPerSecond", default="16Mi")),
        requests_per_second=b.integer("requestsPerSecond", default=200, minimum=1, maximum=100000),
        max_inflight=b.integer("maxInflight", default=16, minimum=1, maximum=1024),
    )
    b.done()
    cache_budget = f.quantity("cacheBudget")

    fb = f.obj("feedback")
    feedback = Feedback(
        enabled=fb.boolean("enabled", default=True),
        target_precision=fb.number("targetPrecision", default=0.6, minimum=0, maximum=1),
        window=fb.duration("window", default="10m", positive=True),
    )
    fb.done()

    k = f.obj("keyPrefetch")
    key_prefetch = KeyPrefetch(
        enabled=k.boolean("enabled", default=False),
        key_cache_size=k.integer("keyCacheSize", default=64, minimum=1, maximum=65536),
    )
    k.done()

    t = f.obj("training")
    training = Training(
        interval=t.duration("interval", default="15m", positive=True),
        history_window=t.duration("historyWindow", default="24h", positive=True),
    )
    t.done()
    f.done()

    if training.interval > training.history_window:
        raise SpecError("spec.training.interval", "training.interval must not be longer than training.historyWindow")
    if feedback.window < horizon:
        raise SpecError("spec.feedback.window", "feedback.window must be at least as long as horizon "
                        "(a hint's outcome is known only after the horizon)")
    return PrefetchPolicySpec(
        shardset=shardset,
        model=model,
        horizon=horizon,
        score_threshold=threshold,
        budget=budget,
        cache_budget_bytes=None if cache_budget is None else parse_quantity(cache_budget, "spec.cacheBudget"),
        feedback=feedback,
        key_prefetch=key_prefetch,
        training=training,
    )
