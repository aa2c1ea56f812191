"""security.json, unverified JWT claims, the TTL cache, the review attributes."""

from __future__ import annotations

import pytest
from chronoshard.shardnode.auth.config import SecurityConfigError, parse_security_config
from chronoshard.shardnode.auth.jwtclaims import audiences, expiry, unverified_claims
from chronoshard.shardnode.auth.policy import Access, review_attributes
from chronoshard.shardnode.auth.ttlcache import TTLCache

from tests.support.rbac import expired_jwt, security_doc


def test_security_config_parses_the_interface_document():
    cfg = parse_security_config(security_doc("shop", operators=["system:serviceaccount:ops:op"]))
    assert (cfg.namespace, cfg.name, cfg.audience) == ("shop", "orders", "chronoshard.io/shop/orders")
    assert cfg.operator_identities == ("chronoshard:operator", "system:serviceaccount:ops:op")
    assert cfg.cache_ttl_seconds == 10 and cfg.cache_size == 10000 and not cfg.accept_kubeconfig_tokens
    assert cfg.replica_identities == ()
    peer = "chronoshard:shardset:shop-b:orders-b"
    assert parse_security_config({**security_doc("shop"), "replicaIdentities": [peer]}).replica_identities == (peer,)


@pytest.mark.parametrize("change", [{"audience": ""}, {"shardSet": {"namespace": "shop"}}, {"cacheSize": 0},
                                    {"acceptKubeconfigTokens": "yes"}, {"operatorIdentities": "x"},
                                    {"cacheTTLSeconds": True}, {"replicaIdentities": "x"},
                                    {"replicaIdentities": [""]},
                                    {"replicaIdentities": ["chronoshard:shardset:shop:orders"]},
                                    {"replicaIdentities": ["chronoshard:operator"]}])
def test_security_config_refuses_bad_fields(change):
    with pytest.raises(SecurityConfigError):
        parse_security_config({**security_doc("shop"), **change})


def test_unverified_claims():
    tok = expired_jwt("aud-1", "sub")
    claims = unverified_claims(tok)
    assert audiences(claims) == ("aud-1",) and expiry(claims) is not None
    assert unverified_claims("opaque") is None and unverified_claims("a.!!.c") is None
    assert expiry({"exp": True}) is None and audiences({"aud": "x"}) == ("x",)


def test_ttl_cache_expires_and_is_bounded():
    now = [0.0]
    cache: TTLCache[str, int] = TTLCache(2, lambda: now[0])
    cache.put("a", 1, 10)
    cache.put("b", 2, 1)
    assert cache.get("a") == 1
    cache.put("c", 3, 10)  # "b" was used least recently
    assert cache.get("b") is None and len(cache) == 2
    now[0] = 10
    assert cache.get("a") is None and cache.get("c") is None
    cache.put("d", 4, 0)  # never past a token's exp: a ttl of 0 keeps nothing
    assert cache.get("d") is None


def test_review_attributes():
    data = review_attributes(Access.DATA_LIST, table="t", shard_set="orders")
    assert data is not None and data.spec("shop") == {"resourceAttributes": {
        "group": "chronoshard.io", "resource": "shardsets", "subresource": "data", "name": "t",
        "namespace": "shop", "verb": "list"}}
    part = review_attributes(Access.PARTITIONS, table=None, shard_set="orders")
    assert part is not None and part.spec("shop")["resourceAttributes"]["name"] == "orders"
    metrics = review_attributes(Access.METRICS, table=None, shard_set="orders")
    assert metrics is not None and metrics.spec("shop") == {"nonResourceAttributes": {"path": "/metrics",
                                                                                       "verb": "get"}}
    assert review_attributes(Access.ADMIN, table="t", shard_set="orders") is None
