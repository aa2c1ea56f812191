"""The tiered token's format: encode, verify, tampering, expiry, wrong key, unknown kid, issuer, scope."""

from __future__ import annotations

import base64
import json

import pytest
from chronoshard.shardnode.auth import tokenformat as tf
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

NOW = 1_800_000_000


def _claims(**over) -> tf.Claims:
    base = dict(iss=tf.issuer_for("shop/orders-ms"), sub="system:serviceaccount:shop:app", jti="a" * 32,
                iat=NOW, exp=NOW + 600, tier="valid", store="shop/orders",
                scope=tf.Scope(verbs=("get", "update"), tables=("orders",), keys=None), ms="shop/orders-ms")
    base.update(over)
    return tf.Claims(**base)


@pytest.fixture(scope="module")
def key():
    k = Ed25519PrivateKey.generate()
    return k, tf.key_id(k.public_key())


def test_round_trip(key):
    priv, kid = key
    claims = _claims(tier="provisional", lsn={"0": 12, "1": 40})
    token = tf.encode(claims, priv, kid)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "EdDSA", "typ": "JWT", "kid": kid}
    got = tf.decode_verified(token, {kid: priv.public_key()}, now=NOW + 1, issuer=claims.iss)
    assert got == claims
    assert tf.decode_unverified_issuer(token) == "chronoshard-tokens:shop/orders-ms"


def test_kid_is_sha256_prefix_of_raw_key(key):
    import hashlib
    priv, kid = key
    assert kid == hashlib.sha256(tf.raw_public_key(priv.public_key())).hexdigest()[:8]
    assert len(kid) == 8
    b64 = tf.public_key_b64(priv.public_key())
    assert tf.public_keys_from_json([{"kid": kid, "publicKey": b64}, {"kid": "x", "publicKey": "bad"}]).keys() == {kid}


def test_expired(key):
    priv, kid = key
    token = tf.encode(_claims(), priv, kid)
    with pytest.raises(tf.TokenExpired) as err:
        tf.decode_verified(token, {kid: priv.public_key()}, now=NOW + 600)
    assert err.value.reason == "token_expired"
    tf.decode_verified(token, {kid: priv.public_key()}, now=NOW + 599)


def test_tampered_payload(key):
    priv, kid = key
    token = tf.encode(_claims(), priv, kid)
    head, payload, sig = token.split(".")
    doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    doc["tier"] = "valid"
    doc["scope"]["verbs"] = ["get", "list", "update", "delete"]
    forged = base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    with pytest.raises(tf.TokenInvalid) as err:
        tf.decode_verified(f"{head}.{forged}.{sig}", {kid: priv.public_key()}, now=NOW)
    assert err.value.reason == "token_invalid"


def test_wrong_key_same_kid(key):
    priv, kid = key
    other = Ed25519PrivateKey.generate()
    token = tf.encode(_claims(), other, kid)
    with pytest.raises(tf.TokenInvalid):
        tf.decode_verified(token, {kid: priv.public_key()}, now=NOW)


def test_unknown_kid(key):
    priv, kid = key
    token = tf.encode(_claims(), priv, "deadbeef")
    with pytest.raises(tf.UnknownKey) as err:
        tf.decode_verified(token, {kid: priv.public_key()}, now=NOW)
    assert err.value.reason == "unknown_key"


def test_wrong_issuer_and_audience(key):
    priv, kid = key
    keys = {kid: priv.public_key()}
    token = tf.encode(_claims(), priv, kid)
    with pytest.raises(tf.WrongIssuer):
        tf.decode_verified(token, keys, now=NOW, issuer=tf.issuer_for("dr/other-ms"))
    with pytest.raises(tf.WrongIssuer):
        tf.decode_verified(tf.encode(_claims(iss="someone-else"), priv, kid), keys, now=NOW)
    with pytest.raises(tf.TokenInvalid):
        tf.decode_verified(tf.encode(_claims(aud="kubernetes"), priv, kid), keys, now=NOW)


def test_not_a_token(key):
    priv, kid = key
    for junk in ("", "abc", "a.b.c", "x.y"):
        with pytest.raises(tf.TokenInvalid):
            tf.decode_verified(junk, {kid: priv.public_key()}, now=NOW)
        assert tf.decode_unverified_issuer(junk) is None


def test_claims_outside_contract(key):
    priv, kid = key
    keys = {kid: priv.public_key()}
    with pytest.raises(tf.TokenInvalid):
        tf.decode_verified(tf.encode(_claims(tier="gold"), priv, kid), keys, now=NOW)
    with pytest.raises(tf.TokenInvalid):  # provisional without its watermark
        tf.decode_verified(tf.encode(_claims(tier="provisional"), priv, kid), keys, now=NOW)
    with pytest.raises(tf.TokenInvalid):
        tf.decode_verified(tf.encode(_claims(scope=tf.Scope(verbs=("admin",))), priv, kid), keys, now=NOW)


def test_scope_allows():
    scope = tf.Scope(verbs=("get",), tables=("orders",), keys=("k1",))
    assert scope.allows("get", "orders", "k1")
    assert not scope.allows("get", "orders", "k2")
    assert not scope.allows("get", "users", "k1")
    assert not scope.allows("update", "orders", "k1")
    assert tf.Scope(verbs=("get", "list")).allows("list", "anything", None)
