"""The mirror's SQL on real stores: a source store's change log applied to a mirror store keeps the source's LSNs
and every block field, exactly once on replay, with the cursor in the same transaction; seeding, promotion,
rewind and repair."""

import json
import time

import pytest
from chronoshard.shardnode.keys.crypto import seal_block
from chronoshard.shardnode.keys.frames import MIN_FRAME_SIZE
from chronoshard.shardnode.keyspace.partitioning import keyspace_id
from chronoshard.shardnode.node import changelog, consumers, rewrap
from chronoshard.shardnode.node.snapshot import snapshot_lines
from chronoshard.shardnode.node.store import connect, delete_in_txn, put_in_txn
from chronoshard.shardnode.node.verify import Digest
from chronoshard.shardnode.replication import apply
from chronoshard.shardnode.replication.digest import digest_in_txn
from chronoshard.shardnode.serving.changestream import SnapshotBlock, StreamChange, parse_snapshot_block

from tests.support.stores import open_store, ring


@pytest.fixture
def pair(tmp_path):
    """A source store with a consumer slot (frames recorded) and an empty mirror store."""
    src, src_ring = open_store(tmp_path / "src", ring(1, (1, 2)))
    mirror, _ = open_store(tmp_path / "mirror", ring(1, (1, 2)))
    src.submit(lambda c: consumers.register(c, "mirror.ns.b", None, False, time.time())).result()
    src.frames_enabled = True
    yield src, src_ring, mirror
    src.close()
    mirror.close()


def put(store, table, key, value):
    return store.submit(lambda c: put_in_txn(c, store.current_keyring(), table, key, value, frames=True)).result().lsn


def delete(store, table, key):
    return store.submit(lambda c: delete_in_txn(c, table, key)).result()


def stream(store, after=0):
    """The source's changes after ``after`` as the mirror receives them."""
    conn = connect(store.path)
    try:
        return [StreamChange(e.lsn, e.time, e.table, e.key, e.op, e.key_version, e.size, e.frame, e.checksum,
                             e.identity) for e in changelog.iter_changes(conn, after, 10_000, frames=True)]
    finally:
        conn.close()


def rows(store, sql):
    conn = connect(store.path)
    try:
        return [tuple(bytes(v) if isinstance(v, bytes | memoryview) else v for v in r) for r in conn.execute(sql)]
    finally:
        conn.close()


BLOCKS = "SELECT tbl, key, keyspace, key_version, size, checksum, frame, lsn FROM blocks ORDER BY tbl, key"
CHANGES = "SELECT lsn, time, tbl, key, op, key_version, size, identity FROM changes ORDER BY lsn"
WITH_FRAMES = "SELECT lsn, time, tbl, key, op, key_version, size, frame, checksum, identity FROM changes ORDER BY lsn"


def apply_page(mirror, changes, through=None):
    return mirror.submit(lambda c: apply.apply_page(c, changes, changes[-1].lsn if through is None else through)
                         ).result()


def test_a_page_keeps_the_sources_lsns_and_fields(pair):
    src, _, mirror = pair
    for i in range(5):
        put(src, "t", f"k{i}", b"v%d" % i)
    put(src, "t", "k1", b"again")
    delete(src, "t", "k2")
    assert apply_page(mirror, stream(src)) == 7
    assert rows(mirror, BLOCKS) == rows(src, BLOCKS)
    assert rows(mirror, CHANGES) == rows(src, CHANGES)
    assert mirror.submit(changelog.last_lsn).result() == 7  # the next local LSN follows the source's
    assert rows(mirror, "SELECT count(*) FROM changes WHERE frame IS NOT NULL") == [(0,)]  # no slot here: no frames


def test_with_a_slot_on_the_mirror_its_log_carries_the_frames(pair):
    src, _, mirror = pair
    mirror.submit(lambda c: consumers.register(c, "cache", None, False, time.time())).result()
    put(src, "t", "a", b"1")
    put(src, "t", "a", b"2")
    apply_page(mirror, stream(src))
    assert rows(mirror, WITH_FRAMES) == rows(src, WITH_FRAMES)
    assert mirror.submit(changelog.frame_bytes).result() == src.submit(changelog.frame_bytes).result()


def test_replaying_a_page_applies_nothing_twice(pair):
    src, _, mirror = pair
    for i in range(4):
        put(src, "t", f"k{i}", b"x")
    page = stream(src)
    apply_page(mirror, page[:2])
    assert apply_page(mirror, page) == 4  # the first two are at or below the cursor: skipped, no duplicate row
    assert [r[0] for r in rows(mirror, CHANGES)] == [1, 2, 3, 4]
    assert apply_page(mirror, page) == 4
    assert rows(mirror, BLOCKS) == rows(src, BLOCKS)


def test_a_failing_page_moves_neither_blocks_nor_cursor(pair):
    src, _, mirror = pair
    put(src, "t", "a", b"1")
    apply_page(mirror, stream(src))
    put(src, "t", "b", b"2")
    put(src, "t", "c", b"3")
    page = stream(src, 1)
    broken = [page[0], StreamChange(**{**page[1].__dict__, "frame": None})]
    with pytest.raises(apply.FrameMissing):
        apply_page(mirror, broken)
    assert mirror.submit(apply.cursor).result() == 1
    assert [r[1] for r in rows(mirror, BLOCKS)] == ["a"]
    assert [r[0] for r in rows(mirror, CHANGES)] == [1]


def test_rewrap_changes_move_the_key_version(pair):
    src, holder, mirror = pair
    put(src, "t", "a", b"1")
    holder.keyring = ring(2, (1, 2))
    src.submit(lambda c: rewrap.start_in_txn(c, holder.keyring, 10)).result()
    src.submit(lambda c: rewrap.batch_in_txn(c, holder.keyring, frames=True)).result()
    page = stream(src)
    assert [c.op for c in page] == ["put", "rewrap"]
    apply_page(mirror, page)
    assert rows(mirror, BLOCKS) == rows(src, BLOCKS)
    assert rows(mirror, "SELECT key_version FROM blocks") == [(2,)]


def test_seed_then_stream(pair):
    src, _, mirror = pair
    for i in range(10):
        put(src, "t", f"k{i}", b"x" * i)
    put(src, "u", "old", b"y")  # in the mirror before the seed, gone after it
    apply_page(mirror, stream(src))
    delete(src, "u", "old")
    conn = connect(src.path)
    lines = [json.loads(line) for line in snapshot_lines(conn, None)]
    conn.close()
    lsn, blocks = lines[0]["lsn"], [parse_snapshot_block(d) for d in lines[1:-1]]
    while mirror.submit(lambda c: apply.seed_begin(c, lsn, 3)).result():
        assert mirror.submit(apply.seeding).result()
    for i in range(0, len(blocks), 4):
        mirror.submit(lambda c, b=blocks[i:i + 4]: apply.seed_blocks(c, b)).result()
    mirror.submit(lambda c: apply.seed_finish(c, lsn)).result()
    assert not mirror.submit(apply.seeding).result()
    assert rows(mirror, BLOCKS) == rows(src, BLOCKS)
    assert rows(mirror, CHANGES) == []  # the local log restarts at the snapshot
    assert mirror.submit(changelog.last_lsn).result() == lsn == 12
    put(src, "t", "after", b"z")
    apply_page(mirror, stream(src, lsn))
    assert rows(mirror, BLOCKS) == rows(src, BLOCKS)


def test_promotion_continues_above_the_floor(pair):
    src, _, mirror = pair
    put(src, "t", "a", b"1")
    apply_page(mirror, stream(src))
    doc = {"term": 2, "role": "primary", "mirrors": ["mirror.ns.a"], "lsnFloor": 40}
    assert mirror.submit(lambda c: apply.promote(c, 40, ["mirror.ns.a"], doc, 1)).result() == (1, 40)
    mirror.frames_enabled = True
    assert put(mirror, "t", "b", b"2") == 41
    slot = mirror.submit(lambda c: consumers.get(c, "mirror.ns.a")).result()
    assert (slot.acked_lsn, slot.state) == (1, "active")
    assert mirror.submit(lambda c: apply.get_meta(c, apply.ROLE_META)).result() == doc


def test_rewind_replaces_the_keys_changed_after_divergence(pair):
    src, _, mirror = pair
    put(src, "t", "a", b"1")
    put(src, "t", "b", b"1")
    apply_page(mirror, stream(src))
    # The mirror (an old primary) wrote on after the divergence point 2: a changed, c created.
    put(mirror, "t", "a", b"mine")
    put(mirror, "t", "c", b"mine")
    tail = mirror.submit(lambda c: apply.local_tail(c, 2)).result()
    assert (tail.keys, tail.lsns, tail.complete) == ((("t", "a"), ("t", "c")), (3, 4), True)
    a = rows(src, "SELECT tbl, key, key_version, size, checksum, frame, lsn FROM blocks WHERE key = 'a'")[0]
    current = {("t", "a"): apply.PrimaryBlock(*a), ("t", "c"): None}
    mirror.submit(lambda c: apply.rewind(c, 2, tail.keys, current, tail.lsns)).result()
    assert rows(mirror, BLOCKS) == rows(src, BLOCKS)
    assert [r[0] for r in rows(mirror, CHANGES)] == [1, 2]
    assert mirror.submit(apply.cursor).result() == 2
    assert mirror.submit(lambda c: apply.get_meta(c, apply.DISCARDED_META)).result() == [3, 4]
    put(src, "t", "d", b"new")  # LSN 3 on the primary, not the discarded 3
    apply_page(mirror, stream(src, 2))
    assert rows(mirror, BLOCKS) == rows(src, BLOCKS)


def test_repair_replaces_a_range_and_skips_its_older_changes(pair):
    src, _, mirror = pair
    for i in range(30):
        put(src, "t", f"k{i}", b"v")
    apply_page(mirror, stream(src)[:10])  # the mirror is at 10
    mirror.submit(lambda c: c.execute("UPDATE blocks SET checksum = x'00', frame = x'00'")).result()  # damage
    bucket = rows(src, "SELECT keyspace FROM blocks WHERE key = 'k3'")[0][0] + apply.KEYSPACE_OFFSET >> 56
    lo, hi = apply.bucket_range(bucket)
    conn = connect(src.path)
    lines = [json.loads(line) for line in snapshot_lines(conn, None, ((lo, hi),))]
    conn.close()
    s2, blocks = lines[0]["lsn"], [parse_snapshot_block(d) for d in lines[1:-1]]
    assert s2 == 30 and blocks and all(lo <= b_ks(b) <= hi for b in blocks)
    mirror.submit(lambda c: apply.repair_begin(c, ((lo, hi),), s2)).result()
    mirror.submit(lambda c: apply.seed_blocks(c, blocks)).result()
    apply_page(mirror, stream(src, 10))  # changes 11..30: those in the range are skipped, the rest applied
    assert mirror.submit(apply.load_skip).result() is None  # streamed past S2
    d_src = digest(src, False)
    d_mirror = digest(mirror, True)
    damaged = {f"{b:02x}" for b in set(rows_buckets(src, 10))} - {f"{bucket:02x}"}
    # only buckets of the first ten keys other than the repaired one still differ
    assert {k for k in d_src["buckets"] if d_src["buckets"][k] != d_mirror["buckets"].get(k)} == damaged


def b_ks(b: SnapshotBlock) -> int:
    return keyspace_id(b.table, b.key)


def rows_buckets(store, first_n):
    return [(ks + apply.KEYSPACE_OFFSET) >> 56 for (ks,) in rows(
        store, f"SELECT keyspace FROM blocks WHERE lsn <= {first_n}")]


def digest(store, mirror):
    conn = connect(store.path)
    try:
        return digest_in_txn(conn, Digest(), mirror, None, lambda: None)
    finally:
        conn.close()


def test_digest_of_a_faithful_mirror_equals_the_sources(pair):
    src, _, mirror = pair
    for i in range(20):
        put(src, "t", f"k{i}", bytes([i]) * 10)
    apply_page(mirror, stream(src))
    assert digest(src, False) == digest(mirror, True)
    assert digest(mirror, True)["lsn"] == 20


def test_seal_block_frames_size_is_recoverable():
    frame, _, _ = seal_block(ring(1, (1,)), "t", "k", b"x" * 123)
    assert len(frame) - MIN_FRAME_SIZE == 123
