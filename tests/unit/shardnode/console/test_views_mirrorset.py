"""The console's MirrorSet shapes (docs/mirroring.md status) and which MirrorSet a ShardSet belongs to."""

from __future__ import annotations

from chronoshard.shardnode.console import views


def mirrorset(status=None, ns="shop"):
    return {"metadata": {"name": "orders", "namespace": ns},
            "spec": {"sourceRef": {"name": "orders-a"}, "replication": {"mode": "async"},
                     "mirrors": [{"shardSetRef": {"name": "orders-b"}, "namespace": "dr"},
                                 {"shardSetRef": {"name": "orders-c"}}]},
            "status": status or {}}


COPY_B = {"shardSet": "dr/orders-b", "role": "mirror", "health": "degraded", "reasons": ["lag 7.0s > 5s"],
          "state": "streaming", "appliedLSN": 90, "lagSeconds": 7.0}
COPY_A = {"shardSet": "shop/orders-a", "role": "primary", "health": "healthy", "state": "idle", "appliedLSN": 100}
STATUS = {"term": 3, "activeShardSet": "shop/orders-a", "phase": "SwitchingOver",
          "conditions": [{"type": "Ready", "status": "False", "reason": "Operation", "message": "CatchingUp"}],
          "shards": [{"shard": 1, "primary": "shop/orders-a", "copies": [{"shardSet": "shop/orders-c"}]},
                     {"shard": 0, "primary": "shop/orders-a", "copies": [COPY_B, COPY_A]}],
          "operation": {"kind": "switchover", "step": "CatchingUp", "term": 4, "from": "shop/orders-a",
                        "to": "dr/orders-b"},
          "lastOperation": {"kind": "failover", "outcome": "Succeeded", "heldSeconds": 9.5},
          "lostWrites": [{"shard": 1, "term": 2, "fromLSN": 10, "toLSN": 12, "count": 2},
                         {"shard": 0, "term": 2, "fromLSN": 5, "toLSN": 6, "count": 1, "confirmed": True}]}


def test_members_are_the_source_then_the_mirrors_in_their_namespaces():
    assert views.mirrorset_members(mirrorset()) == ["shop/orders-a", "dr/orders-b", "shop/orders-c"]


def test_the_summary_counts_lost_writes_and_the_unconfirmed_ones():
    s = views.mirrorset_summary(mirrorset(STATUS))
    assert s["term"] == 3 and s["activeShardSet"] == "shop/orders-a" and s["mode"] == "async"
    assert s["operation"] == {"kind": "switchover", "step": "CatchingUp"} and s["ready"] == "False"
    assert (s["lostWrites"], s["unconfirmedLostWrites"]) == (2, 1)
    empty = views.mirrorset_summary(mirrorset())
    assert empty["phase"] == "Pending" and empty["operation"] is None and empty["lostWrites"] == 0


def test_the_view_orders_shards_copies_and_lost_writes_and_defaults_unknowns():
    v = views.mirrorset_view(mirrorset(STATUS))
    assert [s["shard"] for s in v["shards"]] == [0, 1]
    assert [c["shardSet"] for c in v["shards"][0]["copies"]] == ["shop/orders-a", "dr/orders-b"]
    assert v["shards"][0]["copies"][1]["reasons"] == ["lag 7.0s > 5s"]
    unknown = v["shards"][1]["copies"][0]
    assert (unknown["role"], unknown["health"], unknown["reasons"], unknown["appliedLSN"]) == \
        ("unknown", "unknown", [], None)
    assert v["operation"]["step"] == "CatchingUp" and v["lastOperation"]["heldSeconds"] == 9.5
    assert [(w["shard"], w["confirmed"]) for w in v["lostWrites"]] == [(0, True), (1, False)]
    assert views.mirrorset_view(mirrorset())["operation"] is None


def test_a_shardset_belongs_to_its_mirrorset_as_source_or_mirror():
    ms = [mirrorset(STATUS)]
    assert views.mirrorset_of(ms, "shop", "orders-a") == {"namespace": "shop", "name": "orders", "role": "source",
                                                          "active": True, "phase": "SwitchingOver", "term": 3}
    b = views.mirrorset_of(ms, "dr", "orders-b")
    assert b is not None and (b["role"], b["active"]) == ("mirror", False)
    assert views.mirrorset_of(ms, "shop", "orders-b") is None  # orders-b of the MirrorSet is in dr
    assert views.mirrorset_of([], "shop", "orders-a") is None
