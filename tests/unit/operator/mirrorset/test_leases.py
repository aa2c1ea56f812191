"""Lease expiry and takeover decisions."""

from __future__ import annotations

import datetime as dt

from chronoshard.operator.mirrorset import leases

NOW = dt.datetime(2026, 12, 7, 12, 0, 0, tzinfo=dt.UTC)


def lease(holder: str | None, renewed: dt.datetime | None, duration: int | None = 15) -> dict:
    spec: dict = {"holderIdentity": holder, "leaseDurationSeconds": duration}
    if renewed is not None:
        spec["renewTime"] = leases.micro_time(renewed)
    return {"metadata": {"name": "a-0-primary", "namespace": "ns", "resourceVersion": "7"}, "spec": spec}


def test_held_until_renew_time_plus_duration_has_passed():
    renewed = NOW - dt.timedelta(seconds=14)
    assert not leases.expired(lease("pod-a-0", renewed), NOW)
    assert leases.seconds_left(lease("pod-a-0", renewed), NOW) == 1.0
    assert not leases.expired(lease("pod-a-0", renewed), NOW + dt.timedelta(seconds=1))  # exactly at the end
    assert leases.expired(lease("pod-a-0", renewed), NOW + dt.timedelta(seconds=1.001))


def test_absent_released_or_unrenewed_leases_hold_nothing():
    assert leases.expired(None, NOW)
    assert leases.expired(lease(None, NOW), NOW)
    assert leases.expired(lease("pod", None), NOW)
    assert leases.expired(lease("pod", NOW, duration=None), NOW)


def test_a_lease_the_operator_took_over_counts_as_expired():
    assert leases.expired(lease(leases.fenced_holder(4), NOW), NOW)


def test_takeover_keeps_the_resource_version_as_precondition_and_counts_the_transition():
    old = lease("pod-a-0", NOW - dt.timedelta(seconds=60))
    old["spec"]["leaseTransitions"] = 2
    body = leases.takeover("ns", "a-0-primary", 5, 15, NOW, old)
    assert body["metadata"] == {"name": "a-0-primary", "namespace": "ns", "resourceVersion": "7"}
    assert body["spec"]["holderIdentity"] == "chronoshard-operator/fenced-term-5"
    assert body["spec"]["leaseTransitions"] == 3
    assert body["spec"]["renewTime"] == "2026-12-07T12:00:00.000000Z"
    assert "resourceVersion" not in leases.takeover("ns", "x", 5, 15, NOW, None)["metadata"]
