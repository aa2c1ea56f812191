"""Which PrefetchPolicy is in force for a ShardSet (pure)."""

from chronoshard.operator.prefetchselect import select_policy


def pol(name, created, target="orders", deleting=False, **spec):
    meta = {"name": name, "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-22T01:00:00Z"
    return {"metadata": meta, "spec": {"shardSetRef": {"name": target}, **spec}}


def test_no_policy_means_no_prefetching():
    sel = select_policy([pol("a", "2026-11-22T00:00:00Z", target="other")], "orders")
    assert sel.name is None and sel.spec is None and sel.conflicting == ()


def test_oldest_valid_wins_and_the_newer_conflict():
    sel = select_policy([pol("newer", "2026-11-22T00:00:05Z", model="learned"),
                         pol("older", "2026-11-22T00:00:01Z", model="successor"),
                         pol("newest", "2026-11-22T00:00:09Z")], "orders")
    assert sel.name == "older" and sel.spec is not None and sel.spec.model == "successor"
    assert sel.conflicting == ("newer", "newest")


def test_same_second_is_broken_by_name():
    sel = select_policy([pol("b", "2026-11-22T00:00:01Z"), pol("a", "2026-11-22T00:00:01Z")], "orders")
    assert sel.name == "a" and sel.conflicting == ("b",)


def test_invalid_and_deleting_policies_never_take_effect():
    sel = select_policy([pol("bad", "2026-11-22T00:00:00Z", scoreThreshold=7),
                         pol("gone", "2026-11-22T00:00:01Z", deleting=True),
                         pol("ok", "2026-11-22T00:00:02Z", horizon="30s", feedback={"window": "1m"})], "orders")
    assert sel.name == "ok" and sel.spec is not None and sel.spec.horizon.total_seconds() == 30
    assert sel.conflicting == ()
