"""HistoryStore identities, byte profiles and observers on a real SQLite file: what each version records, the
migration of a file made before, and the observations each committed batch hands to its observers."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3

import pytest
from chronoshard.shardnode.anomaly.profile import byte_profile, decode_profile, encode_profile
from chronoshard.shardnode.anomaly.types import CLIENT, REVERSION, ROTATION, ChangeObservation
from chronoshard.shardnode.serving.changestream import StreamChange
from chronoshard.shardnode.shadow.history import ApplyError

from tests.support.shadow_history import block, delete, open_history, put, rewrap, ring

R = ring(1, (1,))
TEXT, NOISE = b"plain ascii text, the same few letters " * 4, bytes(range(256)) * 2


def who(change: StreamChange, identity: str | None) -> StreamChange:
    """The change as a node that records identities sends it."""
    return dataclasses.replace(change, identity=identity)


def quantised(value: bytes) -> object:
    """The profile as stored (17 bytes) and read back."""
    return decode_profile(encode_profile(byte_profile(value)))


def test_versions_record_identity_and_profile_seeds_and_deletes_none(tmp_path):
    h, _ = open_history(tmp_path)
    h.seed(1, [block(R, 1, "t", "s", TEXT)])
    h.apply([who(put(R, 2, 10.0, "t", "a", NOISE), "alice"), who(delete(3, 11.0, "t", "s"), "bob")])
    seeded, gone = h.history("t", "s")
    assert (seeded.op, seeded.identity, decode_profile(seeded.profile)) == ("seed", None, quantised(TEXT))
    assert (gone.op, gone.identity, gone.profile) == ("delete", "bob", None)
    (a,) = h.history("t", "a")
    assert a.identity == "alice" and decode_profile(a.profile) == quantised(NOISE)
    assert decode_profile(a.profile).entropy > 7.9 and decode_profile(seeded.profile).entropy < 5
    assert h.value_at("t", "a").identity == "alice"


def test_a_history_file_from_before_gains_the_columns_and_keeps_its_rows(tmp_path):
    path = tmp_path / "shadow.sqlite3"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1'), ('cursor', '0');
        CREATE TABLE frames (tbl TEXT NOT NULL, key TEXT NOT NULL, lsn INTEGER NOT NULL, time REAL NOT NULL,
            op TEXT NOT NULL, tier INTEGER NOT NULL, segment INTEGER, key_version INTEGER, size INTEGER,
            stored_size INTEGER, checksum BLOB, frame BLOB, PRIMARY KEY (tbl, key, lsn));
        INSERT INTO frames VALUES ('t', 'k', 0, 1.0, 'delete', 0, NULL, NULL, 0, NULL, NULL, NULL);
    """)
    old.close()
    h, _ = open_history(tmp_path)
    cols = {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(frames)")}
    assert {"identity", "profile"} <= cols
    (v,) = h.history("t", "k", after_lsn=-1)
    assert (v.op, v.identity, v.profile) == ("delete", None, None)
    h.apply([who(put(R, 1, 2.0, "t", "k", b"v"), "alice")])
    assert h.history("t", "k")[0].identity == "alice"


def _observed(tmp_path) -> tuple[object, list[list[ChangeObservation]]]:
    h, _ = open_history(tmp_path)
    batches: list[list[ChangeObservation]] = []
    h.add_observer(batches.append)
    return h, batches


def test_observers_get_create_overwrite_twice_in_a_batch_delete_and_rewrap(tmp_path):
    h, batches = _observed(tmp_path)
    h.apply([who(put(R, 1, 10.0, "t", "a", TEXT), "alice")])
    # Out of LSN order on purpose: observations come in LSN order, each over the one before it in the batch.
    h.apply([who(put(R, 3, 12.0, "t", "a", NOISE), "mallory"), who(put(R, 2, 11.0, "t", "a", b"xy"), "alice"),
             rewrap(R, 5, 14.0, "t", "a", NOISE), who(delete(4, 13.0, "t", "b"), "bob")])
    h.apply([who(delete(6, 15.0, "t", "a"), "mallory"), who(put(R, 7, 16.0, "t", "a", b"again"), "chronoshard:"
                                                                  "reversion:undo-1")])
    assert [[o.lsn for o in b] for b in batches] == [[1], [2, 3, 4, 5], [6, 7]]
    by = {o.lsn: o for b in batches for o in b}
    create = by[1]
    assert (create.op, create.existed, create.prev_size, create.prev_profile, create.prev_lsn) == \
        ("put", False, None, None, None)
    assert (create.size, create.identity, create.origin, create.profile) == (len(TEXT), "alice", CLIENT,
                                                                            quantised(TEXT))
    first, second = by[2], by[3]
    assert (first.existed, first.prev_size, first.prev_lsn, first.prev_profile) == (True, len(TEXT), 1,
                                                                                    quantised(TEXT))
    assert (second.existed, second.prev_size, second.prev_lsn, second.prev_profile) == (True, 2, 2, quantised(b"xy"))
    assert second.identity == "mallory" and second.profile == quantised(NOISE) and second.size == len(NOISE)
    absent = by[4]  # a delete of a key the history never held
    assert (absent.op, absent.existed, absent.prev_lsn, absent.profile, absent.size) == ("delete", False, None,
                                                                                         None, 0)
    rot = by[5]
    assert (rot.op, rot.origin, rot.identity, rot.existed, rot.prev_lsn, rot.prev_size) == \
        ("rewrap", ROTATION, None, True, 3, len(NOISE))
    assert rot.profile == rot.prev_profile == quantised(NOISE)
    gone = by[6]
    assert (gone.op, gone.existed, gone.prev_lsn, gone.prev_size, gone.profile) == ("delete", True, 5, len(NOISE),
                                                                                    None)
    back = by[7]  # after a delete: the previous version is the tombstone, nothing live
    assert (back.existed, back.prev_lsn, back.prev_size, back.prev_profile, back.origin) == \
        (False, 6, None, None, REVERSION)


def test_observers_hear_only_committed_new_changes(tmp_path):
    h, batches = _observed(tmp_path)
    h.apply([put(R, 1, 1.0, "t", "a", b"a")])
    h.apply([put(R, 1, 1.0, "t", "a", b"a")])  # a repeated page: nothing new, nothing observed
    h.apply([], through=5)
    bad = dataclasses.replace(put(R, 7, 2.0, "t", "b", b"b"), frame=b"not a frame")
    with pytest.raises(ApplyError):
        h.apply([put(R, 6, 2.0, "t", "a", b"a2"), bad])
    h.remove_observer(batches.append)
    h.apply([put(R, 8, 3.0, "t", "a", b"a3")])
    assert [[o.lsn for o in b] for b in batches] == [[1]]


def test_an_observer_that_raises_is_logged_once_and_the_apply_stands(tmp_path, caplog):
    h, batches = _observed(tmp_path)

    def broken(batch: list[ChangeObservation]) -> None:
        raise RuntimeError("detector bug")

    h.add_observer(broken)
    seen: list[int] = []
    h.add_observer(lambda b: seen.extend(o.lsn for o in b))
    with caplog.at_level(logging.ERROR):
        assert h.apply([put(R, 1, 1.0, "t", "a", b"a")]) == 1
        assert h.apply([put(R, 2, 1.0, "t", "a", b"b")]) == 2
    assert [r.getMessage() for r in caplog.records].count(
        f"history observer {broken!r} failed; the batch is applied, the observer skipped it") == 1
    assert h.value_at("t", "a").value == b"b" and seen == [1, 2] and len(batches) == 2


@dataclasses.dataclass(frozen=True)
class Ret:
    hot_seconds: float = 600.0
    warm_seconds: float = 1e9
    cold_seconds: float = 2e9


def test_observation_of_a_key_whose_previous_version_was_compacted(tmp_path):
    h, batches = _observed(tmp_path)
    t0 = 1_000_000 * 3600.0
    h.apply([who(put(R, 1, t0, "t", "a", TEXT), "alice")])
    assert h.compact(t0 + 3600, Ret(), 60.0)["warm"] == 1
    h.apply([who(put(R, 2, t0 + 3601, "t", "a", b"new"), "alice")])
    o = batches[-1][0]
    assert (o.existed, o.prev_lsn, o.prev_size, o.prev_profile) == (True, 1, len(TEXT), quantised(TEXT))


def test_history_answers_carry_the_identity(tmp_path):
    from chronoshard.shardnode.shadow.server import version_json

    h, _ = open_history(tmp_path)
    h.seed(1, [block(R, 1, "t", "a", b"seeded")])
    h.apply([who(put(R, 2, 1.0, "t", "a", b"v"), "alice")])
    assert [version_json(v)["identity"] for v in h.history("t", "a")] == [None, "alice"]


def test_the_stored_profile_is_encode_profile_of_byte_profile():
    import random

    from chronoshard.shardnode.shadow.observations import profile_of, stored_profile

    rng = random.Random(5)
    values = [b"", b"a", TEXT, NOISE, bytes(1000), b"\xff" * 3]
    values += [rng.randbytes(rng.randrange(1, 700)) for _ in range(2000)]
    values += [bytes(rng.choice(b"abc{}:,0123456789") for _ in range(rng.randrange(1, 300))) for _ in range(2000)]
    assert [stored_profile(v) for v in values] == [encode_profile(byte_profile(v)) for v in values]
    assert [profile_of(stored_profile(v)) for v in values] == [decode_profile(stored_profile(v)) for v in values]
    assert profile_of(None) is None and profile_of(b"short") is None


def test_observations_after_replay_what_observers_were_given(tmp_path):
    h, batches = _observed(tmp_path)
    h.seed(1, [block(R, 1, "t", "s", TEXT)])  # a seed is the base, not a change: never observed
    h.apply([who(put(R, 2, 10.0, "t", "a", TEXT), "alice"), who(put(R, 3, 11.0, "u", "b", NOISE), "bob")])
    h.apply([who(put(R, 4, 12.0, "t", "a", b"xy"), "alice"), who(delete(5, 13.0, "t", "s"), "bob"),
             rewrap(R, 6, 14.0, "u", "b", NOISE)])
    given = [o for b in batches for o in b]
    assert [o.lsn for o in given] == [2, 3, 4, 5, 6]
    assert h.observations_after(0, 100) == given
    assert h.observations_after(3, 2) == given[2:4]
