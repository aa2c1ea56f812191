"""Keyspace hash, range arithmetic, map validation and the scaling rule."""

import json
import random

import pytest
from chronoshard.shardnode.keyspace.partitioning import (
    KEYSPACE_MAX,
    KEYSPACE_SIZE,
    Partition,
    PartitionMap,
    StrandedPartitionsError,
    equal_ranges,
    initial_map,
    keyspace_id,
    rescale,
    spread,
)


def _dict(shards=3, epoch=1):
    return initial_map(shards).to_dict() | {"epoch": epoch}


def test_keyspace_id_is_xxh3_64_seed0_of_table_nul_key():
    # Golden vectors pin the algorithm: if xxhash or our framing changed, every stored block would move.
    assert keyspace_id("users", "alice") == 0x77ED47D6EEED28EF
    # XXH3-64 of the empty input is a published test vector; ("", "") hashes b"\x00", not b"".
    import xxhash

    assert xxhash.xxh3_64_intdigest(b"") == 0x2D06800538D394C2
    assert keyspace_id("", "") == xxhash.xxh3_64_intdigest(b"\x00")


def test_keyspace_id_separates_table_and_key():
    assert keyspace_id("ab", "c") != keyspace_id("a", "bc")
    assert keyspace_id("t", "k") == keyspace_id("t", "k")
    assert 0 <= keyspace_id("t", "ünïcode-ключ") <= KEYSPACE_MAX


def test_initial_map_matches_interfaces_example():
    m = initial_map(3).to_dict()
    assert m["format"] == 1 and m["epoch"] == 1 and m["shards"] == 3
    assert m["partitions"][0] == {"id": 0, "start": "0000000000000000", "end": "5555555555555554", "shard": 0}
    assert m["partitions"][-1]["end"] == "ffffffffffffffff"


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 10, 64, 1000])
def test_equal_ranges_cover_whole_space_exactly_once(n):
    ranges = equal_ranges(n)
    assert len(ranges) == n
    assert ranges[0][0] == 0
    assert ranges[-1][1] == KEYSPACE_MAX
    for (_, e1), (s2, _) in zip(ranges, ranges[1:], strict=False):
        assert e1 + 1 == s2  # no gap, no overlap
    sizes = [e - s + 1 for s, e in ranges]
    assert sum(sizes) == KEYSPACE_SIZE
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("n", [1, 3, 7])
def test_owner_of_boundaries(n):
    m = initial_map(n)
    for p in m.partitions:
        assert m.owner_of(p.start) == p
        assert m.owner_of(p.end) == p
        if p.start > 0:
            assert m.owner_of(p.start - 1).id == p.id - 1
    assert m.owner_of(0).shard == 0
    assert m.owner_of(KEYSPACE_MAX).shard == n - 1
    with pytest.raises(ValueError):
        m.owner_of(-1)
    with pytest.raises(ValueError):
        m.owner_of(KEYSPACE_SIZE)


def test_owner_of_agrees_with_linear_scan():
    m = initial_map(7)
    rng = random.Random(1)
    for _ in range(2000):
        kid = rng.randrange(KEYSPACE_SIZE)
        linear = [p for p in m.partitions if p.contains(kid)]
        assert linear == [m.owner_of(kid)]


def test_uneven_partitions_on_shards():
    # Two partitions on shard 0, one on shard 1, shard 2 empty: after a split/move this is normal.
    parts = (
        Partition(0, 0, 99, 0),
        Partition(1, 100, 2**63, 1),
        Partition(2, 2**63 + 1, KEYSPACE_MAX, 0),
    )
    m = PartitionMap(4, 3, parts)
    assert [p.id for p in m.partitions_of(0)] == [0, 2]
    assert [p.id for p in m.partitions_of(1)] == [1]
    assert m.partitions_of(2) == []
    assert m.owner_of(100).shard == 1


def test_spread_of_real_keys_is_near_even():
    m = initial_map(3)
    counts = spread(m, (keyspace_id("t", f"key-{i}") for i in range(30000)))
    assert set(counts) == {0, 1, 2}
    for c in counts.values():
        assert abs(c - 10000) < 1000


def test_json_round_trip():
    m = PartitionMap(5, 4, initial_map(3).partitions)
    again = PartitionMap.from_json(m.to_json())
    assert again == m
    assert json.loads(m.to_json())["epoch"] == 5


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["partitions"].pop(1), "gap"),
        (lambda d: d["partitions"][0].update(end="5555555555555555"), "overlaps"),
        (lambda d: d["partitions"][2].update(end="fffffffffffffffe"), "gap"),
        (lambda d: d["partitions"][0].update(start="0000000000000001"), "gap"),
        (lambda d: d["partitions"][0].update(shard=3), "shard"),
        (lambda d: d["partitions"][0].update(shard=-1), "shard"),
        (lambda d: d["partitions"][1].update(id=0), "unique"),
        (lambda d: d["partitions"][0].update(end="55555555555554"), "16 lower-case hex"),
        (lambda d: d["partitions"][0].update(end="555555555555555G"), "16 lower-case hex"),
        (lambda d: d["partitions"][1].update(end="AAAAAAAAAAAAAAA9"), "16 lower-case hex"),
        (lambda d: d["partitions"][0].pop("shard"), "missing"),
        (lambda d: d.update(epoch=0), "epoch"),
        (lambda d: d.update(epoch=True), "epoch"),
        (lambda d: d.update(format=2), "format"),
        (lambda d: d.update(partitions=[]), "partitions"),
        (lambda d: d.update(shards=0), "shards"),
        (lambda d: d["partitions"][1].update(start="aaaaaaaaaaaaaaab", end="aaaaaaaaaaaaaaaa"), "range"),
    ],
)
def test_rejects_bad_maps(mutate, message):
    d = _dict()
    mutate(d)
    with pytest.raises(ValueError, match=message):
        PartitionMap.from_dict(d)


def test_rejects_non_json_and_non_object():
    with pytest.raises(ValueError, match="not valid JSON"):
        PartitionMap.from_json("{not json")
    with pytest.raises(ValueError, match="object"):
        PartitionMap.from_json("[1, 2]")


def test_scale_up_keeps_partitions_and_adds_empty_shards():
    m = initial_map(3)
    up = rescale(m, 5)
    assert up.shards == 5 and up.epoch == 2
    assert up.partitions == m.partitions
    assert up.partitions_of(3) == [] and up.partitions_of(4) == []


def test_same_shard_count_is_unchanged():
    m = initial_map(3)
    assert rescale(m, 3) is m


def test_scale_down_stranding_partitions_is_refused():
    m = initial_map(4)
    with pytest.raises(StrandedPartitionsError) as err:
        rescale(m, 2)
    assert err.value.shards == [2, 3]
    assert "2, 3" in str(err.value)


def test_scale_down_of_empty_shards_is_allowed():
    m = rescale(initial_map(3), 5)
    down = rescale(m, 3)
    assert down.shards == 3 and down.epoch == m.epoch + 1
    assert down.partitions == m.partitions
    with pytest.raises(StrandedPartitionsError):
        rescale(down, 2)


def test_bad_shard_counts_rejected():
    with pytest.raises(ValueError):
        initial_map(0)
    with pytest.raises(ValueError):
        rescale(initial_map(2), 0)
