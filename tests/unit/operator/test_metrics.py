"""The operator's Prometheus metrics, scraped over real HTTP from start_metrics_server."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from chronoshard.operator import metrics
from prometheus_client.parser import text_string_to_metric_families


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scrape():
    """A function returning {(sample name, frozenset(labels)): value} from a live /metrics endpoint."""
    port = _free_port()
    metrics.start_metrics_server(port, host="127.0.0.1")

    def _scrape() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }

    return _scrape


def test_reconcile_counts_by_kind_and_outcome_and_duration(scrape) -> None:
    before = scrape()
    key = ("chronoshard_operator_reconciles_total", frozenset({("kind", "ShardSet"), ("outcome", "success")}))
    count_key = ("chronoshard_operator_reconcile_duration_seconds_count", frozenset({("kind", "ShardSet")}))
    sum_key = ("chronoshard_operator_reconcile_duration_seconds_sum", frozenset({("kind", "ShardSet")}))
    metrics.observe_reconcile("ShardSet", "success", 0.2)
    metrics.observe_reconcile("ShardSet", "success", 0.3)
    metrics.observe_reconcile("ShardSet", "error", 1.0)
    after = scrape()
    assert after[key] - before.get(key, 0) == 2
    assert after[count_key] - before.get(count_key, 0) == 3
    assert after[sum_key] - before.get(sum_key, 0) == pytest.approx(1.5)
    bucket = ("chronoshard_operator_reconcile_duration_seconds_bucket",
              frozenset({("kind", "ShardSet"), ("le", "0.25")}))
    assert after[bucket] - before.get(bucket, 0) == 1


def test_errors_by_kind_and_reason(scrape) -> None:
    key = ("chronoshard_operator_errors_total", frozenset({("kind", "KeyRotation"), ("reason", "api-409")}))
    before = scrape().get(key, 0)
    metrics.record_error("KeyRotation", "api-409")
    assert scrape()[key] - before == 1


def test_managed_objects_is_a_gauge_that_goes_down(scrape) -> None:
    key = ("chronoshard_operator_managed_objects", frozenset({("kind", "MirrorSet")}))
    metrics.set_managed("MirrorSet", 4)
    assert scrape()[key] == 4
    metrics.set_managed("MirrorSet", 1)
    assert scrape()[key] == 1


def test_server_binds_only_the_given_address() -> None:
    port = _free_port()
    metrics.start_metrics_server(port, host="127.0.0.1")
    with socket.socket() as s:
        s.settimeout(2)
        s.connect(("127.0.0.1", port))
    # Another loopback address is a different interface binding: nothing listens there.
    with socket.socket() as s, pytest.raises(OSError):
        s.settimeout(2)
        s.connect(("127.0.0.2", port))


def test_mirrorset_copy_health_is_one_state_at_a_time_and_lag_is_kept(scrape) -> None:
    labels = {("namespace", "ns"), ("mirrorset", "orders"), ("shardset", "ns/orders-b"), ("shard", "0")}
    metrics.set_mirrorset_copy("ns", "orders", "ns/orders-b", 0, "degraded", 7.5)
    metrics.set_mirrorset_copy("ns", "orders", "ns/orders-b", 0, "unavailable", None)
    got = scrape()
    states = {s: got[("chronoshard_mirrorset_copy_health", frozenset(labels | {("state", s)}))]
              for s in metrics.MIRROR_HEALTH_STATES}
    assert states == {"healthy": 0, "degraded": 0, "unavailable": 1, "unknown": 0}
    assert got[("chronoshard_mirrorset_lag_seconds", frozenset(labels))] == 7.5  # no new figure: the last one


def test_mirrorset_operations_count_by_kind_and_outcome_with_held_seconds(scrape) -> None:
    key = ("chronoshard_mirrorset_failovers_total", frozenset({("namespace", "ns"), ("mirrorset", "orders"),
                                                               ("kind", "failover"), ("outcome", "Succeeded")}))
    held = ("chronoshard_mirrorset_held_seconds_sum", frozenset({("kind", "failover")}))
    before = scrape()
    metrics.count_mirrorset_operation("ns", "orders", "failover", "Succeeded", 4.25)
    after = scrape()
    assert after[key] - before.get(key, 0) == 1
    assert after[held] - before.get(held, 0) == pytest.approx(4.25)


def test_reshard_counts_steps_pauses_ends_and_tracks_the_running_move(scrape) -> None:
    step_key = ("chronoshard_reshard_steps_total",
                frozenset({("namespace", "ns"), ("shardset", "orders"), ("type", "move"), ("phase", "Completed")}))
    end_key = ("chronoshard_reshards_total",
               frozenset({("namespace", "ns"), ("shardset", "orders"), ("phase", "Completed")}))
    pause_key = ("chronoshard_reshard_cutover_pause_seconds_count",
                 frozenset({("namespace", "ns"), ("shardset", "orders")}))
    copied = ("chronoshard_reshard_move_blocks", frozenset({("namespace", "ns"), ("reshard", "grow"),
                                                             ("kind", "copied")}))
    before = scrape()
    metrics.record_reshard("ns", "grow", "orders", [], [], None, (120, 250, 0.4))
    mid = scrape()
    assert mid[copied] == 120
    assert mid[("chronoshard_reshard_move_lag_seconds", frozenset({("namespace", "ns"), ("reshard", "grow")}))] == 0.4
    metrics.record_reshard("ns", "grow", "orders", [("move", "Completed")], [310.0], "Completed", None)
    after = scrape()
    assert after[step_key] - before.get(step_key, 0) == 1
    assert after[end_key] - before.get(end_key, 0) == 1
    assert after[pause_key] - before.get(pause_key, 0) == 1
    assert copied not in after  # the move ended: its gauges are gone, not left at the last value


def test_weaveplan_gauges_follow_the_status_rows_and_go_with_the_plan(scrape) -> None:
    def labels(pid: str) -> frozenset:
        return frozenset({("namespace", "shop"), ("weaveplan", "growth"), ("partition", pid)})

    rows = [{"id": 2, "bytes": 4096, "loadRps": 12.5, "forecast": {"probability": 0.83}},
            {"id": 3, "bytes": 10, "loadRps": 0.0}]
    metrics.set_weaveplan("shop", "growth", rows, 1)
    got = scrape()
    assert got[("chronoshard_weaveplan_split_probability", labels("2"))] == 0.83
    assert got[("chronoshard_weaveplan_split_probability", labels("3"))] == 0.0
    assert got[("chronoshard_weaveplan_partition_bytes", labels("2"))] == 4096
    assert got[("chronoshard_weaveplan_partition_load_rps", labels("2"))] == 12.5
    weaves = ("chronoshard_weaveplan_weaves", frozenset({("namespace", "shop"), ("weaveplan", "growth")}))
    assert got[weaves] == 1
    metrics.set_weaveplan("shop", "growth", rows[:1], 0)  # partition 3 no longer reported (split, merged away)
    got = scrape()
    assert ("chronoshard_weaveplan_partition_bytes", labels("3")) not in got and got[weaves] == 0
    metrics.forget_weaveplan("shop", "growth")
    got = scrape()
    assert ("chronoshard_weaveplan_split_probability", labels("2")) not in got and weaves not in got
