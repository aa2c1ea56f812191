"""The controller's wake-up rule and the spec values it works with (no API, no pods)."""

from __future__ import annotations

import asyncio

from chronoshard.operator.mirrorset import controller
from chronoshard.operator.spec.mirrorset import parse_mirrorset
from chronoshard.operator.triggers import TRIGGERS

SPEC = {"sourceRef": {"name": "a"}, "mirrors": [{"shardSetRef": {"name": "b"}, "namespace": "other", "zone": "z"}],
        "replication": {"mode": "sync", "maxLag": "5s"}, "failover": {"leaseDuration": "6s"}}


def _woken(body: dict) -> bool:
    async def run() -> bool:
        event = TRIGGERS.event("MirrorSet", "ns", "m")
        event.clear()
        controller.mirrorset_changed(name="m", namespace="ns", body=body)
        fired = event.is_set()
        TRIGGERS.forget("MirrorSet", "ns", "m")
        return fired

    return asyncio.run(run())


def test_a_new_request_annotation_or_spec_change_wakes_the_loop_but_its_own_status_write_does_not():
    status = {"observedGeneration": 2, "lastSwitchoverRequest": "b", "lastFailbackRequest": "t1"}
    meta = {"name": "m", "namespace": "ns", "generation": 2}
    assert not _woken({"metadata": meta, "status": status})
    assert not _woken({"metadata": {**meta, "annotations": {"chronoshard.io/switchover-to": "b",
                                                            "chronoshard.io/failback": "t1"}}, "status": status})
    assert _woken({"metadata": {**meta, "annotations": {"chronoshard.io/switchover-to": "other/b"}},
                   "status": status})
    assert _woken({"metadata": {**meta, "annotations": {"chronoshard.io/failback": "t2"}}, "status": status})
    assert _woken({"metadata": {**meta, "generation": 3}, "status": status})


def test_members_and_settings_from_the_spec():
    spec = parse_mirrorset(SPEC)
    members = controller.members_of(spec, "ns")
    assert [(m.key, m.zone) for m in members] == [("ns/a", None), ("other/b", "z")]
    s = controller.settings_of(spec)
    assert (s.mode, s.max_lag, s.lease_duration, s.health_sample) == ("sync", 5.0, 6.0, 10.0)
    t = controller.thresholds_of(spec)
    assert (t.max_lag_seconds, t.failure_threshold, t.latency_ms) == (5.0, 3, 250.0)
