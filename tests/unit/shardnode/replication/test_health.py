"""Health samples (shardnode/replication/health.py, healthstore.py): the pure parts, and the history in a real
``health.sqlite3`` (retention by rows and by age, the start counter across reopenings)."""

from __future__ import annotations

from chronoshard.shardnode.replication.health import (
    RequestWindow,
    build_sample,
    capacity,
    percentile,
    replication_fields,
)
from chronoshard.shardnode.replication.healthstore import HealthStore


def test_percentile_nearest_rank():
    assert percentile([], 50) is None
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([3.0], 99) == 3.0


def test_request_window_slides():
    now = [1000.0]
    w = RequestWindow(60, lambda: now[0])
    for status in (200, 503, 404, 500):
        w.observe(status)
    assert w.totals() == (4, 2)
    now[0] = 1030.5
    w.observe(200)
    assert w.totals() == (5, 2)
    now[0] = 1060.0  # the first second has left the window
    assert w.totals() == (1, 0)
    now[0] = 2000.0
    assert w.totals() == (0, 0)


def test_replication_fields_none_safe():
    assert replication_fields(None)["role"] is None
    mirror = {"role": "mirror", "appliedLsn": 1200, "source": {"lagLsn": 3, "lagSeconds": 0.04, "reachable": True},
              "mirrors": []}
    assert replication_fields(mirror) == {"role": "mirror", "appliedLsn": 1200, "lagLsn": 3, "lagSeconds": 0.04,
                                          "sourceReachable": True}
    primary = {"role": "primary", "appliedLsn": 50, "source": None,
               "mirrors": [{"lagLsn": 9, "lagSeconds": 2.0}, {"lagLsn": 1, "lagSeconds": 0.5}]}
    assert replication_fields(primary) == {"role": "primary", "appliedLsn": 50, "lagLsn": 1, "lagSeconds": 0.5,
                                           "sourceReachable": None}
    assert replication_fields({"role": "primary", "appliedLsn": 1})["lagLsn"] is None


def test_build_sample_shape(tmp_path):
    cap = capacity(tmp_path)
    assert 0 < cap["usedBytes"] <= cap["totalBytes"] and 0 < cap["fraction"] <= 1
    s = build_sample(now=1733580000.0, uptime=812.5, restarts=2, cap=cap, requests=(5012, 3),
                     latencies=[1.0, 2.0, 9.0], replication=None)
    assert set(s) == {"time", "uptimeSeconds", "restarts", "capacity", "requests", "writeLatencyMs", "replication"}
    assert s["requests"] == {"total": 5012, "errors": 3, "errorRate": 0.000599, "windowSeconds": 60}
    assert s["writeLatencyMs"] == {"p50": 2.0, "p99": 9.0}
    assert build_sample(now=0, uptime=0, restarts=0, cap=cap, requests=(0, 0), latencies=[],
                        replication=None)["requests"]["errorRate"] == 0.0


def sample(t: float) -> dict[str, float]:
    return {"time": t}


def test_store_keeps_the_newest_rows_and_days(tmp_path):
    store = HealthStore(tmp_path, retain_seconds=100, retain_rows=5)
    for t in range(10):
        store.add(sample(1000.0 + t))
    assert store.count() == 5
    assert [s["time"] for s in store.history(0, 100)] == [1005.0, 1006.0, 1007.0, 1008.0, 1009.0]
    assert [s["time"] for s in store.history(1006.0, 2)] == [1007.0, 1008.0]  # since is exclusive, oldest first
    store.add(sample(1200.0))  # the others are more than 100 s older
    assert [s["time"] for s in store.history(0, 100)] == [1200.0]
    store.close()


def test_restarts_count_across_reopening(tmp_path):
    first = HealthStore(tmp_path)
    assert first.record_start() == 0
    first.add(sample(5.0))
    first.close()
    again = HealthStore(tmp_path)
    assert again.record_start() == 1 and again.record_start() == 2
    assert again.history(0, 10) == [sample(5.0)]
    again.close()
    assert (tmp_path / "health.sqlite3").exists() and not (tmp_path / "blocks.sqlite3").exists()
