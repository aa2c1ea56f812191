"""HistoryStore on a real SQLite file: apply exactly once, seed and re-seed, time travel in the hot tier."""

from __future__ import annotations

import sqlite3

import pytest
from chronoshard.shardnode.keys.crypto import seal_block
from chronoshard.shardnode.shadow import historydb
from chronoshard.shardnode.shadow.codec import Compressor
from chronoshard.shardnode.shadow.history import ApplyError, HistoryStore, NoKeyring

from tests.support.shadow_history import StreamChange, block, delete, open_history, put, rewrap, ring

R = ring(1, (1,))


def _changes():
    return [put(R, 1, 100.0, "t", "a", b"a1"), put(R, 2, 101.0, "t", "b", b"b1"),
            put(R, 3, 102.0, "t", "a", b"a2"), delete(4, 103.0, "t", "b"), put(R, 5, 104.0, "u", "x", b"x1")]


def test_apply_stores_versions_and_the_cursor_and_skips_what_it_has(tmp_path):
    h, _ = open_history(tmp_path)
    assert h.cursor() == 0
    assert h.apply(_changes()) == 5
    assert h.apply(_changes()) == 5  # the same page again: nothing new
    assert [(v.lsn, v.op, v.value) for v in h.history("t", "a")] == [(1, "put", b"a1"), (3, "put", b"a2")]
    assert [(v.lsn, v.op, v.value) for v in h.history("t", "b")] == [(2, "put", b"b1"), (4, "delete", None)]
    h.close()
    again, _ = open_history(tmp_path)  # the file keeps everything
    assert again.cursor() == 5 and len(again.history("t", "a")) == 2


def test_apply_through_moves_the_cursor_past_a_page_without_changes(tmp_path):
    h, _ = open_history(tmp_path)
    assert h.apply([], through=9) == 9
    assert h.apply([put(R, 7, 1.0, "t", "k", b"old")]) == 9  # below the cursor: skipped
    assert h.history("t", "k") == []


def test_history_frames_are_sealed_not_plaintext_and_bound_to_their_lsn(tmp_path):
    h, _ = open_history(tmp_path)
    h.apply([put(R, 1, 1.0, "t", "k", b"secret payload " * 10)])
    conn = sqlite3.connect(h.path)
    (frame,) = conn.execute("SELECT frame FROM frames").fetchone()
    assert b"secret payload" not in frame
    conn.execute("UPDATE frames SET lsn = 2")  # move the version to another LSN
    conn.commit()
    with pytest.raises(Exception, match="authentication"):
        h.value_at("t", "k", lsn=2)


def test_a_change_that_does_not_open_fails_the_whole_batch(tmp_path):
    h, _ = open_history(tmp_path)
    other = ring(2, (2,))
    frame, cs, _ = seal_block(other, "t", "b", b"x")
    bad = StreamChange(lsn=2, time=1.0, table="t", key="b", op="put", key_version=2, size=1, frame=frame, checksum=cs)
    with pytest.raises(ApplyError, match="change 2") as exc:
        h.apply([put(R, 1, 1.0, "t", "a", b"a"), bad])
    assert "key version 2" in str(exc.value)
    assert h.cursor() == 0 and h.history("t", "a") == []


def test_a_put_without_frame_or_keyring_is_refused(tmp_path):
    h, holder = open_history(tmp_path)
    frameless = StreamChange(lsn=1, time=1.0, table="t", key="a", op="put", key_version=1, size=1, frame=None,
                             checksum=None)
    with pytest.raises(ApplyError, match="without its frame"):
        h.apply([frameless])
    holder.keyring = None
    with pytest.raises(NoKeyring):
        h.apply([put(R, 1, 1.0, "t", "a", b"a")])
    assert h.apply([delete(1, 1.0, "t", "a")]) == 1  # a delete needs no key


def test_value_at_by_lsn_and_time(tmp_path):
    h, _ = open_history(tmp_path)
    h.apply(_changes())
    assert h.value_at("t", "a", lsn=0) is None
    assert h.value_at("t", "a", lsn=2).value == b"a1"
    assert h.value_at("t", "a", lsn=3).value == b"a2"
    assert h.value_at("t", "b", lsn=3).value == b"b1"
    assert h.value_at("t", "b", lsn=4) is None
    assert h.value_at("t", "b", time=101.5).value == b"b1"
    assert h.value_at("t", "b", time=103.0) is None  # a change at exactly that time is included
    now = h.value_at("t", "a")
    assert now.lsn == 3 and now.exact and now.size == 2 and now.key_version == 1
    assert h.time_to_lsn(99.0) == 0 and h.time_to_lsn(102.5) == 3 and h.time_to_lsn(1e12) == 5
    with pytest.raises(ValueError):
        h.value_at("t", "a", lsn=1, time=1.0)


def test_state_at_lists_live_keys_in_order_with_ranges_and_pages(tmp_path):
    h, _ = open_history(tmp_path)
    h.apply([put(R, i + 1, float(i), "t", f"k{i:02d}", bytes([i])) for i in range(10)])
    h.apply([delete(11, 20.0, "t", "k03"), delete(12, 21.0, "t", "k04")])
    keys = [v.key for v in h.state_at("t", limit=100)]
    assert keys == [f"k{i:02d}" for i in range(10) if i not in (3, 4)]
    assert [v.key for v in h.state_at("t", lsn=11)] == [f"k{i:02d}" for i in range(10) if i != 3]
    page1 = h.state_at("t", limit=3)
    page2 = h.state_at("t", after=page1[-1].key, limit=3)
    assert [v.key for v in page1 + page2] == keys[:6]
    assert [v.key for v in h.state_at("t", start="k02", end="k07")] == ["k02", "k05", "k06"]
    assert [v.value for v in h.state_at("t", time=2.0)] == [b"\x00", b"\x01", b"\x02"]
    assert all(v.value is None for v in h.state_at("t", values=False))
    assert h.state_at("other") == []


def test_diff_reports_created_changed_deleted_by_content(tmp_path):
    h, holder = open_history(tmp_path)
    two = ring(2, (1, 2))
    h.apply([put(R, 1, 1.0, "t", "same", b"s"), put(R, 2, 2.0, "t", "chg", b"c1"), put(R, 3, 3.0, "t", "del", b"d")])
    h.apply([put(R, 4, 4.0, "t", "chg", b"c2"), delete(5, 5.0, "t", "del"), put(R, 6, 6.0, "t", "new", b"n"),
             put(R, 7, 7.0, "t", "tmp", b"x"), delete(8, 8.0, "t", "tmp")])
    holder.keyring = two
    h.apply([rewrap(two, 9, 9.0, "t", "same", b"s", version=2), put(two, 10, 9.5, "t", "same", b"s")])
    d = h.diff("t", from_lsn=3, to_lsn=10)  # "same": rewrapped, then the same bytes written again
    assert [(e.key, e.change) for e in d] == [("chg", "changed"), ("del", "deleted"), ("new", "created")]
    chg = d[0]
    assert (chg.size_before, chg.size_after, chg.lsn_before, chg.lsn_after) == (2, 2, 2, 4)
    assert (d[1].size_after, d[1].lsn_after, d[2].lsn_before) == (None, None, None)
    assert [e.key for e in h.diff("t", from_lsn=3, to_lsn=9, after="chg", limit=1)] == ["del"]
    assert [e.key for e in h.diff("t", from_time=3.5, to_time=4.5)] == ["chg"]
    assert h.diff("t", from_lsn=9) == []
    with pytest.raises(ValueError):
        h.diff("t", from_lsn=5, to_lsn=2)


def test_a_rewrap_is_a_version_with_the_new_key_version_and_the_same_content(tmp_path):
    h, holder = open_history(tmp_path)
    h.apply([put(R, 1, 1.0, "t", "k", b"v")])
    two = ring(2, (1, 2))
    holder.keyring = two
    h.apply([rewrap(two, 2, 2.0, "t", "k", b"v", version=2)])
    versions = h.history("t", "k")
    assert [(v.op, v.key_version, v.value) for v in versions] == [("put", 1, b"v"), ("rewrap", 2, b"v")]
    assert h.version_counts() == {1: 1, 2: 1}


def test_first_seed_is_the_base_state_and_the_origin_of_exact_answers(tmp_path):
    h, _ = open_history(tmp_path)
    blocks = [block(R, 3, "t", "a", b"A"), block(R, 7, "t", "b", b"B")]
    assert h.seed(10, iter(blocks), now=500.0) == 10
    assert h.cursor() == 10
    [a, b] = h.state_at("t")
    assert (a.op, a.lsn, a.time, a.value, b.lsn) == ("seed", 3, 500.0, b"A", 7)
    assert h.resolve().exact and h.resolve().lsn == 10
    assert not h.resolve(lsn=5).exact  # before the seed, the history does not know every change
    assert h.seed(8, iter([block(R, 1, "t", "z", b"Z")])) == 10  # an older snapshot changes nothing
    assert h.value_at("t", "z") is None


def test_reseed_after_a_gap_records_deletes_and_the_gap(tmp_path):
    h, _ = open_history(tmp_path)
    h.apply([put(R, 1, 1.0, "t", "keep", b"k"), put(R, 2, 2.0, "t", "gone", b"g"), put(R, 3, 3.0, "t", "chg", b"1"),
             put(R, 4, 4.0, "u", "other", b"o")])
    snapshot = [block(R, 1, "t", "keep", b"k"), block(R, 9, "t", "chg", b"2"), block(R, 12, "t", "new", b"n")]
    assert h.seed(20, iter(snapshot), tables=["t"], now=50.0) == 20
    assert [v.key for v in h.state_at("t")] == ["chg", "keep", "new"]
    assert h.value_at("t", "chg").value == b"2" and h.value_at("t", "gone") is None
    assert h.value_at("u", "other").value == b"o"  # another table than the snapshot's is left alone
    assert [v.op for v in h.history("t", "keep")] == ["put"]  # the version it had is not stored twice
    assert h.history("t", "gone")[-1].lsn == 20
    assert h.resolve(lsn=4).exact and not h.resolve(lsn=10).exact and h.resolve(lsn=20).exact


def test_a_seed_that_fails_midway_leaves_nothing(tmp_path):
    h, _ = open_history(tmp_path)

    def blocks():
        yield block(R, 1, "t", "a", b"A")
        raise ConnectionError("snapshot stream cut")

    with pytest.raises(ConnectionError):
        h.seed(5, blocks())
    assert h.cursor() == 0 and h.state_at("t") == []


def test_schema_version_is_recorded_and_a_newer_file_is_refused(tmp_path):
    h, _ = open_history(tmp_path)
    h.close()
    conn = sqlite3.connect(tmp_path / historydb.DB_NAME)
    assert conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone() == ("1",)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.execute("UPDATE meta SET value = '99' WHERE name = 'schema'")
    conn.commit()
    with pytest.raises(historydb.SchemaError, match="99"):
        HistoryStore(tmp_path, lambda: R, Compressor())
