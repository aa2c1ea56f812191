"""Which ShadowPolicy is in force for a ShardSet: the oldest valid one that is not being deleted."""

from chronoshard.operator.shadowselect import select_shadow_policy


def obj(name, created, shardset="orders", deleting=False, **spec):
    meta = {"name": name, "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    return {"metadata": meta, "spec": {"shardSetRef": {"name": shardset}, **spec}}


def test_oldest_valid_policy_wins_and_the_others_conflict():
    policies = [obj("b", "2026-12-01T00:00:02Z"), obj("a", "2026-12-01T00:00:01Z"), obj("c", "2026-12-01T00:00:02Z")]
    sel = select_shadow_policy(policies, "orders")
    assert sel.name == "a" and sel.spec is not None and sel.spec.shardset == "orders"
    assert sel.conflicting == ("b", "c")


def test_invalid_deleting_and_other_shardsets_do_not_count():
    policies = [obj("bad", "2026-12-01T00:00:00Z", compression={"codec": "zlib"}),
                obj("going", "2026-12-01T00:00:01Z", deleting=True),
                obj("elsewhere", "2026-12-01T00:00:02Z", shardset="users"),
                obj("good", "2026-12-01T00:00:03Z")]
    sel = select_shadow_policy(policies, "orders")
    assert (sel.name, sel.conflicting) == ("good", ())
    assert select_shadow_policy(policies[:3], "orders").name is None
