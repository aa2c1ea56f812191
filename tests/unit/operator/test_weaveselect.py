"""Which WeavePlan is in force for a ShardSet: the oldest valid one (pure)."""

from chronoshard.operator.weaveselect import select_weave_plan


def obj(name, created, shardset="orders", **spec):
    return {"metadata": {"name": name, "creationTimestamp": created},
            "spec": {"shardSetRef": {"name": shardset}, **spec}}


def test_oldest_valid_plan_is_in_force_and_the_others_conflict():
    sel = select_weave_plan([obj("b", "2026-01-02T00:00:00Z"), obj("a", "2026-01-03T00:00:00Z"),
                             obj("c", "2026-01-01T00:00:00Z", mode="nope"),
                             obj("d", "2026-01-01T00:00:00Z", shardset="other")], "orders")
    assert sel.name == "b" and sel.spec is not None and sel.conflicting == ("a",)


def test_a_deleting_plan_is_not_in_force_and_none_gives_an_empty_selection():
    deleting = obj("a", "2026-01-01T00:00:00Z")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-05T00:00:00Z"
    assert select_weave_plan([deleting], "orders").name is None
    assert select_weave_plan([], "orders").spec is None
