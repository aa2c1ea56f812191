"""Woven points from a real shadow history file (shadow/history.py on disk, opened read-only): the full point
equals the shadow's snapshot state filtered to each half, a differential holds the newest version of each key
changed since, tombstones included, and the halves split by keyspace id."""

from __future__ import annotations

from chronoshard.shardnode.keyspace.partitioning import keyspace_id
from chronoshard.shardnode.weave import weaving
from chronoshard.shardnode.weave.pages import Row
from chronoshard.shardnode.weave.store import LOWER, UPPER, WeaveStore

from tests.support.shadow_history import delete, open_history, put
from tests.support.stores import ring

R = ring(1, (1,))
T0 = 1_000_000 * 3600.0
HALF = 1 << 63
RANGES = {LOWER: (0, HALF - 1), UPPER: (HALF, (1 << 64) - 1)}
KEYS = [f"k{i:02}" for i in range(40)]


def test_half_of_splits_by_keyspace_id():
    for k in KEYS:
        want = LOWER if keyspace_id("t", k) < HALF else UPPER
        assert weaving.half_of("t", k, RANGES) == want
    assert weaving.half_of("t", "k00", {LOWER: (0, 0)}) in (None, LOWER)
    assert {weaving.half_of("t", k, RANGES) for k in KEYS} == {LOWER, UPPER}


def test_full_then_differential_equal_the_shadow(tmp_path):
    h, _ = open_history(tmp_path)
    h.apply([put(R, i + 1, T0 + 1 + i * 0.1, "t", k, k.encode()) for i, k in enumerate(KEYS)])
    h.apply([put(R, 100, T0 + 61, "t", "k00", b"later")])
    first = h.take_snapshot(60.0, 10)
    assert first is not None
    h.apply([put(R, 101, T0 + 62, "t", "k01", b"new"), delete(102, T0 + 63, "t", "k02"),
             put(R, 103, T0 + 64, "u", "x", b"other table")])
    h.apply([put(R, 104, T0 + 121, "t", "k03", b"after the second boundary")])
    second = h.take_snapshot(60.0, 10)
    assert second is not None and second.lsn == 103
    conn = weaving.open_shadow(h.path)
    try:
        snap = weaving.newest_snapshot(conn)
        assert snap is not None and (snap.id, snap.lsn) == (second.id, 103)
        full = weaving.full_rows(conn, first.id, RANGES)
        diff = weaving.diff_rows(conn, first.lsn, second.lsn, RANGES)
    finally:
        conn.close()
    want = h.snapshot_state(first.id)
    got = {(r.tbl, r.key): r.lsn for half in full.values() for r in half}
    assert got == want
    for half, rows in full.items():
        assert all(weaving.half_of(r.tbl, r.key, RANGES) == half for r in rows)
        assert rows == sorted(rows, key=lambda r: (r.tbl, r.key))
        assert all(r.frame is not None and r.key_version == 1 and r.checksum for r in rows)
    changed = {(r.tbl, r.key): (r.lsn, r.op) for half in diff.values() for r in half}
    # k00@100 came after the first boundary (T0 + 60), so it is a change of the second point.
    assert changed == {("t", "k00"): (100, "put"), ("t", "k01"): (101, "put"), ("t", "k02"): (102, "delete"),
                       ("u", "x"): (103, "put")}
    # Rows are copied as stored: the frame the shadow holds, byte for byte.
    stored = h._conn.execute("SELECT frame FROM frames WHERE tbl = 't' AND key = 'k01' AND lsn = 101").fetchone()[0]
    assert next(r.frame for half in diff.values() for r in half if r.key == "k01") == stored


def test_woven_state_is_full_plus_differentials(tmp_path):
    h, _ = open_history(tmp_path / "h.sqlite3")
    h.apply([put(R, i + 1, T0 + 1 + i * 0.1, "t", k, k.encode()) for i, k in enumerate(KEYS)])
    h.apply([put(R, 60, T0 + 61, "t", "k00", b"x")])
    a = h.take_snapshot(60.0, 10)
    h.apply([delete(61, T0 + 62, "t", "k05"), put(R, 62, T0 + 63, "t", "k06", b"y")])
    h.apply([put(R, 63, T0 + 121, "t", "k07", b"z")])
    b = h.take_snapshot(60.0, 10)
    assert a is not None and b is not None
    conn = weaving.open_shadow(h.path)
    full, diff = weaving.full_rows(conn, a.id, RANGES), weaving.diff_rows(conn, a.lsn, b.lsn, RANGES)
    conn.close()
    store = WeaveStore(tmp_path / "weave.sqlite3")
    fulls = store.add_points([("w", half, a.boundary, a.lsn, "full", None, a.id, full[half]) for half in RANGES])
    base = {p.half: p.id for p in fulls}
    diffs = store.add_points([("w", half, b.boundary, b.lsn, "differential", base[half], b.id, diff[half])
                              for half in RANGES])
    whole = {}
    for p in diffs:
        whole |= {k: r.lsn for k, r in store.state(p.id).items()}
    assert whole == h.snapshot_state(b.id)
    # Retention: the differential becomes full, the full goes; the state is unchanged.
    store.apply_retention([p.id for p in diffs], [p.id for p in fulls])
    after = {}
    for p in diffs:
        assert store.point(p.id).kind == "full"
        after |= {k: r.lsn for k, r in store.state(p.id).items()}
    assert after == whole and {p.id for p in store.points()} == {p.id for p in diffs}
    assert store.version_counts() == {1: len(whole)}
    store.close()


def test_retention_over_a_longer_chain_keeps_the_state(tmp_path):
    store = WeaveStore(tmp_path / "weave.sqlite3")
    (a,) = store.add_points([("w", LOWER, 1.0, 1, "full", None, 1, [row("a", 1), row("b", 1)])])
    (b,) = store.add_points([("w", LOWER, 2.0, 2, "differential", a.id, 2, [row("a", 2, "delete"), row("c", 2)])])
    (c,) = store.add_points([("w", LOWER, 3.0, 3, "differential", b.id, 3, [row("d", 3)])])
    before = store.state(c.id)
    store.apply_retention([c.id], [a.id, b.id])
    assert store.chain(c.id) == [store.point(c.id)] and store.point(c.id).kind == "full"
    assert store.state(c.id) == before and sorted(k for _, k in before) == ["b", "c", "d"]
    assert store.version_counts() == {1: 3} and store.point(c.id).rows == 3
    store.close()


def row(key: str, lsn: int, op: str = "put") -> Row:
    """A woven row of table t (a delete has no version, checksum or frame)."""
    live = op != "delete"
    return Row("t", key, lsn, 1.0, op, 1 if live else None, b"c" if live else None, b"f" if live else None)
