"""Read the WeavePlans of a namespace and pick the one in force for a ShardSet (API I/O only)."""

from __future__ import annotations

from kubernetes.client.exceptions import ApiException

from . import kube, naming
from .weaveselect import WeaveSelection, select_weave_plan


def weave_plan_in_force(namespace: str, shardset: str) -> WeaveSelection:
    """The WeavePlan that gives ``shardset`` its weaver containers; none when the CRD is not installed."""
    try:
        plans = kube.list_objects(naming.API_VERSION, "WeavePlan", namespace)
    except ApiException as exc:
        if exc.status == 404:  # CRD not installed (e.g. only shardsets.yaml applied): no weaver
            return WeaveSelection()
        raise
    return select_weave_plan(plans, shardset)
