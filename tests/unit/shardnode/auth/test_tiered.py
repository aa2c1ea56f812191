"""Tiered-token enforcement (docs/tokens.md, "Enforcement in nodes and caches"): the authorization rule table, the
tier rules, the revocation set, tokens.json parsing and reload, and the authenticator's 401 reasons."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from chronoshard.shardnode.auth import tiered
from chronoshard.shardnode.auth import tokenformat as tf
from chronoshard.shardnode.auth.identity import Unauthenticated
from chronoshard.shardnode.auth.policy import Access
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

NOW = 1_800_000_000
MS = "shop/orders-ms"


def claims(**over: object) -> tf.Claims:
    base: dict[str, object] = dict(
        iss=tf.issuer_for(MS), sub="system:serviceaccount:shop:app", jti="j" * 32, iat=NOW, exp=NOW + 600,
        tier="valid", store="shop/orders", scope=tf.Scope(verbs=("get", "list", "update"), tables=("orders",)),
        ms=MS)
    base.update(over)
    return tf.Claims(**base)  # type: ignore[arg-type]


# ---- the authorization rule ------------------------------------------------------------------------------
RULES = [
    # access, table, key, scope, allowed, reason
    (Access.DATA_GET, "orders", "k", tf.Scope(("get",), ("orders",)), True, "tiered"),
    (Access.DATA_LIST, "orders", None, tf.Scope(("get",), ("orders",)), False, "scope"),
    (Access.DATA_UPDATE, "orders", "k", tf.Scope(("get", "update"), None), True, "tiered"),
    (Access.DATA_DELETE, "orders", "k", tf.Scope(("get", "update"), None), False, "scope"),
    (Access.DATA_GET, "accounts", "k", tf.Scope(("get",), ("orders",)), False, "scope"),
    (Access.DATA_GET, "orders", "k", tf.Scope(("get",), None, ("k",)), True, "tiered"),
    (Access.DATA_GET, "orders", "other", tf.Scope(("get",), None, ("k",)), False, "scope"),
    (Access.DATA_GET, None, None, tf.Scope(("get",), ("orders",)), True, "tiered"),  # GET /v1/queue/{id}
    (Access.ADMIN, None, None, tf.Scope(("get", "list", "update", "delete")), False, "tiered_token_not_allowed"),
    (Access.REPLICATION, None, None, tf.Scope(("get",)), False, "tiered_token_not_allowed"),
    (Access.METRICS, None, None, tf.Scope(("get",)), False, "tiered_token_not_allowed"),
    (Access.PARTITIONS, None, None, tf.Scope(("get",)), True, "tiered"),  # the map, to route
    (None, "orders", "k", tf.Scope(("get",)), False, "no_policy"),
]


@pytest.mark.parametrize("access,table,key,scope,allowed,reason", RULES)
def test_authorization_rule_table(access, table, key, scope, allowed, reason):
    d = tiered.authorize(claims(scope=scope), access, table, key)
    assert (d.allowed, d.reason) == (allowed, reason)


# ---- the tier rules ---------------------------------------------------------------------------------------
MEMBERS = ("shop/orders", "dr/orders")
TIER_RULES = [
    # tier, store, serving, access, allowed, reason
    ("valid", "shop/orders", "shop/orders", Access.DATA_UPDATE, True, "tiered"),
    ("valid", "shop/orders", "dr/orders", Access.DATA_GET, False, "wrong_store"),
    ("provisional", "dr/orders", "dr/orders", Access.DATA_UPDATE, True, "tiered"),
    ("provisional", "dr/orders", "shop/orders", Access.DATA_GET, False, "wrong_store"),
    ("temporary", "shop/orders", "dr/orders", Access.DATA_GET, True, "tiered"),
    ("temporary", "shop/orders", "shop/orders", Access.DATA_LIST, True, "tiered"),
    ("temporary", "shop/orders", "dr/orders", Access.DATA_UPDATE, True, "queue"),
    ("temporary", "shop/orders", "shop/orders", Access.DATA_DELETE, True, "queue"),
    ("temporary", "shop/orders", "elsewhere/orders", Access.DATA_GET, False, "wrong_store"),
    ("temporary", "elsewhere/orders", "shop/orders", Access.DATA_GET, False, "wrong_store"),
]


@pytest.mark.parametrize("tier,store,serving,access,allowed,reason", TIER_RULES)
def test_tier_rules(tier, store, serving, access, allowed, reason):
    lsn = {"0": 5} if tier == "provisional" else None
    d = tiered.tier_rule(claims(tier=tier, store=store, lsn=lsn), serving, MEMBERS, access)
    assert (d.allowed, d.reason) == (allowed, reason)


def test_temporary_without_a_member_list_only_on_its_store():
    assert tiered.tier_rule(claims(tier="temporary"), "shop/orders", (), Access.DATA_GET).allowed
    assert tiered.tier_rule(claims(tier="temporary"), "dr/orders", (), Access.DATA_GET).reason == "wrong_store"


# ---- the revocation set -----------------------------------------------------------------------------------
class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_revocations_are_dropped_after_their_exp():
    clock = Clock()
    rs = tiered.RevocationSet(wall=clock)
    assert rs.add("a", NOW + 10) and rs.add("b", NOW + 100)
    assert not rs.add("old", NOW - 1)  # already expired: refused as expired anyway, nothing kept
    assert "a" in rs and "b" in rs and "old" not in rs and len(rs) == 2
    clock.t = NOW + 50
    assert "a" not in rs and len(rs) == 1
    assert rs.entries() == [{"tokenId": "b", "expiresAt": NOW + 100}]


def test_revocations_are_bounded_soonest_expiry_first():
    rs = tiered.RevocationSet(max_entries=3, wall=Clock())
    for i, jti in enumerate("abcd"):
        rs.add(jti, NOW + 100 - i)  # d expires first
    assert len(rs) == 3 and "d" not in rs and all(j in rs for j in "abc")


def test_revocation_re_added_with_later_exp_is_kept():
    clock = Clock()
    rs = tiered.RevocationSet(wall=clock)
    rs.add("a", NOW + 10)
    rs.add("a", NOW + 100)
    clock.t = NOW + 20
    assert "a" in rs and len(rs) == 1


def test_parse_revocations():
    assert tiered.parse_revocations({"revocations": [{"tokenId": "a", "expiresAt": 5},
                                                     {"jti": "b", "exp": 6.5}]}) == [("a", 5.0), ("b", 6.5)]
    for bad in ({}, {"revocations": [{"tokenId": "a"}]}, {"revocations": [{"tokenId": "", "expiresAt": 1}]},
                {"revocations": [{"tokenId": "a", "expiresAt": True}]}, []):
        with pytest.raises(ValueError):
            tiered.parse_revocations(bad)


# ---- tokens.json and the authenticator ---------------------------------------------------------------------
@pytest.fixture
def signing() -> tuple[Ed25519PrivateKey, str]:
    k = Ed25519PrivateKey.generate()
    return k, tf.key_id(k.public_key())


def write_tokens_json(path: Path, *keys: Ed25519PrivateKey, issuer: str = tf.issuer_for(MS)) -> None:
    doc = {"issuer": issuer, "mirrorSet": MS, "store": "shop/orders", "members": list(MEMBERS),
           "keys": [{"kid": tf.key_id(k.public_key()), "publicKey": tf.public_key_b64(k.public_key())}
                    for k in keys]}
    path.write_text(json.dumps(doc))


def authenticator(path: Path, clock: Clock, serving: str = "shop/orders") -> tiered.TieredTokenAuthenticator:
    return tiered.TieredTokenAuthenticator(tiered.TokensFile(path, interval=0), serving,
                                           tiered.RevocationSet(wall=clock), wall=clock)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def refusal(auth: tiered.TieredTokenAuthenticator, header: str) -> str:
    with pytest.raises(Unauthenticated) as exc:
        auth.verify_header(header)
    assert header.removeprefix("Bearer ") not in exc.value.message  # never the token in the message
    return exc.value.reason


def test_verifies_and_refuses_with_the_contract_reasons(tmp_path, signing):
    key, kid = signing
    path = tmp_path / "tokens.json"
    write_tokens_json(path, key)
    clock = Clock()
    auth = authenticator(path, clock)
    token = tf.encode(claims(), key, kid)
    assert auth.verify_header(bearer(token)) == claims()
    # tampered: the payload's tier changed, signature kept
    head, payload, sig = token.split(".")
    forged = tf.encode(claims(tier="valid", scope=tf.Scope(("get", "list", "update", "delete"))), key, kid)
    assert refusal(auth, bearer(".".join([head, forged.split(".")[1], sig]))) == "token_invalid"
    other = Ed25519PrivateKey.generate()
    assert refusal(auth, bearer(tf.encode(claims(), other, kid))) == "token_invalid"  # wrong key, same kid
    assert refusal(auth, bearer(tf.encode(claims(), other, "nokid"))) == "unknown_key"
    assert refusal(auth, bearer(tf.encode(claims(iss=tf.issuer_for("x/other")), key, kid))) == "wrong_issuer"
    assert refusal(auth, bearer(tf.encode(claims(aud="elsewhere"), key, kid))) == "token_invalid"
    assert refusal(auth, bearer(tf.encode(claims(exp=NOW - 1), key, kid))) == "token_expired"
    auth.revocations.add(claims().jti, NOW + 600)
    assert refusal(auth, bearer(token)) == "token_revoked"  # even though verified (and cached) before
    clock.t = NOW + 601
    assert refusal(auth, bearer(tf.encode(claims(jti="x" * 32), key, kid))) == "token_expired"


def test_other_bearer_tokens_are_left_to_the_next_authenticator(tmp_path, signing):
    key, _ = signing
    path = tmp_path / "tokens.json"
    write_tokens_json(path, key)
    auth = authenticator(path, Clock())
    sa_like = tf.encode(claims(iss="https://kubernetes.default.svc"), key, "k")
    assert auth.verify_header(bearer(sa_like)) is None
    assert auth.verify_header("Bearer opaque-token") is None
    assert auth.verify_header("Basic dXNlcjpwYXNz") is None


def test_no_tokens_json_means_unknown_key_and_a_new_file_is_picked_up(tmp_path, signing):
    key, kid = signing
    path = tmp_path / "tokens.json"
    auth = authenticator(path, Clock())
    token = tf.encode(claims(), key, kid)
    assert refusal(auth, bearer(token)) == "unknown_key"
    write_tokens_json(path, key)
    assert auth.verify_header(bearer(token)) == claims()


def test_a_dropped_key_stops_verifying_at_once(tmp_path, signing):
    key, kid = signing
    path = tmp_path / "tokens.json"
    write_tokens_json(path, key)
    auth = authenticator(path, Clock())
    token = tf.encode(claims(), key, kid)
    assert auth.verify_header(bearer(token)) == claims()  # cached now
    new = Ed25519PrivateKey.generate()
    write_tokens_json(path, new)
    os.utime(path, ns=(1, 1))  # a different mtime even within the same clock tick
    assert refusal(auth, bearer(token)) == "unknown_key"


def test_a_broken_tokens_json_keeps_the_keys_in_force(tmp_path, signing):
    key, kid = signing
    path = tmp_path / "tokens.json"
    write_tokens_json(path, key)
    auth = authenticator(path, Clock())
    token = tf.encode(claims(), key, kid)
    assert auth.verify_header(bearer(token)) == claims()
    path.write_text("{not json")
    assert auth.verify_header(bearer(token)) == claims()


def test_parse_tokens_config_refuses_bad_documents():
    for bad in ([], {"issuer": "x", "mirrorSet": MS}, {"issuer": tf.issuer_for(MS), "mirrorSet": ""},
                {"issuer": tf.issuer_for(MS), "mirrorSet": MS, "keys": [{"kid": "a", "publicKey": "AAAA"}]},
                {"issuer": tf.issuer_for(MS), "mirrorSet": MS, "members": "shop/orders"}):
        with pytest.raises(tiered.TokensConfigError):
            tiered.parse_tokens_config(bad)
