"""The Lease's pure parts (shardnode/replication/lease.py): the spec from the role document, the holder identity,
the plan for the Lease as read, the object written, and when writes are refused."""

from __future__ import annotations

from typing import Any

from chronoshard.shardnode.replication.lease import (
    Action,
    LeaseSpec,
    LeaseStatus,
    desired,
    holder_identity,
    lease_spec,
    plan,
)
from chronoshard.shardnode.replication.role import parse_role

LEASE = {"namespace": "ns-a", "name": "orders-a-0-primary", "durationSeconds": 15}


def role(term: int = 4, **doc: Any) -> Any:
    return parse_role({"term": term, "role": "primary", "lease": LEASE, **doc})


def lease(holder: str | None, transitions: int = 2) -> dict[str, Any]:
    return {"metadata": {"name": "orders-a-0-primary", "namespace": "ns-a", "resourceVersion": "41"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": transitions,
                     "acquireTime": "2026-12-07T10:00:00.000000Z", "renewTime": "2026-12-07T10:00:05.000000Z"}}


def test_spec_only_for_a_primary_with_a_lease():
    spec = lease_spec(role())
    assert spec == LeaseSpec("ns-a", "orders-a-0-primary", 15.0)
    assert spec.interval == 5 and spec.grace == 10
    assert lease_spec(parse_role({"term": 4, "role": "primary"})) is None
    assert lease_spec(parse_role({"term": 5, "role": "fenced"})) is None


def test_holder_identity_is_the_pod_or_the_shard():
    spec = lease_spec(role())
    assert holder_identity(spec, {"POD_NAME": "orders-a-0"}) == "orders-a-0"
    assert holder_identity(spec, {}) == "orders-a-0"


def test_plan():
    assert plan(None, "me", 4) is Action.CREATE
    assert plan(lease("me"), "me", 4) is Action.RENEW
    assert plan(lease(None), "me", 4) is Action.ACQUIRE and plan(lease(""), "me", 4) is Action.ACQUIRE
    assert plan(lease("other"), "me", 4) is Action.LOST
    # The operator's takeover of a dead primary's Lease fences its term: a later term's primary may take it back.
    fenced = "chronoshard-operator/fenced-term-4"
    assert plan(lease(fenced), "me", 4) is Action.LOST and plan(lease(fenced), "me", 5) is Action.ACQUIRE
    assert plan(lease("chronoshard-operator/fenced-term-x"), "me", 9) is Action.LOST


def test_desired_object():
    spec = lease_spec(role())
    created = desired(None, spec, "me", 1765101600.25)
    assert created["metadata"] == {"name": "orders-a-0-primary", "namespace": "ns-a"}
    assert created["spec"] == {"holderIdentity": "me", "leaseDurationSeconds": 15, "leaseTransitions": 0,
                               "acquireTime": "2025-12-07T10:00:00.250000Z",
                               "renewTime": "2025-12-07T10:00:00.250000Z"}
    renewed = desired(lease("me"), spec, "me", 1765101600.25)
    assert renewed["metadata"]["resourceVersion"] == "41"
    assert renewed["spec"]["leaseTransitions"] == 2  # a renewal is no transition, and keeps the acquire time
    assert renewed["spec"]["acquireTime"] == "2026-12-07T10:00:00.000000Z"
    taken = desired(lease(None), spec, "me", 1765101600.25)
    assert taken["spec"]["leaseTransitions"] == 3 and taken["spec"]["acquireTime"] == taken["spec"]["renewTime"]


def test_refusal():
    spec, doc = lease_spec(role()), role()
    status = LeaseStatus()
    assert "not been acquired" in status.refusal(spec, doc, 100.0)
    status.renewed = 100.0
    assert status.refusal(spec, doc, 110.0) is None  # exactly 2/3 of 15 s since the renewal began
    assert "not renewed for 10.5 s" in status.refusal(spec, doc, 110.5)
    status.renewed, status.lost_under = None, doc.doc
    assert "held by another" in status.refusal(spec, doc, 100.0)
    # A new role document ends "lost"; writes then wait for its first renewal.
    assert "not been acquired" in status.refusal(spec, role(term=5), 100.0)
