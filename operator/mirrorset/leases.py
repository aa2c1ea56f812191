"""A primary node's Lease ``<shardset>-<i>-primary`` (coordination.k8s.io/v1): is it expired, and taking it over.

The operator promotes a mirror for an unreachable primary only once that primary's Lease has expired; it then
writes its own holder ``chronoshard-operator/fenced-term-<T>`` into the Lease, so a primary that comes back cannot
renew it (it finds the Lease held by another and stops for good). The decisions are pure; ``read`` and
``take_over`` are the two API calls.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from .. import kube
from .plan import parse_time

API_VERSION = "coordination.k8s.io/v1"
KIND = "Lease"
FENCED_HOLDER_PREFIX = "chronoshard-operator/fenced-term-"


def micro_time(t: dt.datetime) -> str:
    """A Lease's MicroTime (microsecond precision, ``Z``)."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fenced_holder(term: int) -> str:
    """The holderIdentity the operator writes into a dead primary's Lease when it takes it over."""
    return f"{FENCED_HOLDER_PREFIX}{term}"


def expired(lease: Mapping[str, Any] | None, now: dt.datetime) -> bool:
    """True when the Lease no longer protects a primary: absent, without holder, released, never renewed, or
    renewTime + leaseDurationSeconds < now. A Lease the operator already took over counts as expired."""
    spec = (lease or {}).get("spec") or {}
    holder = spec.get("holderIdentity")
    if not holder or str(holder).startswith(FENCED_HOLDER_PREFIX):
        return True
    renewed = parse_time(spec.get("renewTime") or spec.get("acquireTime"))
    duration = spec.get("leaseDurationSeconds")
    if renewed is None or not isinstance(duration, int) or isinstance(duration, bool):
        return True
    return renewed + dt.timedelta(seconds=duration) < now


def seconds_left(lease: Mapping[str, Any] | None, now: dt.datetime) -> float:
    """How long until the Lease expires (0 when it has)."""
    if expired(lease, now):
        return 0.0
    spec = (lease or {}).get("spec") or {}
    renewed = parse_time(spec.get("renewTime") or spec.get("acquireTime"))
    assert renewed is not None
    return max(0.0, (renewed + dt.timedelta(seconds=int(spec["leaseDurationSeconds"])) - now).total_seconds())


def takeover(namespace: str, name: str, term: int, duration_seconds: int, now: dt.datetime,
             lease: Mapping[str, Any] | None) -> dict[str, Any]:
    """The Lease object with the operator as holder for ``term`` (resourceVersion kept: a precondition)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if lease is not None and (lease.get("metadata") or {}).get("resourceVersion"):
        meta["resourceVersion"] = lease["metadata"]["resourceVersion"]
    transitions = int(((lease or {}).get("spec") or {}).get("leaseTransitions") or 0)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta,
            "spec": {"holderIdentity": fenced_holder(term), "leaseDurationSeconds": duration_seconds,
                     "acquireTime": micro_time(now), "renewTime": micro_time(now),
                     "leaseTransitions": transitions + 1}}


def read(namespace: str, name: str) -> dict[str, Any] | None:
    """The Lease, or None (blocking)."""
    return kube.get(API_VERSION, KIND, namespace, name)


def take_over(namespace: str, name: str, term: int, duration_seconds: int, now: dt.datetime) -> bool:
    """Write the operator's holder into an expired Lease (create it if absent); False when the Lease was renewed
    meanwhile or changed under us (look again next pass). Blocking."""
    lease = read(namespace, name)
    if not expired(lease, now):
        return False
    if ((lease or {}).get("spec") or {}).get("holderIdentity") == fenced_holder(term):
        return True
    body = takeover(namespace, name, term, duration_seconds, now, lease)
    try:
        if lease is None:
            return kube.create(body) is not None  # None: someone created it meanwhile
        # The resourceVersion in the patch is a precondition: a renewal in between makes this a 409.
        kube.merge_patch(API_VERSION, KIND, namespace, name, {"metadata": body["metadata"], "spec": body["spec"]})
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    return True
