"""Shadow anomaly reports → status.anomalies, status.detector, and which incidents get a Reversion (pure)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from chronoshard.operator.shadowpolicy import anomalies
from chronoshard.operator.shadowpolicy.anomalies import ShardAnomalies
from chronoshard.operator.spec.reversion import parse_reversion

T = 1_796_000_000.0


def incident(ident: str, *, detected: float, state: str = "closed", severity: float = 0.9,
             **extra: Any) -> dict[str, Any]:
    return {"id": ident, "table": "orders", "state": state, "kind": "encryption", "startTime": detected - 70,
            "endTime": detected - 60, "detectedTime": detected, "knownGoodTime": detected - 71.25,
            "identities": [f"user-{i}" for i in range(7)], "keys": 812, "bytes": 123456, "score": 0.97123,
            "severity": severity, "detector": "isolation-forest",
            "drivers": [{"feature": f"f{i}", "value": i, "usual": 0, "weight": w}
                        for i, w in enumerate([0.1, 0.5, -0.3, 0.05])], **extra}


def report(shard: int, *incs: dict[str, Any], state: str = "trained", reason: str | None = None) -> ShardAnomalies:
    return ShardAnomalies(shard, {"detector": {"model": "isolation-forest", "state": state, "reason": reason},
                                  "intervalSeconds": 60.0, "incidents": list(incs)})


def rows_of(reports: list[ShardAnomalies], old: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return anomalies.merge(old or [], reports, anomalies.incidents(reports))


def test_a_row_has_rfc3339_times_five_identities_and_the_top_three_drivers():
    (row,) = rows_of([report(2, incident("orders.8812", detected=T))])
    assert (row["shard"], row["id"], row["state"], row["action"]) == (2, "orders.8812", "closed", "reported")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["startTime"])
    assert row["knownGoodTime"] < row["startTime"] < row["endTime"] < row["detectedTime"]
    assert row["identities"] == [f"user-{i}" for i in range(5)]
    assert [d["feature"] for d in row["drivers"]] == ["f1", "f2", "f0"]  # by |weight|
    assert (row["keys"], row["bytes"], row["score"]) == (812, 123456, 0.9712)


def test_merge_keeps_the_20_newest_over_all_shards_newest_first():
    reports = [report(s, *[incident(f"t.{i}", detected=T + 10 * i + s) for i in range(15)]) for s in (0, 1)]
    rows = rows_of(reports)
    assert len(rows) == anomalies.MAX_ROWS
    assert [(r["shard"], r["id"]) for r in rows[:2]] == [(1, "t.14"), (0, "t.14")]
    assert [(r["shard"], r["id"]) for r in rows[-2:]] == [(1, "t.5"), (0, "t.5")]


def test_a_shard_that_does_not_answer_keeps_its_rows_and_the_old_action():
    first = rows_of([report(0, incident("a", detected=T)), report(1, incident("b", detected=T + 5))])
    first[1]["action"], first[1]["reversion"] = "proposed", "p-s0-0123456789"
    again = rows_of([report(0, incident("a", detected=T)), ShardAnomalies(1, error="HTTP 404")], old=first)
    assert again == first
    assert anomalies.new_rows(first, again) == []


def test_new_rows_are_those_the_last_status_did_not_have_by_shard_and_id():
    old = rows_of([report(0, incident("a", detected=T))])
    new = rows_of([report(0, incident("a", detected=T)), report(1, incident("a", detected=T))])
    assert [(r["shard"], r["id"]) for r in anomalies.new_rows(old, new)] == [(1, "a")]


@pytest.mark.parametrize(("mode", "state", "severity", "old_state", "wanted"), [
    ("confirm", "closed", 0.9, None, True),
    ("auto", "closed", 0.5, None, True),  # at the threshold
    ("confirm", "closed", 0.9, "open", True),  # closes now
    ("off", "closed", 0.9, None, False),
    ("confirm", "closed", 0.49, None, False),
    ("confirm", "open", 0.9, None, False),
    ("confirm", "closed", 0.9, "closed", False),  # decided when it closed
])
def test_which_incidents_get_a_reversion(mode, state, severity, old_state, wanted):
    reports = [report(0, incident("a", detected=T, state=state, severity=severity))]
    found = anomalies.incidents(reports)
    old = [{**rows_of(reports)[0], "state": old_state}] if old_state else []
    rows = anomalies.merge(old, reports, found)
    assert bool(anomalies.to_revert(old, rows, found, 0.5, mode)) is wanted


def test_an_incident_that_names_a_reversion_or_has_no_known_good_point_gets_none():
    reports = [report(0, incident("a", detected=T), incident("b", detected=T, knownGoodTime=None))]
    found = anomalies.incidents(reports)
    rows = anomalies.merge([], reports, found)
    rows[0]["reversion"] = "made-before"
    assert anomalies.to_revert([], rows, found, 0.5, "confirm") == []


def test_reversion_names_are_stable_distinct_per_shard_and_dns_1123():
    long = "p" * 253
    names = {anomalies.reversion_name(long, s, "orders.1") for s in (0, 1, 255)}
    assert len(names) == 3
    for n in names | {anomalies.reversion_name("shp", 0, "x" * 320)}:
        assert len(n) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", n)
    assert anomalies.reversion_name("shp", 0, "a") == anomalies.reversion_name("shp", 0, "a")
    assert anomalies.reversion_name("shp", 0, "a") != anomalies.reversion_name("shp", 0, "b")


def test_the_reversion_object_is_a_valid_reversion_of_the_incident():
    (inc,) = anomalies.incidents([report(3, incident("orders.8812", detected=T))]).values()
    obj = anomalies.reversion_object("shop", "orders-shadow", "orders", inc)
    spec = parse_reversion(obj["spec"])
    assert spec.incident is not None and (spec.incident.shard, spec.incident.id) == (3, "orders.8812")
    assert spec.tables == ("orders",) and spec.keys is None and spec.key_range is None
    assert spec.point_in_time.timestamp() == T - 71.25  # not truncated to the second
    assert "ownerReferences" not in obj["metadata"]
    assert obj["metadata"]["annotations"][anomalies.INCIDENT_ANNOTATION] == "3/orders.8812"


def test_detector_summary_counts_states_and_names_the_worst():
    summary = anomalies.detector_summary([report(0), report(1, state="training"),
                                          report(2, state="fallback", reason="model file corrupt"),
                                          ShardAnomalies(3, error="HTTP 404")], "isolation-forest")
    assert summary == {"model": "isolation-forest", "reporting": 3, "state": "fallback",
                       "states": {"fallback": 1, "training": 1, "trained": 1},
                       "reasons": ["shard 2: model file corrupt"]}


def test_detected_message_names_table_kind_keys_severity_and_identities():
    (row,) = rows_of([report(0, incident("orders.1", detected=T, severity=0.91))])
    msg = anomalies.detected_message(row)
    for part in ("encryption", "orders.1", "table orders", "812 key(s)", "severity 0.91", "user-0, user-1"):
        assert part in msg


def test_malformed_incidents_are_left_out():
    reports = [ShardAnomalies(0, {"incidents": [{"table": "t"}, "x", incident("ok", detected=T),
                                                incident("x" * 321, detected=T)]}),
               ShardAnomalies(1, {"incidents": "nope"})]
    assert list(anomalies.incidents(reports)) == [(0, "ok")]
