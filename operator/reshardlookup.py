"""Whether a Reshard of a ShardSet is moving data (API I/O and one small rule): a KeyRotation does not start its
rewrap then (docs/resharding.md, "A key rotation and a move do not run on the same ShardSet at once").

Shared by the KeyRotation controller; the Reshard controller's own side (a move waits for a rotation in progress)
is in operator/reshard/plan.py. Only a move past ``Pending`` counts: a Reshard running a split, or a move still
waiting for the rotation, does not hold a rotation back, so the two never wait for each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from . import kube, naming

MOVING_PHASES = frozenset({"Copying", "CatchingUp", "Verifying", "CuttingOver", "RollingBack"})


def moving(reshards: Iterable[Mapping[str, Any]], shardset: str) -> str | None:
    """The name of a Running Reshard of ``shardset`` whose current step is a move copying, catching up, verifying,
    cutting over or rolling back; None when there is none."""
    for r in reshards:
        status = r.get("status") or {}
        if r["metadata"].get("deletionTimestamp"):
            continue  # being deleted: its move is rolled back
        if ((r.get("spec") or {}).get("shardSetRef") or {}).get("name") != shardset or status.get("phase") != "Running":
            continue
        current = status.get("currentStep")
        if any(row.get("index") == current and row.get("type") == "move" and row.get("phase") in MOVING_PHASES
               for row in status.get("steps") or []):  # a split's or merge's CuttingOver moves no data
            return str(r["metadata"]["name"])
    return None


def reshard_moving(namespace: str, shardset: str) -> str | None:
    """``moving`` over the Reshards of ``namespace`` ([] without the Reshard CRD)."""
    try:
        return moving(kube.list_objects(naming.API_VERSION, "Reshard", namespace), shardset)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def running(reshards: Iterable[Mapping[str, Any]], shardset: str) -> str | None:
    """The name of a Running Reshard of ``shardset`` with steps left (it pushes maps: a rescale of the map waits
    for it); one whose steps are all done only purges moved ranges and changes no map."""
    for r in reshards:
        status = r.get("status") or {}
        if (((r.get("spec") or {}).get("shardSetRef") or {}).get("name") == shardset and not
                r["metadata"].get("deletionTimestamp") and status.get("phase") == "Running"
                and int(status.get("currentStep") or 0) < len((r.get("spec") or {}).get("steps") or [])):
            return str(r["metadata"]["name"])
    return None


def reshard_running(namespace: str, shardset: str) -> str | None:
    """``running`` over the Reshards of ``namespace`` (None without the Reshard CRD)."""
    try:
        return running(kube.list_objects(naming.API_VERSION, "Reshard", namespace), shardset)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
