"""Wake-ups of MirrorSet members: a member's CA ConfigMap change wakes the members that trust it; a MirrorSet's
spec change (not its status) wakes its old and new members."""

import asyncio

import pytest
from chronoshard.operator.mirrorlookup import PEERS
from chronoshard.operator.mirrorselect import select_mirrorset
from chronoshard.operator.shardset import controller
from chronoshard.operator.triggers import TRIGGERS

MS = {"metadata": {"name": "orders", "namespace": "a", "uid": "u1", "generation": 1,
                   "creationTimestamp": "2026-12-01T00:00:00Z"},
      "spec": {"sourceRef": {"name": "src"}, "mirrors": [{"shardSetRef": {"name": "mir"}, "namespace": "b"}]}}
MEMBERS = (("a", "src"), ("b", "mir"))


@pytest.fixture()
def events():
    keys = [*MEMBERS, ("a", "alone"), ("c", "new")]
    evs = {k: TRIGGERS.event("ShardSet", *k) for k in keys}
    for ev in evs.values():
        ev.clear()
    for ns, name in MEMBERS:
        PEERS.remember(ns, name, select_mirrorset([MS], ns, name))
    yield evs
    for k in keys:
        TRIGGERS.forget("ShardSet", *k)
        PEERS.remember(*k, select_mirrorset([], *k))
    controller._MIRRORSET_GENERATIONS.clear()


def _ca_configmap(ns, name):
    return {"kind": "ConfigMap", "metadata": {"namespace": ns, "name": f"{name}-ca", "labels": {
        "app.kubernetes.io/component": "ca", "app.kubernetes.io/instance": name}}}


def test_a_members_ca_change_wakes_the_member_that_trusts_it_only(events):
    controller._wake_trusting_members(_ca_configmap("b", "mir"))
    assert events["a", "src"].is_set()
    assert not events["b", "mir"].is_set() and not events["a", "alone"].is_set()


def test_other_children_and_a_lone_shardsets_ca_wake_no_member(events):
    controller._wake_trusting_members({**_ca_configmap("b", "mir"), "kind": "Secret"})
    controller._wake_trusting_members({"kind": "ConfigMap", "metadata": {"namespace": "b", "labels": {
        "app.kubernetes.io/component": "config", "app.kubernetes.io/instance": "mir"}}})
    controller._wake_trusting_members(_ca_configmap("a", "alone"))
    assert not any(ev.is_set() for ev in events.values())


def test_mirrorset_spec_change_wakes_old_and_new_members_and_status_changes_do_not(events):
    def changed(kind, body):
        asyncio.run(controller.mirrorset_changed(type=kind, name="orders", namespace="a", body=body))

    changed("ADDED", MS)
    assert events["a", "src"].is_set() and events["b", "mir"].is_set()
    for ev in events.values():
        ev.clear()
    changed("MODIFIED", {**MS, "status": {"term": 2}})  # same generation: only the status moved
    assert not any(ev.is_set() for ev in events.values())
    moved = {"metadata": {**MS["metadata"], "generation": 2},
             "spec": {**MS["spec"], "mirrors": [{"shardSetRef": {"name": "new"}, "namespace": "c"}]}}
    changed("MODIFIED", moved)
    # mir left (its last pass knew it was a member), new joined, the source stays.
    assert events["b", "mir"].is_set() and events["c", "new"].is_set() and events["a", "src"].is_set()
    for ev in events.values():
        ev.clear()
    changed("DELETED", moved)
    assert events["a", "src"].is_set() and events["b", "mir"].is_set()
