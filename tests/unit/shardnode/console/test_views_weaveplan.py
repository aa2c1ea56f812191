"""The WeavePlan on a ShardSet's console page (pure): the plan in force, shaped."""

from chronoshard.shardnode.console.views import weaveplan_of


def plan(name, created, shardset="orders", **status):
    return {"metadata": {"name": name, "creationTimestamp": created},
            "spec": {"shardSetRef": {"name": shardset}, "mode": "split"}, "status": status}


def test_the_oldest_plan_naming_the_shardset_shaped_for_the_page():
    parts = [{"id": i, "shard": 0, "bytes": 10, "loadRps": 1.0, "forecast": {"probability": 1 - i / 10}}
             for i in range(7)]
    older = plan("a", "2026-01-01T00:00:00Z", phase="Weaving", partitions=parts, whatIf=[{"partition": 0}],
                 splits=[{"reshard": "a-0-1"}], lastForecastTime="t")
    view = weaveplan_of([plan("b", "2026-02-01T00:00:00Z"), older, plan("c", "2025-01-01T00:00:00Z", "other")],
                        "orders")
    assert view is not None
    assert (view["name"], view["phase"], view["mode"], view["confidenceThreshold"]) == ("a", "Weaving", "split", 0.75)
    assert [p["id"] for p in view["partitions"]] == [0, 1, 2, 3, 4]  # the five most likely (status order)
    assert view["partitions"][0] == {"id": 0, "shard": 0, "bytes": 10, "loadRps": 1.0, "probability": 1.0,
                                     "predictedTime": None}
    assert view["whatIf"] == [{"partition": 0}] and view["splits"] == [{"reshard": "a-0-1"}]


def test_no_plan_and_a_fresh_plan():
    assert weaveplan_of([], "orders") is None
    fresh = weaveplan_of([plan("a", "2026-01-01T00:00:00Z")], "orders")
    assert fresh is not None and (fresh["phase"], fresh["partitions"], fresh["whatIf"]) == ("Pending", [], [])
