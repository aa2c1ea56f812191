"""shadow.json: parsed strictly (a bad file changes nothing), defaults for what it leaves out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chronoshard.shardnode.serving.settings_watch import SettingsWatcher
from chronoshard.shardnode.shadow.config import (
    ColdSettings,
    SettingsError,
    ShadowConfig,
    ShadowSettings,
    parse_settings,
)

FULL = {"consumer": "shadow", "tables": ["b", "a", "a"],
        "snapshot": {"intervalSeconds": 30, "granularity": "full", "fullEvery": 5},
        "compression": {"codec": "zstd", "level": 9, "dictionary": False},
        "retention": {"hotSeconds": 60, "warmSeconds": 600, "coldSeconds": 6000},
        "cold": {"endpoint": "http://127.0.0.1:8333", "bucket": "b", "prefix": "ns/s/0", "region": "eu",
                 "forcePathStyle": True, "credentialsDir": "/x"},
        "reversion": {"mode": "auto", "maxBlocks": 100},
        "anomaly": {"model": "zscore", "threshold": 0.9, "severityThreshold": 0.4, "trainingWindowSeconds": 3600,
                    "intervalSeconds": 5}}


def test_the_documented_document_parses_field_by_field():
    s = parse_settings(FULL)
    assert s.tables == ("a", "b")  # sorted, duplicates gone
    assert (s.snapshot.interval_seconds, s.snapshot.granularity, s.snapshot.full_every) == (30.0, "full", 5)
    assert (s.compression.codec, s.compression.level, s.compression.dictionary) == ("zstd", 9, False)
    assert (s.retention.hot_seconds, s.retention.warm_seconds, s.retention.cold_seconds) == (60, 600, 6000)
    assert s.cold == ColdSettings("http://127.0.0.1:8333", "b", "ns/s/0", "eu", True, "/x")
    assert (s.reversion.mode, s.reversion.max_blocks) == ("auto", 100)
    a = s.anomaly
    assert (a.model, a.threshold, a.severity_threshold, a.training_window_seconds, a.interval_seconds) == (
        "zscore", 0.9, 0.4, 3600.0, 5.0)


def test_reversion_mode_off_is_accepted():
    # A policy with reversion.mode: off once made every shadow refuse its whole shadow.json.
    assert parse_settings({"reversion": {"mode": "off"}}).reversion.mode == "off"


def test_empty_document_is_the_defaults():
    assert parse_settings({}) == ShadowSettings()
    assert parse_settings({"tables": None, "cold": None}).tables is None


@pytest.mark.parametrize("doc, field", [
    ({"surprise": 1}, "unknown fields"),
    ({"consumer": "Not_A_Label"}, "consumer"),
    ({"tables": []}, "tables"),
    ({"tables": ["ok", "bad/name"]}, "tables"),
    ({"snapshot": {"intervalSeconds": 0}}, "snapshot.intervalSeconds"),
    ({"snapshot": {"intervalSeconds": True}}, "snapshot.intervalSeconds"),
    ({"snapshot": {"granularity": "weekly"}}, "snapshot.granularity"),
    ({"snapshot": {"fullEvery": 1.5}}, "snapshot.fullEvery"),
    ({"compression": {"codec": "lzma"}}, "compression.codec"),
    ({"compression": {"level": 20}}, "compression.level"),
    ({"compression": {"dictionary": "yes"}}, "compression.dictionary"),
    ({"retention": {"hotSeconds": 100, "warmSeconds": 10}}, "hotSeconds <= warmSeconds"),
    ({"retention": {"hotSeconds": float("nan")}}, "retention.hotSeconds"),
    ({"cold": {"bucket": "b"}}, "cold.endpoint"),
    ({"cold": {"endpoint": "ftp://x", "bucket": "b"}}, "cold.endpoint"),
    ({"cold": {"endpoint": "http://x", "bucket": "b", "secretAccessKey": "s"}}, "unknown fields"),
    ({"reversion": {"mode": "yolo"}}, "reversion.mode"),
    ({"reversion": {"maxBlocks": 0}}, "reversion.maxBlocks"),
    ({"anomaly": {"model": "crystal-ball"}}, "anomaly.model"),
    ({"anomaly": {"threshold": 1.5}}, "anomaly.threshold"),
    ({"anomaly": {"intervalSeconds": 0.5}}, "anomaly.intervalSeconds"),
    ({"anomaly": {"intervalSeconds": 7200}}, "anomaly.intervalSeconds"),
    ({"anomaly": {"window": 60}}, "unknown fields"),
    ([], "JSON object"),
])
def test_bad_documents_are_refused_naming_the_field(doc, field):
    with pytest.raises(SettingsError, match=field.replace(".", r"\.")):
        parse_settings(doc)


def test_a_credential_in_a_bad_document_is_not_echoed():
    with pytest.raises(SettingsError) as exc:
        parse_settings({"cold": {"endpoint": "http://x", "bucket": "b", "secretAccessKey": "hunter2-secret"}})
    assert "hunter2" not in str(exc.value)


def test_reload_applies_good_files_and_keeps_the_settings_in_force_for_bad_ones(tmp_path: Path):
    path = tmp_path / "shadow.json"
    cfg = ShadowConfig(node_url="http://127.0.0.1:9", data_dir=tmp_path, keyring_dir=tmp_path,
                       settings_path=str(path))
    seen: list[ShadowSettings] = []
    cfg.listeners.append(seen.append)
    watcher = SettingsWatcher(cfg.settings_path, cfg.apply)
    path.write_text(json.dumps({"tables": ["orders"]}))
    assert watcher.poll()
    assert cfg.settings.tables == ("orders",) and cfg.settings_error is None and len(seen) == 1
    path.write_text(json.dumps({"tables": ["orders"], "compression": {"level": 99}}))
    watcher.poll()
    assert cfg.settings.tables == ("orders",) and "compression.level" in (cfg.settings_error or "")
    assert len(seen) == 1  # nobody was told of settings that were not applied
    path.write_text(json.dumps({"tables": None}))
    watcher.poll()
    assert cfg.settings.tables is None and cfg.settings_error is None and len(seen) == 2
