"""PrefetchPolicy → the predictor.json document and the cache.json settings it implies (pure).

Shared by the ShardSet controller, which renders these into the ``<shardset>-config`` ConfigMap (it stays the
only writer), and the PrefetchPolicy controller, which checks that the mounted file carries them; the keys follow
docs/prefetching.md.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from .spec.prefetchpolicy import PrefetchPolicySpec

# The ranges the predictor accepts (shardnode/predictor/config.py). The CRD allows wider durations and
# quantities; a value outside these would make the predictor refuse the whole file and keep its previous
# settings, so the nearest accepted value is written instead.
HORIZON_RANGE = (0.1, 86400.0)
TRAINING_INTERVAL_RANGE = (1.0, 7 * 86400.0)
FEEDBACK_WINDOW_RANGE = (0.0, 7 * 86400.0)
HISTORY_WINDOW_RANGE = (0.0, 365 * 86400.0)
MAX_BYTES_PER_SECOND = 10**12


def _seconds(td: timedelta, bounds: tuple[float, float]) -> float:
    return min(max(float(td.total_seconds()), bounds[0]), bounds[1])


def predictor_config(policy: PrefetchPolicySpec) -> dict[str, Any]:
    """predictor.json for ``policy`` (seconds, bytes, prefetching on), within the predictor's ranges."""
    return {
        "enabled": True,
        # The predictor accepts the policy's own model names (successor → stats, learned → gbm).
        "model": policy.model,
        "horizonSeconds": _seconds(policy.horizon, HORIZON_RANGE),
        "scoreThreshold": policy.score_threshold,
        "budget": {
            "requestsPerSecond": policy.budget.requests_per_second,
            "bytesPerSecond": min(policy.budget.bytes_per_second, MAX_BYTES_PER_SECOND),
        },
        "feedback": {
            "enabled": policy.feedback.enabled,
            "targetPrecision": policy.feedback.target_precision,
            "windowSeconds": _seconds(policy.feedback.window, FEEDBACK_WINDOW_RANGE),
        },
        "training": {
            "intervalSeconds": _seconds(policy.training.interval, TRAINING_INTERVAL_RANGE),
            "historyWindowSeconds": _seconds(policy.training.history_window, HISTORY_WINDOW_RANGE),
        },
        # Only the switch: the key pipeline's threshold and rate keep the predictor's defaults.
        "keyPrefetch": {"enabled": policy.key_prefetch.enabled},
    }


def cache_overrides(policy: PrefetchPolicySpec, cache_bytes: int) -> dict[str, Any]:
    """cache.json settings a policy implies for a cache of ``cache_bytes``.

    ``maxInflight`` bounds concurrent prefetch fetches, which is the cache's prefetch worker count (the cache
    starts its workers at start-up, so a change applies when the cache restarts). ``cacheBudget`` caps the
    bytes of unread prefetched blocks; the cache expresses that as a fraction of its byte budget, and the CRD
    says an unset cacheBudget means the whole cache. ``keyCacheSize`` is the number of unwrapped table keys
    the cache's key cache holds.
    """
    if policy.cache_budget_bytes is None or cache_bytes <= 0:
        fraction = 1.0
    else:
        fraction = min(1.0, policy.cache_budget_bytes / cache_bytes)
    return {"prefetchWorkers": policy.budget.max_inflight, "prefetchBudgetFraction": fraction,
            "keyCacheSize": policy.key_prefetch.key_cache_size}
