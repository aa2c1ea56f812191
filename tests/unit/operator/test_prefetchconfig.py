"""PrefetchPolicy → predictor.json / cache.json (pure), checked against the predictor's own config parser."""

import json

import pytest
from chronoshard.operator.prefetchconfig import cache_overrides, predictor_config
from chronoshard.operator.shardset import manifests
from chronoshard.operator.spec.prefetchpolicy import parse_prefetchpolicy
from chronoshard.operator.spec.shardset import parse_shardset
from chronoshard.shardnode.predictor.config import parse_config

OWNER = {"apiVersion": "chronoshard.io/v1alpha1", "kind": "ShardSet",
         "metadata": {"name": "orders", "namespace": "shop", "uid": "u-1"}}


def policy(**spec):
    return parse_prefetchpolicy({"shardSetRef": {"name": "orders"}, **spec})


def test_defaults_convert_durations_and_quantities():
    doc = predictor_config(policy())
    assert doc == {
        "enabled": True, "model": "auto", "horizonSeconds": 300.0, "scoreThreshold": 0.5,
        "budget": {"requestsPerSecond": 200, "bytesPerSecond": 16 * 2**20},
        "feedback": {"enabled": True, "targetPrecision": 0.6, "windowSeconds": 600.0},
        "training": {"intervalSeconds": 900.0, "historyWindowSeconds": 86400.0},
        "keyPrefetch": {"enabled": False},
    }


def test_every_value_reaches_the_predictor_parser():
    doc = predictor_config(policy(model="successor", horizon="1m30s", scoreThreshold=0.7,
                                  budget={"bytesPerSecond": "2Mi", "requestsPerSecond": 50},
                                  feedback={"enabled": False, "targetPrecision": 0.8, "window": "2m"},
                                  training={"interval": "500ms", "historyWindow": "1h"}))
    cfg = parse_config(json.loads(json.dumps(doc)))
    assert cfg.enabled is True
    assert cfg.model == "stats"  # the predictor's name for the successor baseline
    assert cfg.horizon_s == 90.0 and cfg.score_threshold == 0.7
    assert cfg.hints_per_second == 50 and cfg.bytes_per_second == 2 * 2**20
    assert cfg.feedback_enabled is False and cfg.target_precision == 0.8 and cfg.feedback_window_s == 120.0
    assert cfg.retrain_interval_s == 1.0  # 500ms is below the predictor's floor of 1 s: the floor is written
    assert cfg.history_window_s == 3600.0


def test_values_beyond_the_predictor_ranges_are_clamped_not_refused():
    doc = predictor_config(policy(horizon="50ms", budget={"bytesPerSecond": "5P"},
                                  feedback={"window": "200h"}, training={"interval": "200h", "historyWindow": "9000h"}))
    cfg = parse_config(doc)  # would raise ConfigError if any value were out of range
    assert cfg.horizon_s == 0.1 and cfg.bytes_per_second == 1e12
    assert cfg.feedback_window_s == 7 * 86400 and cfg.retrain_interval_s == 7 * 86400
    assert cfg.history_window_s == 365 * 86400


@pytest.mark.parametrize(("model", "kind"), [("learned", "gbm"), ("auto", "auto"), ("successor", "stats")])
def test_model_names(model, kind):
    assert parse_config(predictor_config(policy(model=model))).model == kind


def test_cache_budget_becomes_a_fraction_of_the_cache():
    assert cache_overrides(policy(cacheBudget="64Mi"), 256 * 2**20) == {
        "prefetchWorkers": 16, "prefetchBudgetFraction": 0.25, "keyCacheSize": 64}
    # More than the cache holds is capped at the whole cache; unset means the whole cache (CRD wording).
    assert cache_overrides(policy(cacheBudget="1Gi"), 256 * 2**20)["prefetchBudgetFraction"] == 1.0
    assert cache_overrides(policy(budget={"maxInflight": 4}), 256 * 2**20) == {
        "prefetchWorkers": 4, "prefetchBudgetFraction": 1.0, "keyCacheSize": 64}


def test_config_map_without_policy_keeps_prefetching_off():
    spec = parse_shardset({"shards": 1, "tables": [{"name": "a"}]})
    cm = manifests.config_map(OWNER, spec)
    assert json.loads(cm["data"]["predictor.json"]) == {"tables": ["a"], "enabled": False}
    cache = json.loads(cm["data"]["cache.json"])
    # Without a policy the processes' own defaults apply (key cache 64 in the cache, key prefetching off).
    assert "prefetchWorkers" not in cache and "keyCacheSize" not in cache


def test_config_map_with_policy_turns_prefetching_on():
    spec = parse_shardset({"shards": 1, "cache": {"size": "8Mi"}, "tables": [{"name": "a"}]})
    pol = policy(model="learned", cacheBudget="2Mi")
    cm = manifests.config_map(OWNER, spec, prefetch=pol)
    pred = json.loads(cm["data"]["predictor.json"])
    assert pred == {"tables": ["a"], **predictor_config(pol)}
    assert parse_config(pred).model == "gbm"
    cache = json.loads(cm["data"]["cache.json"])
    assert cache["budgetBytes"] == 8 * 2**20 and cache["prefetchBudgetFraction"] == 0.25
    assert cache["prefetchWorkers"] == 16


def test_key_prefetch_reaches_cache_json_and_predictor_json():
    spec = parse_shardset({"shards": 1, "tables": [{"name": "a"}]})
    pol = policy(keyPrefetch={"enabled": True, "keyCacheSize": 4096})
    cm = manifests.config_map(OWNER, spec, prefetch=pol)
    assert json.loads(cm["data"]["cache.json"])["keyCacheSize"] == 4096
    pred = json.loads(cm["data"]["predictor.json"])
    assert pred["keyPrefetch"] == {"enabled": True}
    off = manifests.config_map(OWNER, spec, prefetch=policy(keyPrefetch={"keyCacheSize": 1}))
    assert json.loads(off["data"]["predictor.json"])["keyPrefetch"] == {"enabled": False}
    assert json.loads(off["data"]["cache.json"])["keyCacheSize"] == 1
