"""Predictive issuance decisions: who gets a pre-issued replacement when the store's tier changes."""

from __future__ import annotations

from chronoshard.shardnode.tokens.predictive import RECENT_SECONDS, HeldToken, pre_issues, stale_replacements
from chronoshard.shardnode.tokens.tiers import Placement

NOW = 10_000.0
TEMP = Placement("temporary", "shop/orders")


def tok(tid, service="a", tier="valid", state="active", issued=NOW - 60, expires=NOW + 600, scope="s",
        replacement=None, delivered=True):
    return HeldToken(tid, service, scope, tier, "shop/orders", state, issued, expires, replacement, delivered)


def ids(tokens):
    return [t.token_id for t in tokens]


def test_valid_holders_get_a_temporary_one_each():
    held = [tok("1", "a"), tok("2", "b"), tok("3", "c", tier="temporary")]
    assert ids(pre_issues(held, TEMP, NOW)) == ["1", "2"]


def test_every_held_token_of_a_service_each_pod_its_own_but_not_unclaimed_pre_issues():
    held = [tok("pod1", "a"), tok("pod2", "a"), tok("unclaimed", "a", delivered=False),
            tok("superseded", "a", state="superseded")]
    assert ids(pre_issues(held, TEMP, NOW)) == ["pod1", "pod2"]


def test_a_replacement_for_another_tier_is_withdrawn_when_the_token_fits_again():
    held = [tok("1", replacement=TEMP), tok("2"), tok("3", tier="temporary", replacement=TEMP)]
    assert ids(stale_replacements(held, Placement("valid", "shop/orders"))) == ["1"]
    assert stale_replacements(held, TEMP) == []


def test_nothing_twice_and_a_changed_target_replaces_again():
    held = [tok("1", replacement=TEMP)]
    assert pre_issues(held, TEMP, NOW) == []
    assert ids(pre_issues(held, Placement("provisional", "dr/orders"), NOW)) == ["1"]


def test_revoked_and_long_expired_get_nothing_recently_expired_do():
    held = [tok("r", "a", state="revoked"), tok("old", "b", state="expired", expires=NOW - RECENT_SECONDS - 1),
            tok("recent", "c", state="expired", expires=NOW - 30)]
    assert ids(pre_issues(held, TEMP, NOW)) == ["recent"]


def test_back_to_valid():
    held = [tok("1", tier="temporary"), tok("2", "b", tier="provisional")]
    assert ids(pre_issues(held, Placement("valid", "shop/orders"), NOW)) == ["1", "2"]
