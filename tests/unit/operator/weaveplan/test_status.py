"""Weaver reports into the WeavePlan's rows (pure)."""

from datetime import timedelta

from chronoshard.operator.weaveplan.status import WeaverReport, aggregate, duration_text, lead, rfc3339


def shard_body(*partitions, weaves=(), forecast_time=None, shadow=True, errors=()):
    return {"partitions": list(partitions), "weaves": list(weaves), "lastForecastTime": forecast_time,
            "shadow": shadow, "errors": list(errors)}


def part(pid, nbytes, p, **extra):
    return {"id": pid, "bytes": nbytes, "blocks": nbytes // 4096, "loadRps": 2.5, "growthBytesPerHour": 10.0,
            "samples": 30, "forecast": {"probability": p, "predictedTime": 1_765_000_000.0, "reason": "size",
                                        "model": "linear", "explanation": "grows", "ignored": 1}, **extra}


def test_rows_from_every_shard_largest_forecast_first_times_as_rfc3339():
    agg = aggregate([
        WeaverReport(1, shard_body(part(3, 8192, 0.9), weaves=[{
            "id": "w-3-1", "partition": 3, "splitKey": 0xa3f0000000000000, "confidence": 0.9,
            "predictedTime": "2026-12-08T10:00:00Z", "window": 86400, "snapshots": 2, "sourceSnapshot": 7,
            "sourceLsn": 99, "bytes": 1000}], forecast_time=1_765_000_000.0)),
        WeaverReport(0, shard_body(part(0, 4096, 0.1), part(1, 4096, 0.5), forecast_time="2025-12-06T05:46:41Z")),
    ])
    assert [(p["id"], p["shard"]) for p in agg.partitions] == [(3, 1), (1, 0), (0, 0)]
    first = agg.partitions[0]
    assert first["forecast"] == {"probability": 0.9, "predictedTime": "2025-12-06T05:46:40Z", "reason": "size",
                                 "model": "linear", "explanation": "grows"}
    assert first["blocks"] == 2 and first["loadRps"] == 2.5
    (w,) = agg.weaves
    assert w == {"id": "w-3-1", "partition": 3, "shard": 1, "splitKey": "a3f0000000000000", "confidence": 0.9,
                 "predictedTime": "2026-12-08T10:00:00Z", "window": "24h", "snapshots": 2, "sourceSnapshot": 7,
                 "sourceLsn": 99, "bytes": 1000}
    assert agg.last_forecast_time == "2025-12-06T05:46:41Z"  # the newest over the shards
    assert agg.reporting == 2 and agg.shadow and agg.problems == []
    assert agg.fields()["weaveCount"] == 1


def test_missing_shards_and_weaver_errors_are_problems_and_no_shadow_anywhere_is_seen():
    agg = aggregate([WeaverReport(0, error="HTTP 503"),
                     WeaverReport(1, {**shard_body(part(1, 1, 0.2), shadow=False, errors=["node unreachable"]),
                                      "configError": "not JSON"})])
    assert agg.problems == ["shard 0: HTTP 503", "shard 1: weave.json: not JSON"]
    assert agg.warnings == ["shard 1: node unreachable"]
    assert agg.reporting == 1 and not agg.shadow
    assert "lastForecastTime" not in agg.fields()


def test_rows_are_bounded_and_malformed_rows_dropped():
    many = [part(i, 10, 0.0) for i in range(300)] + [{"bytes": 3}, "x"]
    agg = aggregate([WeaverReport(0, shard_body(*many, weaves=[{"partition": 1}, {"id": "w"}]))])
    assert len(agg.partitions) == 256 and agg.weaves == []


def test_helpers():
    assert [duration_text(s) for s in (86400, 5400, 45, 0)] == ["24h", "90m", "45s", "0s"]
    assert rfc3339("2026-01-01T00:00:00+01:00") == "2025-12-31T23:00:00Z" and rfc3339("soon") is None
    assert lead(timedelta(minutes=5)) == timedelta(minutes=30) and lead(timedelta(hours=2)) == timedelta(hours=2)
