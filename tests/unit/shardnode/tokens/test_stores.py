"""The token service's files: the registry across a reopen, tokens-service.json, the signing Secret, the model."""

from __future__ import annotations

import json

import pytest
from chronoshard.shardnode.auth import tokenformat
from chronoshard.shardnode.tokens import config as cfgmod
from chronoshard.shardnode.tokens import risk, signing
from chronoshard.shardnode.tokens.registry import PRUNE_AFTER_SECONDS, Registry, TokenRow
from chronoshard.shardnode.tokens.revocation import BACKOFF_MAX, next_backoff, targets
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support import tls_files

NOW = 1_800_000_000.0


def row(tid, service="svc", tier="valid", issued=NOW, expires=NOW + 600, **over) -> TokenRow:
    base = dict(token_id=tid, service=service, scope={"tables": ["t"], "keys": None, "verbs": ["get"]}, tier=tier,
                store="shop/orders", issued_at=issued, expires_at=expires, state="active", superseded_by=None,
                kid="k1")
    base.update(over)
    return TokenRow(**base)


def test_registry_survives_a_reopen(tmp_path):
    path = tmp_path / "tokens.sqlite3"
    reg = Registry(path)
    reg.insert(row("a"))
    reg.insert(row("b", tier="provisional", lsn={"0": 7}))
    reg.supersede("a", "b")
    reg.set_replacement("b", "tok.en.x", "valid", "shop/orders")
    reg.revoke("b", NOW + 1)
    reg.checkpoint()  # the WAL moved into the database file (no automatic checkpoints)
    assert (tmp_path / "tokens.sqlite3-wal").stat().st_size > 0
    reg.close()
    reg = Registry(path)
    a, b = reg.get("a"), reg.get("b")
    assert a.state == "superseded" and a.superseded_by == "b"
    assert b.state == "revoked" and b.lsn == {"0": 7} and b.replacement is None and b.revoked_at == NOW + 1
    items, cursor = reg.revocations(0, NOW)
    assert items == [{"tokenId": "b", "expiresAt": NOW + 600}] and cursor == 1
    assert reg.revocations(cursor, NOW) == ([], 1)
    # revoking twice lists it once
    reg.revoke("b", NOW + 2)
    assert reg.active_revocations(NOW) == [{"tokenId": "b", "expiresAt": NOW + 600}]
    assert reg.revoke("nope", NOW) is None


def test_registry_states_counts_and_prune(tmp_path):
    reg = Registry(tmp_path / "tokens.sqlite3")
    reg.insert(row("live"))
    reg.insert(row("old", expires=NOW - PRUNE_AFTER_SECONDS - 1, issued=NOW - PRUNE_AFTER_SECONDS - 100))
    reg.insert(row("exp", service="other", expires=NOW - 10, tier="temporary"))
    assert [r.token_id for r in reg.listing(state="expired", now=NOW)] == ["exp", "old"]
    assert [r.token_id for r in reg.listing(service="other", now=NOW)] == ["exp"]
    assert reg.counts(NOW) == {"tier": {"valid": 2, "temporary": 1}, "state": {"active": 1, "expired": 2}}
    assert reg.prune(NOW) == 1
    assert reg.get("old") is None and reg.get("exp") is not None


GOOD = {"mirrorSet": "shop/orders-ms", "activeStore": "shop/orders",
        "members": [{"store": "shop/orders", "role": "source",
                     "shards": [{"index": 0, "node": "https://10.0.0.1:7400/", "cache": "https://10.0.0.1:7401",
                                 "serverName": "orders-0.orders.shop.svc"}]},
                    {"store": "dr/orders", "role": "mirror",
                     "shards": [{"index": 0, "node": "https://10.0.0.2:7400", "cache": None}]}],
        "operation": {"kind": "failover", "from": "shop/orders", "to": "dr/orders", "term": 4},
        "tokens": {"validTTL": 60, "temporaryTTL": 30, "provisionalTTL": 45},
        "prediction": {"unavailabilityThreshold": 0.5, "windows": [900, 300], "model": "rules"},
        "health": {"probeInterval": 5, "failureThreshold": 2}}


def test_config_parse():
    cfg = cfgmod.parse_service_config(GOOD)
    assert cfg.namespace == "shop" and cfg.active_store == "shop/orders"
    assert cfg.operation.target == "dr/orders" and cfg.operation.term == 4
    assert [c.copy_id for c in cfg.copies()] == ["shop/orders#0", "dr/orders#0"]
    assert cfg.copies()[0].node == "https://10.0.0.1:7400" and cfg.copies()[0].server_name == "orders-0.orders.shop.svc"
    assert (cfg.ttl("valid"), cfg.ttl("temporary"), cfg.ttl("provisional")) == (60, 30, 45)
    assert cfg.windows == (300.0, 900.0) and cfg.threshold == 0.5 and cfg.model == "rules"
    assert (cfg.probe_interval, cfg.failure_threshold) == (5.0, 2)
    assert [str(t.url) for t in targets(cfg)] == ["https://10.0.0.1:7400", "https://10.0.0.1:7401",
                                                  "https://10.0.0.2:7400"]
    defaults = cfgmod.parse_service_config({k: GOOD[k] for k in ("mirrorSet", "activeStore", "members")})
    assert (defaults.valid_ttl, defaults.temporary_ttl, defaults.provisional_ttl) == (3600, 300, 900)
    assert defaults.operation is None and defaults.threshold == 0.7


@pytest.mark.parametrize("change", [
    {"activeStore": "shop/other"}, {"mirrorSet": "nope"}, {"members": []},
    {"tokens": {"validTTL": 0}}, {"prediction": {"unavailabilityThreshold": 2}},
    {"prediction": {"model": "magic"}}, {"operation": {"from": "a/b"}},
    {"members": [{"store": "shop/orders", "shards": [{"index": 0, "node": "ftp://x"}]}]},
])
def test_config_refusals(change):
    with pytest.raises(cfgmod.ServiceConfigError):
        cfgmod.parse_service_config({**GOOD, **change})


def test_config_file_keeps_the_last_good_one(tmp_path):
    d = tmp_path / "cm"
    tls_files.publish(d, {"tokens-service.json": json.dumps(GOOD).encode()})
    f = cfgmod.ConfigFile(d / "tokens-service.json")
    assert f.current is not None and f.current.threshold == 0.5
    tls_files.publish(d, {"tokens-service.json": b"{not json"})
    assert not f.poll() and f.current.threshold == 0.5 and f.error
    tls_files.publish(d, {"tokens-service.json": json.dumps({**GOOD, "prediction": {}}).encode()})
    assert f.poll() and f.current.threshold == 0.7 and f.error is None


def test_signing_dir_kid_previous_and_reload(tmp_path):
    one, two = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    d = tmp_path / "signing"
    tls_files.publish(d, {"signing.pem": signing.pem(one)})
    sd = signing.SigningDir(d)
    assert sd.keys.kid == tokenformat.key_id(one.public_key())
    assert [k["kid"] for k in sd.keys.published()] == [sd.keys.kid]
    tls_files.publish(d, {"signing.pem": signing.pem(two), "previous.pem": signing.pem(one)})
    assert sd.poll()
    assert sd.keys.kid == tokenformat.key_id(two.public_key())
    assert [k["kid"] for k in sd.keys.published()] == [tokenformat.key_id(two.public_key()),
                                                       tokenformat.key_id(one.public_key())]
    assert "PRIVATE" not in json.dumps(sd.keys.published())
    tls_files.publish(d, {"signing.pem": b"garbage"})
    assert not sd.poll() and sd.keys.kid == tokenformat.key_id(two.public_key())  # the last good keys stay


def test_signing_refuses_a_non_ed25519_file(tmp_path):
    (tmp_path / "signing.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(signing.SigningKeyError) as err:
        signing.load_keys(tmp_path)
    assert "AAAA" not in str(err.value)


def test_model_seal():
    from chronoshard.shardnode.unavailability.types import ModelCorrupt

    key = b"k" * 32
    blob = risk.seal(b"model bytes", key)
    assert risk.unseal(blob, key) == b"model bytes"
    with pytest.raises(ModelCorrupt):
        risk.unseal(blob[:-1] + b"X", key)
    with pytest.raises(ModelCorrupt):
        risk.unseal(blob, b"j" * 32)


def test_engine_saves_a_trained_model_and_falls_back_on_a_tampered_one(tmp_path):
    from chronoshard.shardnode.unavailability.types import HealthPoint

    key = b"m" * 32
    eng = risk.RiskEngine(tmp_path, (300.0, 900.0, 1800.0), "logistic-regression", lambda: key)
    eng.load()
    assert not eng.state.trained and eng.state.reason == "no saved model yet"
    # A copy whose p99 climbs before each outage: enough positives to train.
    hist = []
    t = 0.0
    for cycle in range(12):
        for i in range(300):
            hist.append(HealthPoint(t, True, 2.0, 5.0 + (i * 20.0 if i > 200 else 0.0), 0.0, 0.5, cycle, None))
            t += 10
        for _ in range(12):
            hist.append(HealthPoint(t, False))
            t += 10
    state = eng.fit([hist])
    assert state.trained and (tmp_path / risk.MODEL_FILE).exists()
    fresh = risk.RiskEngine(tmp_path, (300.0, 900.0, 1800.0), "logistic-regression", lambda: key)
    fresh.load()
    assert fresh.state.trained
    data = (tmp_path / risk.MODEL_FILE).read_bytes()
    (tmp_path / risk.MODEL_FILE).write_bytes(data[:40] + bytes([data[40] ^ 1]) + data[41:])
    tampered = risk.RiskEngine(tmp_path, (300.0, 900.0, 1800.0), "logistic-regression", lambda: key)
    tampered.load()
    assert not tampered.state.trained and "HMAC" in tampered.state.reason
    assert tampered.predict(hist[:100], hist[99].time).source == "rules"


def test_backoff_doubles_to_a_cap():
    b, seen = 0.0, []
    for _ in range(10):
        b = next_backoff(b)
        seen.append(b)
    assert seen[:3] == [0.5, 1.0, 2.0] and seen[-1] == BACKOFF_MAX


def test_the_service_trains_from_its_kept_history_off_the_loop(tmp_path):
    from chronoshard.shardnode.tokens.health import HealthStore, Sample
    from chronoshard.shardnode.tokens.server import Settings, TokenService

    (tmp_path / "signing").mkdir()
    (tmp_path / "signing" / "signing.pem").write_bytes(signing.pem(Ed25519PrivateKey.generate()))
    (tmp_path / "c.json").write_text(json.dumps({**GOOD, "prediction": {"model": "logistic-regression"}}))
    svc = TokenService(Settings(tmp_path / "c.json", tmp_path / "signing", tmp_path / "d"))
    store = HealthStore(tmp_path / "d" / "risk.sqlite3")
    samples, t = [], 0.0
    for cycle in range(12):  # a p99 that climbs before each outage
        for i in range(300):
            doc = {"restarts": cycle, "writeLatencyMs": {"p50": 2.0, "p99": 5.0 + (i * 20.0 if i > 200 else 0.0)},
                   "requests": {"errorRate": 0.0}, "capacity": {"usedBytes": 5, "totalBytes": 10}}
            samples.append(Sample("shop/orders#0", t, True, doc))
            t += 10
        for _ in range(12):
            samples.append(Sample("shop/orders#0", t, False, {}))
            t += 10
    store.add(samples)
    store.close()
    svc._train()
    assert svc.engine.state.trained and svc.engine.state.samples == len(samples)
    assert (tmp_path / "d" / risk.MODEL_FILE).exists()
    svc.registry.close()
    svc.health.close()


def test_a_config_arriving_after_the_start_or_changing_the_model_makes_a_new_engine(tmp_path):
    from chronoshard.shardnode.tokens.server import Settings, TokenService

    (tmp_path / "signing").mkdir()
    (tmp_path / "signing" / "signing.pem").write_bytes(signing.pem(Ed25519PrivateKey.generate()))
    svc = TokenService(Settings(tmp_path / "absent.json", tmp_path / "signing", tmp_path / "d"))
    assert svc.engine.kind == "rules"  # no config yet
    cfg = cfgmod.parse_service_config({**GOOD, "prediction": {"model": "logistic-regression", "windows": [60, 600]}})
    svc._engine_for(cfg)
    assert (svc.engine.kind, svc.engine.windows) == ("logistic-regression", (60.0, 600.0))
    same = svc.engine
    svc._engine_for(cfg)
    assert svc.engine is same
    svc.registry.close()
    svc.health.close()
