"""Owner wake-ups."""

from chronoshard.operator.triggers import Triggers


def test_fire_owner_sets_the_owner_event_only():
    t = Triggers()
    ev = t.event("ShardSet", "ns", "a")
    other = t.event("ShardSet", "ns", "b")
    child = {"metadata": {"namespace": "ns", "ownerReferences": [
        {"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShardSet", "name": "a", "controller": True}]}}
    assert t.fire_owner(child) == "ShardSet"
    assert ev.is_set() and not other.is_set()
    assert t.fire_owner({"metadata": {"namespace": "ns"}}) is None
    t.fire("ShardSet", "ns", "unknown")  # no loop running: harmless
