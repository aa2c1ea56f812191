"""Shadow reports → ShadowPolicy figures: per shard, over all shards, and when a capture is behind."""

import datetime as dt

from chronoshard.operator.shadowpolicy.status import (
    ShardSample,
    aggregate,
    behind,
    lag_bound_seconds,
    shard_row,
    to_time,
)


def report(lag_lsn=0, lag_s=0.0, state="running", oldest=1764669600.0, hot=(10, 4000, 1000), warm=(0, 0, 0),
           cold=None, ratio=4.0, **extra):
    tiers = {"hot": dict(zip(("versions", "rawBytes", "bytes"), hot, strict=True)),
             "warm": dict(zip(("versions", "rawBytes", "bytes"), warm, strict=True))}
    if cold is not None:
        tiers["cold"] = dict(zip(("versions", "rawBytes", "bytes"), cold, strict=True))
    return {"capture": {"state": state, "cursor": 100, "nodeLastLsn": 100 + lag_lsn, "lagLsn": lag_lsn,
                        "lagSeconds": lag_s, "error": None},
            "lagLsn": lag_lsn, "lagSeconds": lag_s, "tiers": tiers, "compressionRatio": ratio,
            "oldestRestorableTime": oldest, "configError": None, **extra}


def test_shard_row_carries_lag_tiers_oldest_and_ratio():
    row = shard_row(ShardSample(1, report(lag_lsn=7, lag_s=0.25, cold=(2, 100, 50))))
    assert row == {
        "shard": 1, "reporting": True, "state": "running", "captureLagLsn": 7, "captureLagSeconds": 0.25,
        "oldestRestorableTime": "2025-12-02T10:00:00Z", "compressionRatio": 4.0,
        "tiers": {"hot": {"versions": 10, "rawBytes": 4000, "bytes": 1000},
                  "warm": {"versions": 0, "rawBytes": 0, "bytes": 0},
                  "cold": {"versions": 2, "rawBytes": 100, "bytes": 50}},
    }


def test_a_shard_that_does_not_answer_says_why_and_has_no_figures():
    assert shard_row(ShardSample(0, None, "ClientConnectorError")) == {
        "shard": 0, "reporting": False, "error": "ClientConnectorError"}


def test_errors_the_shadow_reports_are_kept_without_inventing_figures():
    r = {"capture": {"state": "error", "error": "node unreachable"}, "configError": "shadow.json: bad level",
         "keyring": {"generation": 3, "loadError": "no KEK"}}
    row = shard_row(ShardSample(2, r))
    assert row == {"shard": 2, "reporting": True, "state": "error",
                   "error": "capture: node unreachable; config: shadow.json: bad level; keyring: no KEK"}


def test_aggregate_takes_the_slowest_capture_and_the_latest_oldest_point():
    samples = [ShardSample(1, report(lag_lsn=3, lag_s=0.5, oldest="2026-12-02T09:00:00Z")),
               ShardSample(0, report(lag_lsn=40, lag_s=0.1, oldest="2026-12-02T08:00:00.9Z", hot=(5, 3000, 1000)))]
    out = aggregate(samples, 2)
    assert (out["shardsReporting"], out["reporting"]) == (2, "2/2")
    assert [r["shard"] for r in out["shards"]] == [0, 1]
    assert (out["captureLagLsn"], out["captureLagSeconds"]) == (40, 0.5)
    # Shard 1 holds nothing before 09:00, so 09:00 is the oldest point the whole ShardSet can go back to.
    assert out["oldestRestorableTime"] == "2026-12-02T09:00:00Z"
    assert out["tiers"]["hot"] == {"versions": 15, "rawBytes": 7000, "bytes": 2000}
    assert (out["shadowBytes"], out["versions"], out["compressionRatio"]) == (2000, 15, 3.5)


def test_aggregate_with_a_missing_shard_leaves_the_oldest_point_out():
    out = aggregate([ShardSample(0, report()), ShardSample(1, None, "no pod")], 2)
    assert out["reporting"] == "1/2"
    assert "oldestRestorableTime" not in out
    assert out["shards"][1] == {"shard": 1, "reporting": False, "error": "no pod"}


def test_aggregate_of_empty_history_has_no_ratio():
    out = aggregate([ShardSample(0, report(hot=(0, 0, 0), oldest=None))], 1)
    assert "compressionRatio" not in out and out["shadowBytes"] == 0
    assert "oldestRestorableTime" not in out


def test_behind_by_state_or_by_lag_over_the_bound():
    rows = [shard_row(ShardSample(0, report(lag_s=61.0, lag_lsn=900))),
            shard_row(ShardSample(1, report(state="behind"))),
            shard_row(ShardSample(2, report(lag_s=59.0))),
            shard_row(ShardSample(3, None, "no pod"))]
    found = behind(rows, 60.0)
    assert len(found) == 2
    assert found[0].startswith("shard 0: 61.0s (900 changes) behind")
    assert found[1].startswith("shard 1: the node trimmed its change log past the capture")


def test_lag_bound_is_a_minute_or_the_snapshot_interval():
    assert lag_bound_seconds(dt.timedelta(seconds=10)) == 60.0
    assert lag_bound_seconds(dt.timedelta(minutes=5)) == 300.0


def test_times_in_both_forms():
    assert to_time(0) is None and to_time("nonsense") is None and to_time(True) is None
    assert to_time("2026-12-02T10:00:00") == dt.datetime(2026, 12, 2, 10, tzinfo=dt.UTC)
    assert to_time(1764669600) == dt.datetime(2025, 12, 2, 10, tzinfo=dt.UTC)
