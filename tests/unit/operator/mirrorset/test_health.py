"""Health classification of one copy: thresholds, consecutive failures, pod state."""

from __future__ import annotations

from chronoshard.operator.mirrorset.health import DEGRADED, HEALTHY, UNAVAILABLE, Sample, Thresholds, classify

T = Thresholds(latency_ms=250, error_rate=0.05, capacity=0.9, max_lag_seconds=5, failure_threshold=3)
MIRROR = {"role": "mirror", "state": "streaming", "appliedLsn": 10, "lastLsn": 10,
          "source": {"lagLsn": 0, "lagSeconds": 0.1}}
GOOD_HEALTH = {"capacity": {"fraction": 0.1}, "requests": {"errorRate": 0.0}}


def sample(**kw) -> Sample:
    base = {"member": "ns/b", "shard": 0, "replication": MIRROR, "health": GOOD_HEALTH, "latency_ms": 3.0}
    return Sample(**{**base, **kw})


def test_a_fast_caught_up_mirror_is_healthy():
    assert classify(sample(), 0, T).health == HEALTHY


def test_each_threshold_degrades_with_its_reason():
    cases = {
        "latency 310ms > 250ms": sample(latency_ms=310.0),
        "error rate 0.100 > 0.05": sample(health={**GOOD_HEALTH, "requests": {"errorRate": 0.1}}),
        "capacity 0.95 > 0.9": sample(health={**GOOD_HEALTH, "capacity": {"fraction": 0.95}}),
        "lag 7.5s > 5s": sample(replication={**MIRROR, "source": {"lagSeconds": 7.5}}),
        "replication error: source unreachable": sample(replication={**MIRROR, "state": "error",
                                                                     "error": "source unreachable"}),
    }
    for reason, s in cases.items():
        verdict = classify(s, 0, T)
        assert (verdict.health, verdict.reasons) == (DEGRADED, (reason,)), reason


def test_a_primary_has_no_lag_to_judge():
    primary = {"role": "primary", "state": "idle", "appliedLsn": 5, "lastLsn": 5}
    assert classify(sample(replication=primary, health={**GOOD_HEALTH, "replication": {"lagSeconds": 99}}),
                    0, T).health == HEALTHY


def test_unavailable_only_after_failure_threshold_consecutive_failures():
    failing = sample(replication=None, health=None, latency_ms=None, error="ClientConnectorError")
    first = classify(failing, 0, T)
    second = classify(failing, first.failures, T)
    third = classify(failing, second.failures, T)
    assert [first.health, second.health, third.health] == [DEGRADED, DEGRADED, UNAVAILABLE]
    assert third.reasons == ("probe failed: ClientConnectorError", "3 consecutive failed probes")
    assert classify(sample(), third.failures, T).failures == 0  # one answer resets the count


def test_a_copy_the_status_called_unavailable_stays_so_after_a_restart():
    failing = sample(replication=None, health=None, error="TimeoutError")
    assert classify(failing, 0, T, was_unavailable=True).health == UNAVAILABLE
    assert classify(failing, 0, T, was_unavailable=False).health == DEGRADED


def test_a_missing_or_unready_pod_counts_as_a_failed_probe():
    # A rolling update restarts a pod: within failureThreshold probes it is only degraded (no failover).
    first = classify(sample(pod_ready=False), 0, T)
    assert (first.health, first.reasons, first.failures) == (DEGRADED, ("pod not ready",), 1)
    gone = classify(sample(pod_exists=False, replication=None), first.failures, T)
    assert (gone.health, gone.reasons) == (DEGRADED, ("pod missing",))
    third = classify(sample(pod_ready=False), gone.failures, T)
    assert (third.health, third.reasons) == (UNAVAILABLE, ("pod not ready", "3 consecutive failed probes"))
    assert classify(sample(), third.failures, T).health == HEALTHY


def test_a_mirror_of_a_dead_primary_is_still_promotable_but_not_a_slow_or_unready_one():
    from chronoshard.operator.mirrorset.health import promotable

    orphan = sample(replication={**MIRROR, "state": "error", "error": "source unreachable",
                                 "source": {"lagSeconds": 90.0}})
    assert classify(orphan, 0, T).health == DEGRADED and promotable(orphan, T)
    assert not promotable(sample(latency_ms=900.0), T)
    assert not promotable(sample(pod_ready=False), T)
    assert not promotable(sample(replication=None, error="TimeoutError"), T)
    assert not promotable(sample(replication={"role": "fenced", "term": 3}), T)
