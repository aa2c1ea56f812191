"""The cold tier's bucket layout: segment objects, manifests, the state at a point; real-server export/restore."""

from __future__ import annotations

import json
import random

import pytest
from chronoshard.shardnode.keys.keyring import Keyring, KeyVersion
from chronoshard.shardnode.shadow import backup
from chronoshard.shardnode.shadow.backup import (
    BackupError,
    ExportBatch,
    Manifest,
    ManifestConflict,
    SegmentEntry,
    StateBuilder,
)
from chronoshard.shardnode.shadow.codec import Compressor
from chronoshard.shardnode.shadow.columnar import MetaRow
from chronoshard.shardnode.shadow.sealing import open_version, seal_version
from hypothesis import given, settings
from hypothesis import strategies as st

RING = Keyring(1, [KeyVersion(1, "primary")], {1: b"\x07" * 32})
COMP = Compressor()
T0 = 1_764_000_000.0


# ---- a reference model: replay versions in LSN order ----------------------------------------------
def replay(versions, *, time=None, lsn=None, before=None):
    """(table, key) -> lsn of the frame holding the value at the point, by replaying every visible version."""
    state: dict[tuple[str, str], int] = {}
    for row, frame in sorted(versions, key=lambda v: v[0].lsn):
        if (time is not None and row.time > time) or (lsn is not None and row.lsn > lsn) \
                or (before is not None and row.time >= before):
            continue
        k = (row.table, row.key)
        if row.op == "delete":
            state.pop(k, None)
        elif frame is not None:
            state[k] = row.lsn
    return state


def version(lsn, table, key, op="put", value=None, time=None):
    """A MetaRow and its sealed history frame (None for a delete)."""
    t = T0 + lsn if time is None else time
    if op == "delete":
        return MetaRow(lsn, t, table, key, "delete", None, 0, 0), None
    plain = value if value is not None else f"{table}/{key}@{lsn}".encode() * 3
    sealed = seal_version(RING, table, key, lsn, plain, COMP)
    return MetaRow(lsn, t, table, key, op, sealed.key_version, len(plain), sealed.stored_size), sealed.frame


def batch(versions, dictionaries=()):
    return ExportBatch([r for r, _ in versions], [f for _, f in versions], dictionaries)


# ---- segments -------------------------------------------------------------------------------------
rows_st = st.lists(st.tuples(st.integers(1, 10_000), st.sampled_from(["t1", "t2"]),
                             st.text(min_size=1, max_size=8), st.sampled_from(["put", "delete", "rewrap", "seed"]),
                             st.binary(min_size=16, max_size=64)), min_size=1, max_size=40)


def _synthetic(items):
    out = []
    for lsn, table, key, op, frame in items:
        if op == "delete":
            out.append((MetaRow(lsn, T0 + lsn, table, key, op, None, 0, 0), None))
        else:
            out.append((MetaRow(lsn, T0 + lsn, table, key, op, 1, len(frame), len(frame)), frame))
    return out


@given(rows_st)
@settings(max_examples=80, deadline=None)
def test_segment_object_round_trip(items):
    versions = _synthetic(items)
    blob = backup.encode_segment_object([r for r, _ in versions], [f for _, f in versions])
    rows, frames = backup.decode_segment_object(blob)
    assert rows == [r for r, _ in versions]
    assert frames == [f for _, f in versions]
    assert backup.segment_frames(blob) == frames


@given(rows_st, st.data())
@settings(max_examples=60, deadline=None)
def test_truncated_or_extended_segment_is_refused(items, data):
    versions = _synthetic(items)
    blob = backup.encode_segment_object([r for r, _ in versions], [f for _, f in versions])
    cut = data.draw(st.integers(0, len(blob) - 1))
    for decode in (backup.decode_segment_object, backup.segment_frames):
        with pytest.raises(BackupError):
            decode(blob[:cut])
        with pytest.raises(BackupError):
            decode(blob + b"\0")


def test_segment_name_carries_the_lsn_range_and_content_digest():
    name = backup.segment_name(5, 90, b"abc")
    assert name.startswith("segments/00000000000000000005-00000000000000000090-") and name.endswith(".seg")
    assert backup.parse_segment_name(name) == (5, 90)
    assert backup.segment_name(5, 90, b"abc") == name != backup.segment_name(5, 90, b"abd")
    with pytest.raises(BackupError):
        backup.parse_segment_name("segments/5-90-x.seg")


def test_export_batch_checks_frames_against_ops():
    put, frame = version(1, "t", "k")
    with pytest.raises(BackupError):
        ExportBatch([put], [None])
    with pytest.raises(BackupError):
        ExportBatch([MetaRow(2, T0, "t", "k", "delete", None, 0, 0)], [frame])
    with pytest.raises(BackupError):
        ExportBatch([], [])
    with pytest.raises(BackupError):
        ExportBatch([put], [frame, frame])


# ---- manifests ------------------------------------------------------------------------------------
def _entry(first, last, content=b"x"):
    return SegmentEntry(backup.segment_name(first, last, content), first, last, T0 + first, T0 + last, 3, 10, "ab")


def test_manifest_round_trip_and_next_generation():
    m1 = backup.next_manifest(None, _entry(1, 10), [], {"source": "ns/set"}, T0)
    assert m1.generation == 1 and m1.last_lsn == 10
    m2 = backup.next_manifest(m1, _entry(11, 20), [backup.DictionaryEntry("t", 7, "dictionaries/t/00000007.zdict",
                                                                          "cd")], {}, T0 + 1)
    assert m2.generation == 2 and [s.first_lsn for s in m2.segments] == [1, 11]
    assert m2.labels == {"source": "ns/set"} and m2.time_range == (T0 + 1, T0 + 20)
    assert backup.decode_manifest(backup.encode_manifest(m2)) == m2
    # The same segment again (a retried export) is listed once.
    m3 = backup.next_manifest(m2, _entry(11, 20), [], {}, T0 + 2)
    assert len(m3.segments) == 2 and m3.generation == 3


@pytest.mark.parametrize("blob", [b"not json", b"[]", b'{"format": 99}', b'{"format": 1}',
                                  json.dumps({"format": 1, "generation": 1, "created": 0, "dictionaries": [],
                                              "segments": [{**_entry(1, 2).to_json(), "lastLsn": 3}]}).encode()])
def test_bad_manifests_are_refused(blob):
    with pytest.raises(BackupError):
        backup.decode_manifest(blob)


# ---- the state at a point -------------------------------------------------------------------------
ops_st = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]),
                            st.sampled_from(["put", "put", "delete", "rewrap", "rewrap-noframe", "seed"])),
                  min_size=1, max_size=60)


@given(ops_st, st.data())
@settings(max_examples=150, deadline=None)
def test_state_builder_matches_replay(ops, data):
    versions = []
    for i, (key, op) in enumerate(ops, start=1):
        if op == "delete":
            versions.append((MetaRow(i, T0 + i, "t", key, "delete", None, 0, 0), None))
        elif op == "rewrap-noframe":
            versions.append((MetaRow(i, T0 + i, "t", key, "rewrap", 2, 5, 5), None))
        else:
            versions.append((MetaRow(i, T0 + i, "t", key, op, 1, 5, 5), b"f" * 20))
    # Versions arrive split over segments in any order.
    shuffled = data.draw(st.permutations(versions))
    cut = data.draw(st.integers(0, len(shuffled)))
    point_lsn = data.draw(st.one_of(st.none(), st.integers(0, len(ops) + 1)))
    point_time = data.draw(st.one_of(st.none(), st.floats(T0, T0 + len(ops) + 1)))
    before = data.draw(st.one_of(st.none(), st.integers(0, len(ops) + 1).map(lambda i: T0 + i)))
    sb = StateBuilder(time=point_time, lsn=point_lsn, before=before)
    for seg, part in enumerate((shuffled[:cut], shuffled[cut:])):
        sb.add(seg, [r for r, _ in part], [f is not None for _, f in part])
    got = {k: v[0] for k, v in sb.live().items()}
    assert got == replay(versions, time=point_time, lsn=point_lsn, before=before)


def test_cold_point_is_the_hour_boundary_at_or_before():
    hour = 1_000_000 * 3600.0
    assert backup.cold_point(hour) == hour == backup.cold_point(hour + 3599.9)
    assert backup.cold_point(hour - 0.001) == hour - 3600


# ---- against the real S3 server -------------------------------------------------------------------
def _restored(store, **point):
    return {(v.table, v.key): open_version(RING, v.table, v.key, v.lsn, v.frame, COMP)
            for v in backup.restore_point(store, **point)}


def _reference(versions, **point):
    plain = {}
    for row, frame in versions:
        if frame is not None:
            plain[row.lsn] = open_version(RING, row.table, row.key, row.lsn, frame, COMP)
    return {k: plain[lsn] for k, lsn in replay(versions, **point).items()}


def _history(n_keys=30, n_versions=200, seed=7):
    rnd = random.Random(seed)
    versions = []
    for lsn in range(1, n_versions + 1):
        key = f"k{rnd.randrange(n_keys):03d}"
        op = "delete" if rnd.random() < 0.15 else "put"
        value = rnd.randbytes(rnd.randrange(1, 400)) if op == "put" else None
        versions.append(version(lsn, rnd.choice(["orders", "users"]), key, op, value=value))
    return versions


def test_export_then_restore_at_points(s3_server):
    store = s3_server.store()
    versions = _history()
    m1 = backup.export_batch(store, batch(versions[:120]), labels={"source": "ns/orders/0"})
    m2 = backup.export_batch(store, batch(versions[120:]))
    assert (m1.generation, m2.generation) == (1, 2) and m2.last_lsn == 200 and len(m2.segments) == 2
    assert backup.read_manifest(store) == m2
    for point in ({}, {"lsn": 50}, {"lsn": 120}, {"lsn": 121}, {"time": T0 + 170.5}, {"time": T0}, {"lsn": 0}):
        assert _restored(store, **point) == _reference(versions, **point), point
    assert _restored(s3_server.store()) == {}  # an empty prefix is an empty backup


def test_dictionaries_travel_with_the_backup(s3_server):
    samples = [json.dumps({"id": i, "name": f"customer {i}", "status": "active"}).encode() for i in range(400)]
    dict_bytes = Compressor.train_dictionary(samples, 1024)
    comp = Compressor(dictionaries={"users": dict_bytes})
    rows, frames = [], []
    for lsn, value in enumerate(samples[:20], start=1):
        sealed = seal_version(RING, "users", f"u{lsn}", lsn, value, comp)
        rows.append(MetaRow(lsn, T0 + lsn, "users", f"u{lsn}", "put", 1, len(value), sealed.stored_size))
        frames.append(sealed.frame)
    store = s3_server.store()
    manifest = backup.export_batch(store, ExportBatch(rows, frames, [("users", dict_bytes)]))
    fresh = Compressor()
    for table, blob in backup.load_dictionaries(store, manifest):
        fresh.add_dictionary(table, blob)
    got = {v.key: open_version(RING, v.table, v.key, v.lsn, v.frame, fresh) for v in backup.restore_point(store)}
    assert got == {f"u{i}": samples[i - 1] for i in range(1, 21)}


def test_interrupted_upload_leaves_the_previous_backup_whole(s3_server):
    store = s3_server.store()
    versions = _history(seed=11)
    m1 = backup.export_batch(store, batch(versions[:100]))
    # A crash after the segment upload and before the manifest: exactly what upload_segment alone leaves.
    orphan, _ = backup.upload_segment(store, batch(versions[100:]))
    assert store.exists(orphan.name)
    assert backup.read_manifest(store) == m1
    assert _restored(store) == _reference(versions[:100])
    # The next export lists its own segment; the orphan is never trusted, and prune removes it.
    m2 = backup.export_batch(store, batch(versions[100:150]))
    assert orphan.name not in {s.name for s in m2.segments}
    assert _restored(store) == _reference(versions[:150])
    gone = backup.prune(store, keep=1)
    assert orphan.name in gone and backup.manifest_name(1) in gone
    assert not store.exists(orphan.name)
    assert _restored(store) == _reference(versions[:150])


def test_a_damaged_newest_manifest_falls_back_to_the_previous_one(s3_server):
    store = s3_server.store()
    versions = _history(seed=3)
    m1 = backup.export_batch(store, batch(versions[:80]))
    backup.export_batch(store, batch(versions[80:]))
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=store.key(backup.manifest_name(2)),
                                  Body=b'{"format": 1, "generation": 2, "segm')  # no checksum: a foreign write
    assert backup.read_manifest(store) == m1
    assert _restored(store) == _reference(versions[:80])


def test_a_damaged_segment_fails_the_restore_loudly(s3_server):
    store = s3_server.store()
    m1 = backup.export_batch(store, batch(_history(seed=5)[:40]))
    seg = m1.segments[0].name
    store.put(seg, b"CSBK\x01\x00\x00\x00\x00")  # well checksummed, but not what the manifest recorded
    with pytest.raises(BackupError, match="does not match the manifest"):
        list(backup.restore_point(store))
    store.delete(seg)
    with pytest.raises(BackupError, match="missing"):
        list(backup.restore_point(store))


def test_two_writers_cannot_commit_the_same_generation(s3_server):
    store = s3_server.store()
    versions = _history(seed=9)
    backup.export_batch(store, batch(versions[:50]))
    previous = backup.read_manifest(store)
    seg_a, _ = backup.upload_segment(store, batch(versions[50:60]))
    seg_b, _ = backup.upload_segment(store, batch(versions[60:70]))
    won = backup.commit_manifest(store, previous, seg_a, [])
    with pytest.raises(ManifestConflict):
        backup.commit_manifest(store, previous, seg_b, [])
    assert backup.read_manifest(store) == won


def test_restore_of_an_empty_manifest_is_empty():
    assert Manifest(1, T0).last_lsn == 0 and Manifest(1, T0).time_range is None
