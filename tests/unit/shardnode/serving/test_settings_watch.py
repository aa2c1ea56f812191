"""Settings files re-applied on change; a broken file keeps the previous settings and says so."""

import json

from chronoshard.shardnode.node.server import NodeConfig
from chronoshard.shardnode.serving.settings_watch import SettingsWatcher

from tests.support.kubelet_dir import write_keyring


def _publish(directory, doc_text, generation):
    # Reuse the kubelet writer: any file set works, the keyring helper just writes the manifest text.
    snap = write_keyring(directory, generation, {}, manifest_text=doc_text)
    return snap


def test_reapplies_on_data_swap_and_keeps_old_on_parse_error(tmp_path):
    applied, results = [], []
    _publish(tmp_path, json.dumps({"rewrapBatchSize": 10}), 1)
    w = SettingsWatcher(tmp_path / "keyring.json", applied.append, results.append)
    assert w.poll() and applied == [{"rewrapBatchSize": 10}] and results == [None]
    assert not w.poll()  # unchanged
    _publish(tmp_path, "{not json", 2)
    assert not w.poll()
    assert applied == [{"rewrapBatchSize": 10}] and "keyring.json" in w.error and results[-1] == w.error
    _publish(tmp_path, json.dumps({"rewrapBatchSize": 20}), 3)
    assert w.poll() and applied[-1] == {"rewrapBatchSize": 20} and w.error is None


def test_missing_file_is_reported_and_no_path_is_a_no_op(tmp_path):
    w = SettingsWatcher(tmp_path / "absent.json", lambda d: None)
    assert not w.poll() and "absent.json" in w.error
    assert not SettingsWatcher(None, lambda d: None).poll()


def test_node_config_overlay_ignores_unknown_and_bad_values(tmp_path):
    cfg = NodeConfig(data_dir=tmp_path, keyring_dir=tmp_path)
    cfg.apply({"tables": ["users"], "keyAlgorithm": "AES-256-GCM", "rewrapBatchSize": 64, "rewrapPauseSeconds": 0.5})
    assert cfg.rewrap_batch_size == 64 and cfg.rewrap_pause_seconds == 0.5
    cfg.apply({"rewrapBatchSize": -1, "maxBlockBytes": True, "rewrapPauseSeconds": "x"})
    assert cfg.rewrap_batch_size == 64 and cfg.rewrap_pause_seconds == 0.5 and cfg.max_block_bytes == 4 << 20
    cfg.apply({"rewrapPauseSeconds": 0, "changeLogRetain": 0})  # a pause may go back to 0; retention may not
    assert cfg.rewrap_pause_seconds == 0 and cfg.change_log_retain == 1_000_000


def test_a_null_rewrap_pause_goes_back_to_adaptive_pacing(tmp_path):
    cfg = NodeConfig(data_dir=tmp_path, keyring_dir=tmp_path)
    assert cfg.rewrap_pause_seconds is None  # adaptive unless set
    cfg.apply({"rewrapPauseSeconds": 0.5})
    assert cfg.rewrap_pause_seconds == 0.5
    cfg.apply({"rewrapPauseSeconds": None})
    assert cfg.rewrap_pause_seconds is None


def test_the_move_pause_is_adaptive_unless_set_and_may_be_zero(tmp_path):
    cfg = NodeConfig(tmp_path, tmp_path)
    assert cfg.move_pause_seconds is None
    cfg.apply({"movePauseSeconds": 0})
    assert cfg.move_pause_seconds == 0
    cfg.apply({"movePauseSeconds": -1})
    assert cfg.move_pause_seconds == 0
    cfg.apply({"movePauseSeconds": None})
    assert cfg.move_pause_seconds is None
