"""weave.json: defaults, every field, and refusals that keep the settings in force."""

from __future__ import annotations

from pathlib import Path

import pytest
from chronoshard.shardnode.weave.config import SettingsError, WeaverConfig, WeaveSettings, parse_settings

FULL = {"plan": "shop/growth", "mode": "split", "predictionWindowSeconds": 7200, "confidenceThreshold": 0.9,
        "split": {"sizeBytes": 1000, "loadRps": 50.5, "sustainedSeconds": 30, "minPartitionBytes": 100},
        "intervalSeconds": 600, "sampleIntervalSeconds": 10, "model": "arima",
        "retention": {"maxSnapshots": 3, "maxAgeSeconds": 86400}}


def test_empty_is_the_defaults():
    s = parse_settings({})
    assert s == WeaveSettings()
    assert (s.mode, s.interval_seconds, s.sample_interval_seconds, s.model) == ("forecast", 3600.0, 60.0, "auto")
    assert (s.split.size_bytes, s.split.min_partition_bytes, s.retention.max_snapshots) == (512 << 20, None, 10)
    assert not s.weaving


def test_every_field_is_read():
    s = parse_settings(FULL)
    assert s.plan == "shop/growth" and s.mode == "split" and s.weaving
    assert (s.prediction_window_seconds, s.confidence_threshold, s.interval_seconds, s.sample_interval_seconds) == (
        7200.0, 0.9, 600.0, 10.0)
    assert (s.split.size_bytes, s.split.load_rps, s.split.sustained_seconds, s.split.min_partition_bytes) == (
        1000, 50.5, 30.0, 100)
    assert (s.retention.max_snapshots, s.retention.max_age_seconds, s.model) == (3, 86400.0, "arima")


def test_nulls_take_the_defaults():
    assert parse_settings({"mode": None, "split": None, "retention": None, "model": None}) == WeaveSettings()


@pytest.mark.parametrize("doc, field", [
    ({"mode": "fast"}, "mode"), ({"model": "prophet"}, "model"), ({"confidenceThreshold": 1.5}, "confidence"),
    ({"unknown": 1}, "unknown"), ({"split": {"sizeBytes": 0}}, "sizeBytes"),
    ({"split": {"sizeBytes": 1.5}}, "sizeBytes"),
    ({"split": {"other": 1}}, "split"), ({"retention": {"maxSnapshots": 0}}, "maxSnapshots"),
    ({"intervalSeconds": 10, "sampleIntervalSeconds": 20}, "sampleInterval"), ({"intervalSeconds": True}, "interval"),
    ([], "object"), ({"plan": 3}, "plan"),
])
def test_refused(doc, field):
    with pytest.raises(SettingsError, match=field):
        parse_settings(doc)


def test_a_bad_file_keeps_the_settings_in_force(tmp_path: Path):
    cfg = WeaverConfig(node_url="http://n", data_dir=tmp_path, keyring_dir=tmp_path)
    seen: list[WeaveSettings] = []
    cfg.listeners.append(seen.append)
    cfg.apply(FULL)
    cfg.apply({"mode": "nope"})
    assert cfg.settings.mode == "split" and "mode" in (cfg.settings_error or "") and len(seen) == 1
    cfg.apply({})
    assert cfg.settings == WeaveSettings() and cfg.settings_error is None
