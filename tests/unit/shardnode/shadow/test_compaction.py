"""Compaction and snapshots applied to a real history file with an injected clock: hot -> warm -> cold -> expired,
answers marked exact only where every change is kept, the state at every bucket boundary unchanged."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from chronoshard.shardnode.shadow.columnar import decode_segment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.shadow_history import delete, open_history, put, rewrap, ring

R = ring(1, (1,))
T0 = 1_000_000 * 3600.0  # an hour boundary
INTERVAL = 60.0


@dataclass(frozen=True)
class Ret:
    hot_seconds: float = 600.0
    warm_seconds: float = 3 * 3600.0
    cold_seconds: float = 8 * 3600.0


def _tiers(h):
    conn = sqlite3.connect(h.path)
    return dict(conn.execute("SELECT tier, count(*) FROM frames GROUP BY tier").fetchall())


def test_hot_versions_past_retention_move_to_warm_thinned_per_interval(tmp_path):
    h, _ = open_history(tmp_path)
    h.apply([put(R, 1, T0 + 1, "t", "a", b"a1"), put(R, 2, T0 + 2, "t", "a", b"a2"),
             put(R, 3, T0 + 3, "t", "b", b"b1"), delete(4, T0 + 4, "t", "b"),
             put(R, 5, T0 + 61, "t", "a", b"a3"), put(R, 6, T0 + 2000, "t", "a", b"a4")])
    out = h.compact(T0 + 1300, Ret(), INTERVAL)  # hot horizon: T0 + 660
    assert out["warm"] == 3 and out["warmDropped"] == 2 and out["cold"] == 0
    assert _tiers(h) == {0: 1, 1: 3}
    assert [(v.lsn, v.exact) for v in h.history("t", "a")] == [(2, False), (5, False), (6, True)]
    assert [(v.lsn, v.op) for v in h.history("t", "b")] == [(4, "delete")]  # kept as a tombstone
    # Sizes of compacted versions come from their columnar segment.
    assert h.value_at("t", "a", lsn=5).size == 2 and h.value_at("t", "a", lsn=5).value == b"a3"
    # Not exact there: b's put at 3 was compacted away (its interval ends with b deleted).
    assert h.value_at("t", "b", lsn=3) is None
    assert not h.resolve(lsn=3).exact and h.resolve(lsn=5).exact and h.resolve(lsn=6).exact
    p = h.resolve(time=T0 + 30)  # in warm: read at the interval boundary at or before it
    assert (p.time, p.exact) == (T0, False)
    conn = sqlite3.connect(h.path)
    [(blob,)] = conn.execute("SELECT meta FROM segments").fetchall()
    assert [(r.lsn, r.op, r.size) for r in decode_segment(blob)] == [(2, "put", 2), (4, "delete", 0), (5, "put", 2)]
    stats = h.stats()
    assert stats["tiers"]["warm"]["versions"] == 3 and stats["tiers"]["hot"]["versions"] == 1
    assert stats["tiers"]["warm"]["rawBytes"] == 4 and stats["tiers"]["hot"]["oldestLsn"] == 6
    assert stats["compressionRatio"] > 0 and stats["cursor"] == 6
    assert h.compact(T0 + 1300, Ret(), INTERVAL)["warm"] == 0  # nothing more is due


def test_warm_to_cold_is_hourly_and_expiry_keeps_the_base_state(tmp_path):
    h, _ = open_history(tmp_path)
    events = [(T0 + i * 900.0, "k", f"v{i}".encode()) for i in range(8)]  # four per hour, two hours
    events += [(T0 + 100.0, "once", b"o"), (T0 + 200.0, "gone", b"g"), (T0 + 300.0, "gone", None)]
    stream = [put(R, n + 1, t, "t", key, v) if v is not None else delete(n + 1, t, "t", key)
              for n, (t, key, v) in enumerate(sorted(events))]
    h.apply(stream)
    now = T0 + 5 * 3600 + 1  # warm horizon T0 + 2h: both hours go to cold
    out = h.compact(now, Ret(), INTERVAL)
    assert out["cold"] == 4 and _tiers(h) == {2: 4}
    assert [v.value for v in h.history("t", "k")] == [b"v3", b"v7"]
    assert [v.op for v in h.history("t", "gone")] == ["delete"]
    assert h.resolve(time=T0 + 5000).time == T0 + 3600  # cold: rounded down to the hour
    later = T0 + 9 * 3600 + 1  # expiry horizon T0 + 1h: the first hour expires
    out = h.compact(later, Ret(), INTERVAL)
    assert out["expired"] == 1  # the tombstone of "gone" before the horizon goes; the bases stay
    assert [v.value for v in h.history("t", "k")] == [b"v3", b"v7"] and h.history("t", "gone") == []
    assert h.value_at("t", "once").value == b"o"  # written once long ago: still the current state
    assert h.stats()["oldestRestorableTime"] == T0 + 3600
    h.compact(T0 + 11 * 3600 + 1, Ret(), INTERVAL)
    assert [v.value for v in h.history("t", "k")] == [b"v7"]
    assert [v.key for v in h.state_at("t")] == ["k", "once"]
    conn = sqlite3.connect(h.path)
    rows = sum(len(decode_segment(b)) for (b,) in conn.execute("SELECT meta FROM segments"))
    assert rows == conn.execute("SELECT count(*) FROM frames WHERE tier > 0").fetchone()[0] == 2


def test_small_chunks_keep_every_bucket_boundary_right(tmp_path):
    h, _ = open_history(tmp_path)
    h.apply([put(R, i + 1, T0 + i * 7.0, "t", f"k{i % 3}", bytes([i])) for i in range(200)])
    expected = {b: sorted((v.key, v.value) for v in h.state_at("t", time=b - 1e-6))
                for b in (T0 + 60.0 * n for n in range(25))}
    h.compact(T0 + 600 + 700, Ret(), INTERVAL, chunk=16)  # many small transactions
    assert _tiers(h)[1] > 0
    for b, state in expected.items():
        if b <= T0 + 660:
            assert sorted((v.key, v.value) for v in h.state_at("t", time=b)) == state


def test_snapshots_full_and_differential_restore_the_boundary_state(tmp_path):
    h, _ = open_history(tmp_path)
    assert h.take_snapshot(INTERVAL, 3) is None  # nothing applied yet
    lsn = 0
    for minute in range(8):
        batch = []
        for key in ("a", "b", "c")[: 1 + minute % 3]:
            lsn += 1
            batch.append(put(R, lsn, T0 + minute * 60 + 5 + lsn, "t", key, f"{key}{minute}".encode()))
        if minute == 4:
            lsn += 1
            batch.append(delete(lsn, T0 + minute * 60 + 30, "t", "a"))
        h.apply(batch)
        h.take_snapshot(INTERVAL, 3)
    snaps = h.snapshots()
    assert [s.boundary - T0 for s in snaps] == [0.0, 60.0, 120.0, 180.0, 240.0, 300.0, 360.0, 420.0]
    assert [s.kind for s in snaps] == ["full", "differential", "differential", "full", "differential",
                                       "differential", "full", "differential"]
    assert h.take_snapshot(INTERVAL, 3) is None  # that boundary is done
    for s in snaps:
        model = {("t", v.key): v.lsn for v in h.state_at("t", time=s.boundary - 1e-6)}
        assert h.snapshot_state(s.id) == model


def _model_state(model, t, inclusive=False):
    live = {}
    for c in model:
        if c.time < t or (inclusive and c.time == t):
            if c.op == "delete":
                live.pop(c.key, None)
            else:
                live[c.key] = c.value
    return sorted(live.items())


def _model_at_lsn(model, lsn):
    live = {}
    for c in model:
        if c.lsn <= lsn:
            if c.op == "delete":
                live.pop(c.key, None)
            else:
                live[c.key] = c.value
    return sorted(live.items())


@dataclass(frozen=True)
class _C:
    lsn: int
    time: float
    op: str
    key: str
    value: bytes | None


steps = st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from(["put", "put", "delete", "rewrap"]),
                           st.integers(0, 1200)), min_size=1, max_size=60)


def _stream(steps):
    model, stream, live, t = [], [], {}, T0
    for key, op, dt in steps:
        t += dt
        lsn = len(stream) + 1
        if op == "put":
            live[key] = f"{key}{lsn}".encode()
            stream.append(put(R, lsn, t, "t", key, live[key]))
        elif key in live and op == "delete":
            del live[key]
            stream.append(delete(lsn, t, "t", key))
        elif key in live:
            stream.append(rewrap(R, lsn, t, "t", key, live[key]))
        else:
            continue
        model.append(_C(lsn, t, stream[-1].op, key, live.get(key)))
    return model, stream, live, t


def _check_boundaries(h, model, hz, last_time):
    """Every interval boundary from the expiry horizon on: the state the model had there (time queries in
    warm/cold read at the bucket boundary at or before the time, hot ones at the time itself)."""
    boundary = max(hz["expireBefore"], T0 - 3600.0)
    while boundary <= last_time + 3600:
        p = h.resolve(time=boundary)
        if boundary >= hz["warmBefore"]:
            expected = _model_state(model, boundary, inclusive=True)
        else:
            assert not p.exact and p.time <= boundary
            expected = _model_state(model, p.time)
        assert [(v.key, v.value) for v in h.state_at("t", time=boundary)] == expected, boundary
        boundary += INTERVAL


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps, data=st.data())
def test_compacted_history_answers_the_model_at_every_boundary(steps, data):
    model, stream, live, t = _stream(steps)
    with tempfile.TemporaryDirectory() as d:
        h, _ = open_history(Path(d))
        h.apply(stream)
        now = t
        for _ in range(2):
            now += data.draw(st.integers(0, 6 * 3600))
            h.compact(now, Ret(), INTERVAL, chunk=data.draw(st.sampled_from([4, 2048])))
            hz = json.loads(sqlite3.connect(Path(d) / "shadow.sqlite3").execute(
                "SELECT value FROM meta WHERE name = 'horizons'").fetchone()[0])
            for c in model:  # every point the store calls exact is exactly the model's state there
                if h.resolve(lsn=c.lsn).exact:
                    assert [(v.key, v.value) for v in h.state_at("t", lsn=c.lsn)] == _model_at_lsn(model, c.lsn)
            _check_boundaries(h, model, hz, t)
            assert [(v.key, v.value) for v in h.state_at("t")] == sorted(live.items())
        h.close()
