"""Which MirrorSet a ShardSet belongs to: the oldest valid one naming it as source or mirror, in any namespace."""

from chronoshard.operator.mirrorlookup import PeerRegistry
from chronoshard.operator.mirrorselect import MemberRef, MirrorMembership, select_mirrorset


def obj(name, created, ns="shop", source="orders", mirrors=(("orders-b", None),), deleting=False, active=None,
        **spec):
    meta = {"name": name, "namespace": ns, "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    body = {"metadata": meta, "spec": {
        "sourceRef": {"name": source},
        "mirrors": [{"shardSetRef": {"name": m}, **({"namespace": mns} if mns else {})} for m, mns in mirrors],
        **spec}}
    if active is not None:
        body["status"] = {"activeShardSet": active}
    return body


def test_source_and_mirror_in_another_namespace_find_the_same_mirrorset_and_members():
    sets = [obj("m", "2026-12-01T00:00:00Z", mirrors=(("orders-b", "west"), ("orders-c", None)))]
    for ns, name in (("shop", "orders"), ("west", "orders-b"), ("shop", "orders-c")):
        sel = select_mirrorset(sets, ns, name)
        assert (sel.namespace, sel.name) == ("shop", "m")
        assert sel.members == (MemberRef("shop", "orders"), MemberRef("west", "orders-b"),
                               MemberRef("shop", "orders-c"))
    sel = select_mirrorset(sets, "west", "orders-b")
    assert sel.peers("west", "orders-b") == (MemberRef("shop", "orders"), MemberRef("shop", "orders-c"))
    # A mirror named without a namespace lives in the MirrorSet's: the same name elsewhere is no member.
    assert not select_mirrorset(sets, "west", "orders-c").is_member


def test_oldest_valid_mirrorset_wins_across_namespaces_and_the_others_conflict():
    sets = [obj("late", "2026-12-01T00:00:02Z", ns="a"), obj("early", "2026-12-01T00:00:01Z", ns="z"),
            obj("tie", "2026-12-01T00:00:02Z", ns="b", source="orders", mirrors=(("orders-b", "a"),))]
    sel = select_mirrorset(sets, "a", "orders-b")
    assert (sel.namespace, sel.name) == ("a", "late")
    assert sel.conflicting == ("b/tie",)
    sel = select_mirrorset(sets, "z", "orders")
    assert (sel.name, sel.conflicting) == ("early", ())


def test_invalid_deleting_and_unrelated_mirrorsets_do_not_count():
    sets = [obj("bad", "2026-12-01T00:00:00Z", failover={"policy": "yolo"}),
            obj("going", "2026-12-01T00:00:01Z", deleting=True),
            obj("elsewhere", "2026-12-01T00:00:02Z", source="users", mirrors=(("users-b", None),))]
    assert select_mirrorset(sets, "shop", "orders") == MirrorMembership()
    assert not MirrorMembership().is_member
    assert MirrorMembership().peers("shop", "orders") == ()


def test_active_member_is_the_status_one_else_the_source():
    fresh = select_mirrorset([obj("m", "2026-12-01T00:00:00Z")], "shop", "orders")
    assert fresh.active == MemberRef("shop", "orders")
    assert fresh.follows("shop", "orders-b") and not fresh.follows("shop", "orders")
    failed_over = select_mirrorset([obj("m", "2026-12-01T00:00:00Z", active="shop/orders-b")], "shop", "orders")
    assert failed_over.active == MemberRef("shop", "orders-b")
    assert failed_over.follows("shop", "orders") and not failed_over.follows("shop", "orders-b")
    # A status naming no member (stale, or hand-written) does not move the primary role.
    bogus = select_mirrorset([obj("m", "2026-12-01T00:00:00Z", active="x/y")], "shop", "orders")
    assert bogus.active == MemberRef("shop", "orders")
    assert not bogus.follows("shop", "unrelated")


def test_peer_registry_knows_who_trusts_whom_and_forgets_a_shardset_that_left():
    reg = PeerRegistry()
    sets = [obj("m", "2026-12-01T00:00:00Z", mirrors=(("orders-b", "west"),))]
    for ns, name in (("shop", "orders"), ("west", "orders-b")):
        reg.remember(ns, name, select_mirrorset(sets, ns, name))
    assert reg.trusting("shop", "orders") == (MemberRef("west", "orders-b"),)
    assert reg.trusting("west", "orders-b") == (MemberRef("shop", "orders"),)
    assert reg.members_of("shop", "m") == (MemberRef("shop", "orders"), MemberRef("west", "orders-b"))
    reg.remember("west", "orders-b", MirrorMembership())
    assert reg.trusting("shop", "orders") == ()
    assert reg.members_of("shop", "m") == (MemberRef("shop", "orders"),)


def test_a_mirrors_zone_places_only_that_mirror():
    body = obj("m", "2026-12-01T00:00:00Z", mirrors=(("orders-b", "west"),))
    body["spec"]["mirrors"][0]["zone"] = "zone-b"
    sel = select_mirrorset([body], "west", "orders-b")
    assert sel.zone("west", "orders-b") == "zone-b"
    assert sel.zone("shop", "orders") is None  # the source has no zone in the spec
    assert MirrorMembership().zone("west", "orders-b") is None
