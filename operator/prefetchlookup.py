"""Read the PrefetchPolicies of a namespace and pick the one in force for a ShardSet (API I/O only)."""

from __future__ import annotations

from kubernetes.client.exceptions import ApiException

from . import kube, naming
from .prefetchselect import Selection, select_policy


def policy_in_force(namespace: str, shardset: str) -> Selection:
    """The PrefetchPolicy that configures ``shardset``; none when the PrefetchPolicy CRD is not installed."""
    try:
        policies = kube.list_objects(naming.API_VERSION, "PrefetchPolicy", namespace)
    except ApiException as exc:
        if exc.status == 404:  # CRD not installed (e.g. only shardsets.yaml applied): no prefetching
            return Selection()
        raise
    return select_policy(policies, shardset)
