"""Read the ShadowPolicies of a namespace and pick the one in force for a ShardSet (API I/O only)."""

from __future__ import annotations

from kubernetes.client.exceptions import ApiException

from . import kube, naming
from .shadowselect import ShadowSelection, select_shadow_policy


def shadow_policy_in_force(namespace: str, shardset: str) -> ShadowSelection:
    """The ShadowPolicy that gives ``shardset`` its shadow containers; none when the CRD is not installed."""
    try:
        policies = kube.list_objects(naming.API_VERSION, "ShadowPolicy", namespace)
    except ApiException as exc:
        if exc.status == 404:  # CRD not installed (e.g. only shardsets.yaml applied): no shadow
            return ShadowSelection()
        raise
    return select_shadow_policy(policies, shardset)
