"""ShadowPolicy spec parsing: sample, defaults, compression, cold storage, retention ordering and every invalid case."""

from datetime import timedelta

import pytest
from chronoshard.operator.spec import SpecError, parse_shadowpolicy
from chronoshard.operator.spec.shadowpolicy import Anomaly, ColdStorage, Compression, Retention

from tests.support.crdcases import invalid_cases, sample


def test_sample():
    spec = parse_shadowpolicy(sample("ShadowPolicy")["spec"])
    assert (spec.shardset, spec.tables) == ("orders", ("orders",))
    assert (spec.snapshot_interval, spec.granularity, spec.full_every) == (timedelta(minutes=1), "differential", 10)
    assert spec.compression == Compression(codec="zstd", level=3, dictionary=True)
    assert spec.cold_storage is None  # commented out in the sample: the cold tier stays on the volumes
    assert spec.retention == Retention(hot=timedelta(hours=24), warm=timedelta(days=7), cold=timedelta(days=30))
    assert spec.anomaly == Anomaly(model="isolation-forest", threshold=0.8, severity_threshold=0.5,
                                   training_window=timedelta(hours=24))
    assert (spec.reversion_mode, spec.reversion_max_blocks) == ("confirm", 10000)


def test_defaults_shadow_every_table():
    spec = parse_shadowpolicy({"shardSetRef": {"name": "orders"}})
    assert spec.tables is None
    assert spec.retention == Retention()
    assert (spec.compression, spec.full_every, spec.cold_storage) == (Compression(), 10, None)
    assert spec.anomaly == Anomaly()
    assert (spec.reversion_mode, spec.reversion_max_blocks) == ("confirm", None)


def test_equal_tiers_and_quoted_off_are_valid():
    spec = parse_shadowpolicy({"shardSetRef": {"name": "o"}, "retention": {"hot": "1h", "warm": "60m", "cold": "1h"},
                               "snapshot": {"interval": "1h"}, "reversion": {"mode": "off"}})
    assert spec.retention.hot == spec.retention.warm == spec.retention.cold == timedelta(hours=1)
    assert spec.reversion_mode == "off"


@pytest.mark.parametrize("case", invalid_cases("ShadowPolicy"), ids=lambda c: c.id)
def test_invalid_case_is_refused_naming_the_field(case):
    with pytest.raises(SpecError) as err:
        parse_shadowpolicy(case.obj.get("spec"))
    assert case.field in str(err.value)


def test_there_are_at_least_three_invalid_cases():
    assert len(invalid_cases("ShadowPolicy")) >= 3


COLD = {"endpoint": "http://seaweedfs.storage:8333", "bucket": "chronoshard-backups",
        "credentialsSecret": {"name": "objectstore"}}


def test_cold_storage_defaults_region_and_path_style():
    spec = parse_shadowpolicy({"shardSetRef": {"name": "o"}, "coldStorage": COLD})
    assert spec.cold_storage == ColdStorage(endpoint="http://seaweedfs.storage:8333", bucket="chronoshard-backups",
                                            credentials_secret="objectstore", prefix=None, region="us-east-1",
                                            force_path_style=True)


def test_cold_storage_every_field():
    spec = parse_shadowpolicy({"shardSetRef": {"name": "o"}, "coldStorage": {
        **COLD, "endpoint": "https://s3.eu-west-1.amazonaws.com/", "prefix": "prod/eu.1", "region": "eu-west-1",
        "forcePathStyle": False}})
    assert spec.cold_storage is not None
    assert (spec.cold_storage.endpoint, spec.cold_storage.prefix, spec.cold_storage.region,
            spec.cold_storage.force_path_style) == ("https://s3.eu-west-1.amazonaws.com/", "prod/eu.1", "eu-west-1",
                                                     False)


@pytest.mark.parametrize(("field", "value", "where"), [
    ("endpoint", "http://", "endpoint"),
    ("endpoint", "http://a b", "endpoint"),
    ("bucket", "ab", "bucket"),
    ("bucket", "-abc", "bucket"),
    ("prefix", "a//b", "prefix"),
    ("prefix", ".", "prefix"),
    ("region", "EU", "region"),
    ("credentialsSecret", {}, "credentialsSecret.name"),
])
def test_cold_storage_bad_values_name_the_field(field, value, where):
    with pytest.raises(SpecError) as err:
        parse_shadowpolicy({"shardSetRef": {"name": "o"}, "coldStorage": {**COLD, field: value}})
    assert err.value.field_path == f"spec.coldStorage.{where}"


def test_codec_none_keeps_level_and_dictionary_defaults():
    spec = parse_shadowpolicy({"shardSetRef": {"name": "o"}, "compression": {"codec": "none"}})
    assert spec.compression == Compression(codec="none", level=3, dictionary=True)


def test_anomaly_interval_defaults_to_a_minute_and_takes_up_to_an_hour():
    assert parse_shadowpolicy({"shardSetRef": {"name": "o"}}).anomaly.interval == timedelta(minutes=1)
    spec = parse_shadowpolicy({"shardSetRef": {"name": "o"}, "anomaly": {"interval": "60m"}})
    assert spec.anomaly.interval == timedelta(hours=1)
    assert parse_shadowpolicy({"shardSetRef": {"name": "o"}, "anomaly": {"interval": "250ms"}}).anomaly.interval \
        == timedelta(milliseconds=250)


@pytest.mark.parametrize("interval", ["0s", "1h0m0.001s", "2h", "1d", 60])
def test_anomaly_interval_outside_0_to_1h_is_refused(interval):
    with pytest.raises(SpecError) as err:
        parse_shadowpolicy({"shardSetRef": {"name": "o"}, "anomaly": {"interval": interval}})
    assert err.value.field_path == "spec.anomaly.interval"
