"""Recovery from woven snapshots on real files: a history written through the shadow's code, a weave written through
the weaver's code; the woven path and the standard path (shadow snapshot + replay) give the same state at every
point; a range that is not a half's, a missing or damaged weave file use the standard path."""

from __future__ import annotations

import logging
import random
import sqlite3

from chronoshard.shardnode.shadow import wovenbase
from chronoshard.shardnode.weave.store import LOWER, UPPER

from tests.support.woven_history import KEYSPACE_MAX, RANGES, SPLIT, build


def _conn(built):
    return sqlite3.connect(f"file:{built.history.path}?mode=ro", uri=True)


def test_both_paths_give_identical_states_at_many_random_points(tmp_path):
    built = build(tmp_path, keys=300, steps=14, per_step=120, full_every=4, weave_from_step=3)
    conn = _conn(built)
    rnd = random.Random(7)
    first_point = built.snapshot_lsns[2]  # the weave's first point is the snapshot taken at step 3 or later
    woven_used = 0
    for lsn in [rnd.randrange(1, built.last_lsn + 1) for _ in range(60)] + [built.last_lsn, first_point]:
        for half in (LOWER, UPPER):
            rng = RANGES[half]
            base, state = wovenbase.state_at(conn, built.weave_path, [rng], lsn)
            std_base, std = wovenbase.standard_state(conn, rng, lsn)
            assert wovenbase.digest(state) == wovenbase.digest(std), (lsn, half, base)
            assert base.lsn <= lsn and std_base.kind in ("snapshot", "none")
            # The full state from the history itself (no snapshot at all) agrees too.
            assert state == wovenbase.replay(conn, rng, 0, lsn, {})
            if base.kind == "woven":
                woven_used += 1
                assert std_base.lsn <= lsn
            else:
                assert lsn < first_point or base.kind != "woven"
    assert woven_used > 40  # most points are after the weave began
    conn.close()


def test_a_range_that_is_not_a_halfs_is_not_served_from_the_weave(tmp_path):
    built = build(tmp_path, keys=100, steps=5, per_step=50)
    conn = _conn(built)
    for rng in [(SPLIT + 1, KEYSPACE_MAX), (0, KEYSPACE_MAX), (0, SPLIT)]:
        base, state = wovenbase.state_at(conn, built.weave_path, [rng], built.last_lsn)
        assert base.kind == "snapshot"
        assert state == wovenbase.standard_state(conn, rng, built.last_lsn)[1]
    base, _ = wovenbase.state_at(conn, built.weave_path, [RANGES[UPPER]], built.last_lsn)
    assert base.kind == "woven"
    # Two ranges (a partition of several ranges) never match a half.
    base, _ = wovenbase.state_at(conn, built.weave_path, [RANGES[LOWER], RANGES[UPPER]], built.last_lsn)
    assert base.kind == "snapshot"
    conn.close()


def test_missing_or_damaged_weave_file_falls_back_with_one_log_line(tmp_path, caplog):
    built = build(tmp_path, keys=100, steps=5, per_step=50)
    conn = _conn(built)
    rng = RANGES[UPPER]
    want = wovenbase.standard_state(conn, rng, built.last_lsn)[1]
    caplog.set_level(logging.WARNING, logger=wovenbase.__name__)
    base, state = wovenbase.state_at(conn, tmp_path / "absent.sqlite3", [rng], built.last_lsn)
    assert base.kind == "snapshot" and state == want and caplog.records == []  # absent: nothing to say

    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database " * 100)
    base, state = wovenbase.state_at(conn, garbage, [rng], built.last_lsn)
    assert base.kind == "snapshot" and state == want and len(caplog.records) == 1

    caplog.clear()
    w = sqlite3.connect(built.weave_path)
    w.execute("UPDATE woven_pages SET data = x'28b52ffd00deadbeef'")
    w.commit()
    w.close()
    base, state = wovenbase.state_at(conn, built.weave_path, [rng], built.last_lsn)
    assert base.kind == "snapshot" and state == want
    assert len(caplog.records) == 1 and "damaged" in caplog.records[0].getMessage()
    conn.close()
