"""Shard answers → PrefetchPolicy status (pure): aggregation, phases and conditions."""

from chronoshard.operator.prefetchpolicy.controller import Observation, build_status
from chronoshard.operator.prefetchpolicy.probe import cache_counters
from chronoshard.operator.prefetchpolicy.status import ShardSample, aggregate
from chronoshard.operator.prefetchselect import Selection
from chronoshard.operator.spec.prefetchpolicy import parse_prefetchpolicy
from chronoshard.shardnode.serving.metrics import CacheMetrics
from prometheus_client import generate_latest

BODY = {"metadata": {"name": "pf", "namespace": "shop", "generation": 3}, "spec": {"shardSetRef": {"name": "orders"}}}
NOW = "2026-11-22T01:00:00Z"


def report(sent, used, wasted, wbytes, precision, recall, model="stats"):
    return {"enabled": True, "model": model, "hintsSent": sent, "hintsUsed": used, "hintsWasted": wasted,
            "wastedBytes": wbytes, "precision": precision, "recall": recall, "configError": None,
            "modelError": None}


def test_aggregate_weights_by_counts_not_by_shard():
    samples = [
        ShardSample(0, report(100, 80, 20, 2048, 0.8, 0.5), hits=90, misses=10),
        ShardSample(1, report(10, 1, 9, 4096, 0.1, 0.25), hits=10, misses=90),
        ShardSample(2, predictor_error="ClientConnectorError", cache_error="ClientConnectorError"),
    ]
    out = aggregate(samples, 3)
    assert out["shardsReporting"] == 2 and out["shardsExpected"] == 3 and out["reporting"] == "2/3"
    assert (out["hintsSent"], out["hintsUsed"], out["hintsWasted"], out["wastedBytes"]) == (110, 81, 29, 6144)
    assert out["precision"] == round(81 / 110, 4)
    # recall: shard 0 saw 80 used of 160 (used+missed), shard 1 1 of 4 → 81/164
    assert out["recall"] == round(81 / 164, 4)
    assert out["hitRatio"] == 0.5
    assert out["activeModel"] == "stats"
    rows = out["shards"]
    assert [r["shard"] for r in rows] == [0, 1, 2]
    assert rows[0]["hitRatio"] == 0.9 and rows[0]["reporting"] is True
    assert rows[2] == {"shard": 2, "reporting": False,
                       "error": "predictor: ClientConnectorError; cache: ClientConnectorError"}


def test_aggregate_leaves_unknown_figures_out():
    out = aggregate([ShardSample(0, report(0, 0, 0, 0, None, None), hits=0, misses=0)], 1)
    assert "precision" not in out and "recall" not in out and "hitRatio" not in out
    assert out["shards"][0] == {"shard": 0, "reporting": True, "model": "stats", "hintsSent": 0, "hintsUsed": 0,
                                "hintsWasted": 0, "wastedBytes": 0}


def test_cache_counters_from_the_real_cache_metrics():
    m = CacheMetrics()
    m.hits.inc(7)
    m.misses.inc(3)
    assert cache_counters(generate_latest(m.registry).decode()) == (7.0, 3.0)


def obs(**kw):
    spec = parse_prefetchpolicy(BODY["spec"])
    base = {"shardset": "orders", "shardset_obj": {"spec": {"shards": 2}},
            "selection": Selection("pf", spec), "config_applied": True, "expected": 2}
    return Observation(**{**base, **kw})


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_missing_shardset_is_named():
    st = build_status(BODY, obs(shardset_obj=None), [], NOW)
    assert st["phase"] == "Waiting" and st["observedGeneration"] == 3
    ready = cond(st, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ShardSetNotFound" and "orders" in ready["message"]
    assert "hitRatio" not in st and "shards" not in st


def test_invalid_spec():
    st = build_status(BODY, obs(spec_error="spec.horizon: bad"), [], NOW)
    assert st["phase"] == "Invalid" and cond(st, "Ready")["message"] == "spec.horizon: bad"


def test_newer_policy_conflicts_naming_the_one_in_force():
    st = build_status(BODY, obs(selection=Selection("older", None, ("pf",))), [], NOW)
    assert st["phase"] == "Conflict"
    c = cond(st, "Conflict")
    assert c["status"] == "True" and "older" in c["message"] and c["reason"] == "AnotherPolicyInForce"
    # once the older one is gone the same object clears the condition
    st2 = build_status({**BODY, "status": st}, obs(), [ShardSample(0, report(1, 1, 0, 0, 1.0, 1.0)),
                                                       ShardSample(1, report(1, 1, 0, 0, 1.0, 1.0))], NOW)
    assert st2["phase"] == "Active" and cond(st2, "Conflict")["status"] == "False"
    assert cond(st2, "Ready")["status"] == "True"


def test_active_but_not_all_shards_reporting():
    st = build_status(BODY, obs(), [ShardSample(0, report(5, 4, 1, 10, 0.8, 0.5), hits=1, misses=1),
                                    ShardSample(1, predictor_error="pod has no IP yet")], NOW)
    assert st["phase"] == "Active" and st["reporting"] == "1/2"
    ready = cond(st, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ShardsNotReporting"
    assert "shard 1: predictor: pod has no IP yet" in ready["message"]


def test_config_not_yet_rewritten_waits():
    st = build_status(BODY, obs(config_applied=False), [], NOW)
    assert st["phase"] == "Waiting" and cond(st, "Ready")["reason"] == "ConfigPending"
    assert not any(c["type"] == "Conflict" for c in st["conditions"])


def test_predictor_still_on_old_settings_is_not_ready():
    old = {**report(0, 0, 0, 0, None, None), "enabled": False}
    refused = {**report(0, 0, 0, 0, None, None), "configError": "/etc/x/predictor.json: horizonSeconds bad"}
    st = build_status(BODY, obs(), [ShardSample(0, old), ShardSample(1, refused)], NOW)
    ready = cond(st, "Ready")
    assert st["phase"] == "Active" and ready["status"] == "False" and ready["reason"] == "ConfigNotLoaded"
    assert "shard 0: predictor has not loaded this policy yet" in ready["message"]
    assert "shard 1: predictor refused its config: /etc/x/predictor.json: horizonSeconds bad" in ready["message"]
    assert st["shards"][1]["error"] == "predictor config: /etc/x/predictor.json: horizonSeconds bad"


def test_key_counters_from_the_real_cache_metrics_and_absent_for_older_caches():
    from chronoshard.operator.prefetchpolicy.probe import key_counters
    from chronoshard.operator.prefetchpolicy.status import KeyCounters

    m = CacheMetrics()
    m.hits.inc(5)
    m.misses.inc(5)
    m.watch_key_cache(lambda: {"hits": 30, "misses": 10, "prefetched": 12, "prefetchUsed": 9, "held": 4,
                               "capacity": 64})
    m.key_hints_dropped.labels("not_wrapped").inc(4)
    text = generate_latest(m.registry).decode()
    assert key_counters(text) == KeyCounters(hits=30, misses=10, prefetched=12, prefetch_used=9)
    assert cache_counters(text) == (5.0, 5.0)
    # A cache from before the key cache exports none of the chronoshard_cache_key_* families.
    old = "\n".join(line for line in text.splitlines() if "chronoshard_cache_key_" not in line) + "\n"
    assert cache_counters(old) == (5.0, 5.0) and key_counters(old) is None


def test_key_cache_is_summed_over_the_shards_and_left_out_without_reports():
    from chronoshard.operator.prefetchpolicy.status import KeyCounters

    samples = [
        ShardSample(0, report(1, 1, 0, 0, 1.0, 1.0), hits=1, misses=1,
                    keys=KeyCounters(hits=30, misses=10, prefetched=12, prefetch_used=9)),
        ShardSample(1, report(1, 1, 0, 0, 1.0, 1.0), hits=1, misses=1,
                    keys=KeyCounters(hits=10, misses=50, prefetched=3, prefetch_used=1)),
        ShardSample(2, report(1, 1, 0, 0, 1.0, 1.0), hits=1, misses=1),  # an older cache: no key metrics
    ]
    assert aggregate(samples, 3)["keyCache"] == {"hitRatio": 0.4, "prefetched": 15, "prefetchUsed": 10}
    assert "keyCache" not in aggregate(samples[2:], 3)
    # Counters present but no lookup yet: the ratio is unknown and left out, the counts are zero.
    idle = ShardSample(0, report(0, 0, 0, 0, None, None), hits=0, misses=0, keys=KeyCounters())
    assert aggregate([idle], 1)["keyCache"] == {"prefetched": 0, "prefetchUsed": 0}


def test_active_status_carries_the_key_cache():
    from chronoshard.operator.prefetchpolicy.status import KeyCounters

    samples = [ShardSample(s, report(1, 1, 0, 0, 1.0, 1.0), hits=1, misses=1,
                           keys=KeyCounters(hits=3, misses=1, prefetched=2, prefetch_used=2)) for s in (0, 1)]
    st = build_status(BODY, obs(), samples, now=NOW)
    assert st["phase"] == "Active"
    assert st["keyCache"] == {"hitRatio": 0.75, "prefetched": 4, "prefetchUsed": 4}


def test_an_untrained_predictor_is_not_an_error_but_a_corrupt_model_is() -> None:
    fresh = {"enabled": True, "model": None, "modelError": "no model file at /data/predictor/model.bin"}
    corrupt = {"enabled": True, "model": None, "modelError": "model file /data/model.bin is corrupt: bad magic"}
    rows = aggregate([ShardSample(0, fresh, hits=1, misses=1), ShardSample(1, corrupt, hits=1, misses=1)], 2)["shards"]
    assert rows[0]["model"] == "untrained" and "error" not in rows[0]
    assert "model" not in rows[1]
    assert rows[1]["error"] == "model: model file /data/model.bin is corrupt: bad magic"
