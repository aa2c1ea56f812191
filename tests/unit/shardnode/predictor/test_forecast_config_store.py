"""Rate forecast, predictor.json parsing/hot reload, and the checksummed model file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from chronoshard.shardnode.predictor.config import ConfigError, ConfigFile, PredictorConfig, parse_config
from chronoshard.shardnode.predictor.forecast import RateForecaster
from chronoshard.shardnode.predictor.modelstore import MODEL_FILE, ModelLoadError, load_model, save_model
from chronoshard.shardnode.predictor.scorers import StatsScorer


def test_forecast_follows_a_rising_rate_and_idle_tables_drop_to_zero() -> None:
    f = RateForecaster(window_s=10.0, horizon=3)
    t = 0.0
    for w in range(20):  # rate grows by 1 request/s every window
        for _ in range((w + 1) * 10):
            f.observe("hot", t)
            t += 10.0 / ((w + 1) * 10)
    fc = f.forecast(200.0)["hot"]
    assert fc[0] > 15 and fc[0] < fc[1] < fc[2]
    f.observe("cold", 0.0)
    assert f.forecast(1e9)["cold"] == [0.0, 0.0, 0.0]  # long idle: reset, not a loop over 1e8 windows


def test_parse_config_defaults_and_errors() -> None:
    c = parse_config({"model": "gbm", "horizonSeconds": 30, "scoreThreshold": 0.7,
                      "budgets": {"hintsPerSecond": 50, "bytesPerSecond": 1 << 20},
                      "feedback": {"enabled": False, "targetPrecision": 0.8}, "unknownKey": 1})
    assert (c.enabled, c.model, c.horizon_s, c.score_threshold, c.hints_per_second, c.feedback_enabled) == (
        True, "gbm", 30.0, 0.7, 50.0, False)
    assert PredictorConfig().enabled is False  # no file: no prefetching
    for bad in ({"model": "forest"}, {"scoreThreshold": 2}, {"horizonSeconds": "10"}, {"budgets": []},
                {"feedback": {"enabled": "yes"}}, {"enabled": 1}, [1]):
        with pytest.raises(ConfigError):
            parse_config(bad)


def test_config_file_hot_reload_keeps_previous_on_error(tmp_path: Path) -> None:
    path = tmp_path / "predictor.json"
    cf = ConfigFile(path)
    assert cf.reload() is False and cf.config.enabled is False
    path.write_text(json.dumps({"model": "stats", "scoreThreshold": 0.6}))
    assert cf.reload() is True and cf.config.score_threshold == 0.6
    assert cf.reload() is False  # unchanged file
    path.write_text("{broken")
    os.utime(path, ns=(1, 1))
    assert cf.reload() is False and cf.config.score_threshold == 0.6 and "predictor.json" in (cf.error or "")
    path.write_text(json.dumps({"scoreThreshold": 0.9}))
    assert cf.reload() is True and cf.config.score_threshold == 0.9 and cf.error is None
    path.unlink()
    assert cf.reload() is True and cf.config.enabled is False


def test_model_file_round_trip_and_damage(tmp_path: Path) -> None:
    s = StatsScorer()
    s.hits, s.total = {1: 3.0}, {1: 4.0}
    save_model(tmp_path, s, {"info": {"rows": 4}})
    loaded, header = load_model(tmp_path)
    assert loaded.total == {1: 4.0} and header["kind"] == "stats" and header["info"]["rows"] == 4
    data = (tmp_path / MODEL_FILE).read_bytes()
    (tmp_path / MODEL_FILE).write_bytes(data.replace(b'"features": ["kind_seq1"', b'"features": ["other"'))
    with pytest.raises(ModelLoadError, match="corrupt|feature layout"):
        load_model(tmp_path)
    (tmp_path / MODEL_FILE).unlink()
    with pytest.raises(ModelLoadError, match="no model file"):
        load_model(tmp_path)


def test_prefetchpolicy_vocabulary_is_understood() -> None:
    c = parse_config({"model": "successor", "budget": {"requestsPerSecond": 20, "bytesPerSecond": 1024},
                      "feedback": {"windowSeconds": 600}, "training": {"intervalSeconds": 900,
                                                                        "historyWindowSeconds": 86400}})
    assert (c.model, c.hints_per_second, c.bytes_per_second) == ("stats", 20.0, 1024.0)
    assert (c.feedback_window_s, c.retrain_interval_s, c.history_window_s) == (600.0, 900.0, 86400.0)
    assert parse_config({"model": "learned"}).model == "gbm"
    assert parse_config({}).feedback_window_s is None and parse_config({}).history_window_s is None
    with pytest.raises(ConfigError):
        parse_config({"budget": {"requestsPerSecond": -1}})
