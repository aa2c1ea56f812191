"""One data-moving operation at a time per ShardSet: a KeyRotation's rewrap and a Reshard's move take the Lease
``<shardset>-data-operation`` (coordination.k8s.io/v1) before they start, and give it back when they are done.

Why a lock and not only a check: each side used to look at the other's status before starting, so two passes
that ran at the same moment could both see the other idle and both start - a rewrap that then retires a key
version the moved frames still need (docs/resharding.md, "A key rotation and a move do not run on the same ShardSet
at once"). Taking the Lease is a create or a patch conditional on its resourceVersion, so of two such passes exactly
one wins. A holder that ended without giving it back (a crash, a failure, a deletion) is recognised by the
caller's ``still_holds`` rule and the Lease is taken over, again conditionally.

Shared by the KeyRotation and Reshard controllers; imports no controller package.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from . import kube, naming

API_VERSION = "coordination.k8s.io/v1"
KIND = "Lease"
SUFFIX = "-data-operation"
BUSY = "another operation (the lock changed while it was taken)"
# When a holder named in the Lease may still be moving or rewrapping data, by kind (phase values, not the enums:
# no controller package is imported here). A KeyRotation holds the lock from Rewrapping on and gives it back when
# its blocks are rewrapped; one that could not give it back is judged by these phases (every phase of a rotation
# in progress), a Reshard by being Running - both err on the side of waiting.
BUSY_PHASES: dict[str, frozenset[str]] = {
    "KeyRotation": frozenset({"Distributing", "AwaitingLoad", "Promoting", "AwaitingPromotion", "Rewrapping",
                              "Transition", "Verifying", "Retiring"}),
    "Reshard": frozenset({"Running"}),
}


def lease_name(shardset: str) -> str:
    """The ShardSet's data-operation Lease."""
    return f"{shardset}{SUFFIX}"


def holder(kind: str, name: str) -> str:
    """The holderIdentity an operation writes: ``KeyRotation/<name>`` or ``Reshard/<name>``."""
    return f"{kind}/{name}"


def parse_holder(identity: str) -> tuple[str, str] | None:
    """(kind, name) of a holderIdentity this module wrote; None for anything else."""
    kind, sep, name = identity.partition("/")
    return (kind, name) if sep and kind and name else None


def _micro_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(namespace: str, shardset: str, identity: str | None, owner_uid: str | None,
               resource_version: str | None, now: dt.datetime) -> dict[str, Any]:
    """The Lease with ``identity`` as holder (None: released); the resourceVersion, when given, is a precondition."""
    meta: dict[str, Any] = {"name": lease_name(shardset), "namespace": namespace,
                            "labels": naming.common_labels(shardset, "data-operation")}
    if resource_version:
        meta["resourceVersion"] = resource_version
    if owner_uid:  # the Lease goes with its ShardSet
        meta["ownerReferences"] = [{"apiVersion": naming.API_VERSION, "kind": "ShardSet", "name": shardset,
                                    "uid": owner_uid, "controller": False, "blockOwnerDeletion": False}]
    spec: dict[str, Any] = {"holderIdentity": identity}
    if identity is not None:
        spec["acquireTime"] = _micro_time(now)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": spec}


def acquire(namespace: str, shardset: str, identity: str, still_holds: Callable[[str], bool],
            now: dt.datetime | None = None) -> str | None:
    """Take the ShardSet's lock for ``identity``: None once it is ours (also when it already was), else why not -
    the other holder, which ``still_holds`` says is still at work, or ``BUSY`` when the Lease changed under us
    (look again next pass). Blocking (API calls)."""
    now = now or dt.datetime.now(dt.UTC)
    lease = kube.get(API_VERSION, KIND, namespace, lease_name(shardset))
    current = str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")
    if current == identity:
        return None
    if current and still_holds(current):
        return current
    try:
        if lease is None:
            shardset_obj = kube.get(naming.API_VERSION, "ShardSet", namespace, shardset)
            uid = ((shardset_obj or {}).get("metadata") or {}).get("uid")
            return None if kube.create(lease_body(namespace, shardset, identity, uid, None, now)) else BUSY
        rv = (lease.get("metadata") or {}).get("resourceVersion")
        body = lease_body(namespace, shardset, identity, None, rv, now)
        kube.merge_patch(API_VERSION, KIND, namespace, lease_name(shardset),
                         {"metadata": {"resourceVersion": rv}, "spec": body["spec"]})
    except ApiException as exc:
        if exc.status == 409:
            return BUSY
        raise
    return None


def release(namespace: str, shardset: str, identity: str) -> bool:
    """Give the lock back if ``identity`` holds it; False when it did not (nothing changed). Blocking."""
    lease = kube.get(API_VERSION, KIND, namespace, lease_name(shardset))
    if str(((lease or {}).get("spec") or {}).get("holderIdentity") or "") != identity:
        return False
    rv = ((lease or {}).get("metadata") or {}).get("resourceVersion")
    try:
        kube.merge_patch(API_VERSION, KIND, namespace, lease_name(shardset),
                         {"metadata": {"resourceVersion": rv}, "spec": {"holderIdentity": None, "acquireTime": None}})
    except ApiException as exc:
        if exc.status in (404, 409):  # gone, or taken over meanwhile: not ours any more either way
            return False
        raise
    return True


def object_still_holds(obj: Mapping[str, Any] | None, busy_phases: frozenset[str]) -> bool:
    """The rule both controllers use for the other's holder: it exists, is not being deleted, and its
    ``status.phase`` is one in which it may be moving or rewrapping data."""
    if obj is None or (obj.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return str((obj.get("status") or {}).get("phase") or "") in busy_phases


def holder_still_holds(namespace: str, identity: str,
                       busy_phases: Mapping[str, frozenset[str]] = BUSY_PHASES) -> bool:
    """Whether the operation ``identity`` names still needs the lock (``busy_phases`` per kind). An identity of
    an unknown kind is kept (never taken over): only this module's own holders are judged. Blocking."""
    parsed = parse_holder(identity)
    if parsed is None or parsed[0] not in busy_phases:
        return True
    kind, name = parsed
    return object_still_holds(kube.get(naming.API_VERSION, kind, namespace, name), busy_phases[kind])


def take(namespace: str, shardset: str, kind: str, name: str) -> str | None:
    """``acquire`` for the operation ``kind``/``name`` with the standard still-holds rule. Blocking."""
    return acquire(namespace, shardset, holder(kind, name), lambda other: holder_still_holds(namespace, other))


def give_back(namespace: str, shardset: str, kind: str, name: str) -> bool:
    """``release`` for the operation ``kind``/``name``. Blocking."""
    return release(namespace, shardset, holder(kind, name))
