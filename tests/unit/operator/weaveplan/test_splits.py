"""Mode split's decision, every case (pure): not due, due, already created, another Reshard running, confidence
dropped, minPartitionSize, a stale split key, and the placement's move."""

from datetime import UTC, datetime, timedelta

from chronoshard.operator.spec.weaveplan import parse_weaveplan
from chronoshard.operator.weaveplan.splits import decide, reshard_name
from chronoshard.shardnode.keyspace.partitioning import Partition, PartitionMap

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
HALF = 2**63
PMAP = PartitionMap(4, 2, (Partition(0, 0, HALF - 1, 0), Partition(1, HALF, 2**64 - 1, 1)))


def spec(**over):
    base = {"shardSetRef": {"name": "orders"}, "mode": "split", "interval": "10m", "predictionWindow": "2h"}
    return parse_weaveplan({**base, **over})


def part(pid, shard, p, nbytes=1000, load=10.0):
    return {"id": pid, "shard": shard, "bytes": nbytes, "loadRps": load, "forecast": {"probability": p}}


def weave(pid=0, minutes=20, key="4000000000000000", confidence=0.9):
    return {"id": f"w-{pid}", "partition": pid, "shard": 0, "splitKey": key, "confidence": confidence,
            "predictedTime": (NOW + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")}


PARTS = [part(0, 0, 0.9, load=50.0), part(1, 1, 0.1, load=5.0)]


def run(s=None, weaves=None, parts=PARTS, reshards=(), created=()):
    return decide("growth", s or spec(), [weave()] if weaves is None else weaves, parts, PMAP, list(reshards),
                  created, NOW)


def test_due_creates_the_split_and_moves_the_upper_half_to_the_least_loaded_shard():
    d = run()
    assert d.create == {"name": "growth-0-4", "partition": 0, "splitKey": "4000000000000000", "spec": {
        "shardSetRef": {"name": "orders"},
        "steps": [{"split": {"partition": 0, "at": "4000000000000000"}}, {"move": {"partition": 2, "toShard": 1}}]}}
    assert d.reason == "SplitStarted"


def test_the_shardsets_grace_period_goes_into_the_reshard():
    d = decide("growth", spec(), [weave()], PARTS, PMAP, [], [], NOW, grace_period="2s")
    assert d.create is not None and d.create["spec"]["gracePeriod"] == "2s"
    assert "gracePeriod" not in run().create["spec"]


def test_stay_placement_splits_without_a_move():
    d = run(spec(split={"placement": "stay"}))
    assert d.create is not None and d.create["spec"]["steps"] == [{"split": {"partition": 0, "at": "4000000000000000"}}]


def test_not_due_before_the_predicted_time_minus_the_lead():
    # lead = max(interval 10m, 30m) = 30m: 31 minutes ahead is not due yet, 30 is.
    d = run(weaves=[weave(minutes=31)])
    assert d.create is None and d.reason == "NotDue"
    assert run(weaves=[weave(minutes=30)]).create is not None
    # A longer interval is a longer lead.
    assert run(spec(interval="1h"), weaves=[weave(minutes=59)]).create is not None


def test_already_created_is_not_created_twice():
    d = run(created=["growth-0-4"])
    assert d.create is None and d.reason == "AlreadyCreated"


def test_another_reshard_of_the_shardset_running_makes_it_wait():
    running = {"metadata": {"name": "orders-rebalance-3"}, "spec": {"shardSetRef": {"name": "orders"}},
               "status": {"phase": "Running"}}
    fresh = {"metadata": {"name": "manual"}, "spec": {"shardSetRef": {"name": "orders"}}}  # no status yet
    other = {"metadata": {"name": "x"}, "spec": {"shardSetRef": {"name": "other"}}, "status": {"phase": "Running"}}
    done = {"metadata": {"name": "old"}, "spec": {"shardSetRef": {"name": "orders"}}, "status": {"phase": "Completed"}}
    d = run(reshards=[done, other, running])
    assert d.create is None and d.waiting_for == "orders-rebalance-3" and d.reason == "ReshardRunning"
    assert run(reshards=[fresh]).waiting_for == "manual"
    assert run(reshards=[done, other]).create is not None


def test_confidence_dropped_below_the_threshold_does_not_split():
    d = run(parts=[part(0, 0, 0.5), PARTS[1]])
    assert d.create is None and d.reason == "ConfidenceDropped"


def test_a_half_under_min_partition_size_does_not_split():
    d = run(spec(split={"sizeThreshold": "1Mi", "minPartitionSize": "600"}))
    assert d.create is None and d.reason == "BelowMinPartitionSize"
    assert run(spec(split={"sizeThreshold": "1Mi", "minPartitionSize": "500"})).create is not None


def test_a_split_key_outside_the_partition_is_stale():
    d = run(weaves=[weave(key="9000000000000000")])
    assert d.create is None and d.reason == "StaleSplitKey"
    assert run(weaves=[weave(key="zz")]).reason == "StaleSplitKey"


def test_other_modes_never_split_and_the_first_due_weave_wins():
    assert run(spec(mode="weave")).create is None and run(spec(mode="weave")).reason == "NoSplitPredicted"
    parts = [part(0, 0, 0.9), part(1, 1, 0.95)]
    d = run(weaves=[weave(0, minutes=120), weave(1, minutes=5, key="c000000000000000")], parts=parts)
    assert d.create is not None and d.create["partition"] == 1
    assert [s.reason for s in d.skips] == ["NotDue"]


def test_reshard_names_fit_an_object_name():
    assert reshard_name("p" * 300, 12, 7).endswith("-12-7") and len(reshard_name("p" * 300, 12, 7)) == 253
