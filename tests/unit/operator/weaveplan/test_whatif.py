"""The what-if report of a predicted split (pure)."""

from chronoshard.operator.weaveplan.whatif import expected_pause_ms, pauses_from_reshards, what_if

PARTS = [
    {"id": 0, "shard": 0, "bytes": 1000, "loadRps": 40.0, "forecast": {"probability": 0.9, "predictedTime": "t",
                                                                      "sizeAtWindowEnd": {"low": 1, "point": 2,
                                                                                          "high": 3}}},
    {"id": 1, "shard": 1, "bytes": 300, "loadRps": 5.0},
    {"id": 2, "shard": 2, "bytes": 100, "loadRps": 5.0},
]
WEAVE = {"id": "w", "partition": 0, "shard": 0, "splitKey": "4000000000000000"}


def test_least_loaded_placement_moves_the_upper_half():
    (r,) = what_if([WEAVE], PARTS, 3, "leastLoaded", [120.0, 80.0])
    # Shards 1 and 2 carry the same load; shard 2 holds fewer bytes.
    assert r["placement"] == {"lowerHalfShard": 0, "upperHalfShard": 2}
    assert r["bytesToMove"] == 500 and r["expectedCutoverPauseMs"] == 120.0
    assert r["shards"] == [
        {"shard": 0, "bytesBefore": 1000, "bytesAfter": 500, "loadBefore": 40.0, "loadAfter": 20.0},
        {"shard": 1, "bytesBefore": 300, "bytesAfter": 300, "loadBefore": 5.0, "loadAfter": 5.0},
        {"shard": 2, "bytesBefore": 100, "bytesAfter": 600, "loadBefore": 5.0, "loadAfter": 25.0},
    ]
    assert r["forecast"] == {"probability": 0.9, "predictedTime": "t", "sizeAtWindowEnd": {"low": 1, "point": 2,
                                                                                           "high": 3}}
    assert r["splitKey"] == "4000000000000000" and r["partition"] == 0


def test_stay_moves_nothing_and_reported_halves_are_used():
    (r,) = what_if([{**WEAVE, "upperBytes": 300}], PARTS, 3, "stay", [])
    assert r["placement"] == {"lowerHalfShard": 0, "upperHalfShard": 0}
    assert r["bytesToMove"] == 0 and r["expectedCutoverPauseMs"] == 0.0
    assert [s["bytesAfter"] for s in r["shards"]] == [1000, 300, 100]


def test_the_least_loaded_shard_being_the_partitions_own_keeps_both_halves():
    parts = [{**PARTS[0], "loadRps": 1.0, "bytes": 10}, PARTS[1], PARTS[2]]
    (r,) = what_if([WEAVE], parts, 3, "leastLoaded", [])
    assert r["placement"]["upperHalfShard"] == 0 and r["bytesToMove"] == 0


def test_one_report_per_partition_and_none_for_unknown_partitions():
    rows = what_if([WEAVE, {**WEAVE, "id": "older"}, {**WEAVE, "partition": 9}], PARTS, 3, "leastLoaded", [])
    assert len(rows) == 1


def test_expected_pause_is_the_p99_of_recent_cutovers_or_a_second():
    assert expected_pause_ms([]) == 1000.0
    assert expected_pause_ms([10.0, 30.0, 20.0]) == 30.0
    assert expected_pause_ms([5000.0] + [10.0] * 20) == 10.0  # only the newest 20 count


def test_pauses_come_from_the_shardsets_reshards_steps_oldest_first():
    def reshard(name, shardset, start, *pauses):
        return {"metadata": {"name": name}, "spec": {"shardSetRef": {"name": shardset}},
                "status": {"startTime": start, "steps": [{"index": i, "pausedMs": p} for i, p in enumerate(pauses)]}}
    found = pauses_from_reshards([reshard("b", "orders", "2026-02-01T00:00:00Z", 30.0, None),
                                  reshard("a", "orders", "2026-01-01T00:00:00Z", 10.0),
                                  reshard("c", "other", "2026-01-01T00:00:00Z", 99.0)], "orders")
    assert found == [10.0, 30.0]
