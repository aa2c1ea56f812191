"""The history's housekeeping on a real file and a real S3 server: snapshots, tiers, and the cold export into
the shard's own prefix, exactly once across passes."""

from __future__ import annotations

import json

import pytest
from chronoshard.shardnode.shadow import backup
from chronoshard.shardnode.shadow.codec import Compressor
from chronoshard.shardnode.shadow.config import ShadowConfig, parse_settings
from chronoshard.shardnode.shadow.dictionaries import DictionaryTrainer
from chronoshard.shardnode.shadow.history import HistoryStore
from chronoshard.shardnode.shadow.maintenance import Maintenance, pod_shard, shard_cold_settings
from chronoshard.shardnode.shadow.objectstore import ObjectStore, ObjectStoreError
from chronoshard.shardnode.shadow.sealing import open_version

from tests.support.shadow_history import open_history, put, ring
from tests.support.stores import Holder

DAY = 86400.0
R = ring(1, (1,))


def config(tmp, cold: dict | None) -> ShadowConfig:
    cfg = ShadowConfig(node_url="http://127.0.0.1:9", data_dir=tmp, keyring_dir=tmp)
    cfg.apply({"snapshot": {"intervalSeconds": 60},
               "retention": {"hotSeconds": 3600, "warmSeconds": 7200, "coldSeconds": 30 * DAY}, "cold": cold})
    assert cfg.settings_error is None
    return cfg


def test_pod_shard_and_the_shards_prefix():
    assert pod_shard("orders-3") == 3 and pod_shard(None) is None and pod_shard("nodash") is None
    cold = parse_settings({"cold": {"endpoint": "http://s3:8333", "bucket": "b", "prefix": "p/ns/orders"}}).cold
    assert cold is not None and shard_cold_settings(cold, 2).prefix == "p/ns/orders/2"
    assert shard_cold_settings(cold, None) == cold


def test_a_pass_snapshots_compacts_and_exports_each_cold_segment_once(tmp_path, s3_server):
    now = 1_800_000_000.0
    history, _ = open_history(tmp_path)
    old = now - 2 * DAY  # past hot and warm retention: cold
    history.apply([put(R, 1, old, "t", "a", b"a1"), put(R, 2, old + 1, "t", "b", b"b1"),
                   put(R, 3, old + 5000, "t", "a", b"a2"), put(R, 4, now - 10, "t", "c", b"hot")])
    s3_server.write_credentials(tmp_path / "creds")
    cold = s3_server.settings(credentials_dir=tmp_path / "creds")
    cold_doc = {"endpoint": cold.endpoint, "bucket": cold.bucket, "prefix": cold.prefix, "forcePathStyle": True,
                "credentialsDir": cold.credentials_dir}
    m = Maintenance(config(tmp_path, cold_doc), history, shard=1)
    first = m.run_once(now)
    assert first["exported"] >= 1 and first["snapshot"] is not None
    assert history.stats()["tiers"]["cold"]["versions"] >= 2
    assert m.exported_segment == m.exported() and m.exported() > 0
    assert m.run_once(now + 1)["exported"] == 0  # nothing new: nothing uploaded again

    store = ObjectStore(shard_cold_settings(m.cfg.settings.cold, 1))  # type: ignore[arg-type]
    restored = {(v.table, v.key) for v in backup.restore_point(store, time=now)}
    assert {("t", "a"), ("t", "b")} <= restored
    assert not list(ObjectStore(m.cfg.settings.cold).list("0/"))  # type: ignore[arg-type]  # not another shard's
    history.close()


def test_without_a_bucket_nothing_is_exported(tmp_path):
    history, _ = open_history(tmp_path)
    history.apply([put(R, 1, 1000.0, "t", "a", b"x")])
    m = Maintenance(config(tmp_path, None), history)
    result = m.run_once(1000.0 + 40 * DAY)
    assert result["exported"] == 0 and m.status()["error"] is None
    history.close()


def test_the_export_carries_the_dictionaries_its_frames_name_and_a_restore_opens_them(tmp_path, s3_server):
    now = 1_800_000_000.0
    history = HistoryStore(tmp_path, Holder(R), Compressor(), DictionaryTrainer(True, samples=100, size=2048))
    old = now - 2 * DAY  # past hot and warm retention: cold
    values = {f"k{i:03d}": json.dumps({"customer": f"c{i:04d}", "status": "shipped", "amount": i * 1.5,
                                       "note": "standard delivery, no signature required"}).encode()
              for i in range(200)}
    items = list(values.items())
    for start in (0, 100):  # the first hundred complete the sample; the second are sealed with the dictionary
        history.apply([put(R, i + 1, old + i, "t", k, v) for i, (k, v) in enumerate(items[start:start + 100],
                                                                                    start=start)])
    assert len(history.dictionaries()) == 1
    s3_server.write_credentials(tmp_path / "creds")
    cold = s3_server.settings(credentials_dir=tmp_path / "creds")
    cold_doc = {"endpoint": cold.endpoint, "bucket": cold.bucket, "prefix": cold.prefix, "forcePathStyle": True,
                "credentialsDir": cold.credentials_dir}
    m = Maintenance(config(tmp_path, cold_doc), history, shard=0)
    assert m.run_once(now)["exported"] >= 1
    store = ObjectStore(shard_cold_settings(m.cfg.settings.cold, 0))  # type: ignore[arg-type]
    manifest = backup.read_manifest(store)
    assert manifest is not None
    restoring = Compressor()  # what a bootstrap holds: only the backup's dictionaries
    for table, dict_bytes in backup.load_dictionaries(store, manifest):
        restoring.add_dictionary(table, dict_bytes)
    restored = {v.key: open_version(R, v.table, v.key, v.lsn, v.frame, restoring)
                for v in backup.restore_point(store, time=now)}
    assert restored == values
    history.close()


def test_the_objectstore_dir_flag_overrides_the_credentials_dir_of_shadow_json(tmp_path, s3_server):
    """The pod passes the Secret's mount as --objectstore-dir (the local cluster maps flags, not paths in files)."""
    now = 1_800_000_000.0
    history, _ = open_history(tmp_path)
    history.apply([put(R, 1, now - 2 * DAY, "t", "a", b"a1")])
    s3_server.write_credentials(tmp_path / "mounted")
    cold = s3_server.settings()
    cfg = config(tmp_path, {"endpoint": cold.endpoint, "bucket": cold.bucket, "prefix": cold.prefix,
                            "forcePathStyle": True, "credentialsDir": str(tmp_path / "not-there")})
    failing = Maintenance(cfg, history, shard=0)
    with pytest.raises(ObjectStoreError, match="not-there"):
        failing.run_once(now)
    cfg.objectstore_dir = tmp_path / "mounted"
    assert Maintenance(cfg, history, shard=0).run_once(now + 1)["exported"] >= 1
    history.close()
