"""The tier machine: every (current, next) pair, the upgrade's hysteresis, and the refresh decision."""

from __future__ import annotations

import itertools

import pytest
from chronoshard.shardnode.tokens import tiers
from chronoshard.shardnode.tokens.tiers import PROVISIONAL, TEMPORARY, VALID, Operation, Placement, StoreHealth

OP = Operation("failover", "shop/orders", "dr/orders", 3)
CALM = StoreHealth(True, calm_samples=5)
T = 0.7

# For every (current, next) pair: the conditions that take a token of `current` to `next`.
SCENARIOS = {
    VALID: {
        VALID: (CALM, 0.1, None),
        TEMPORARY: (CALM, 0.9, None),
        PROVISIONAL: (CALM, 0.1, OP),
    },
    TEMPORARY: {
        VALID: (StoreHealth(True, calm_samples=2), 0.1, None),
        TEMPORARY: (StoreHealth(True, calm_samples=1), 0.1, None),  # not calm long enough yet
        PROVISIONAL: (StoreHealth(False), 0.9, OP),
    },
    PROVISIONAL: {
        VALID: (StoreHealth(True, calm_samples=1), 0.1, None),  # promoted: the new active store is healthy
        TEMPORARY: (StoreHealth(False), 0.1, None),  # operation aborted, the store still down
        PROVISIONAL: (CALM, 0.1, OP),
    },
}


@pytest.mark.parametrize(("current", "target"), list(itertools.product(tiers.TIERS, tiers.TIERS)))
def test_every_pair(current, target):
    health, risk, op = SCENARIOS[current][target]
    assert tiers.next_tier(current, health, risk, T, op) == target


@pytest.mark.parametrize("current", [*tiers.TIERS, None])
def test_what_sends_every_tier_to_temporary(current):
    assert tiers.next_tier(current, StoreHealth(False, 9), 0.0, T, None) == TEMPORARY  # a shard down
    assert tiers.next_tier(current, CALM, T, T, None) == TEMPORARY  # the threshold itself counts as above
    assert tiers.next_tier(current, StoreHealth(False), 1.0, T, OP) == PROVISIONAL  # an operation wins


def test_a_new_request_is_valid_on_one_calm_sample_and_a_temporary_waits_for_two():
    one = StoreHealth(True, calm_samples=1)
    assert tiers.next_tier(None, one, 0.0, T, None) == VALID
    assert tiers.next_tier(TEMPORARY, one, 0.0, T, None) == TEMPORARY


def test_placement_names_the_target_for_provisional():
    assert tiers.placement(VALID, CALM, 0.0, T, OP, "shop/orders") == Placement(PROVISIONAL, "dr/orders")
    assert tiers.placement(VALID, CALM, 0.9, T, None, "shop/orders") == Placement(TEMPORARY, "shop/orders")


def _refresh(**over):
    args = dict(state="active", tier=TEMPORARY, expires_at=1000.0, now=900.0, scope_allowed=True,
                target=Placement(VALID, "shop/orders"))
    args.update(over)
    return tiers.refresh_decision(**args)


def test_refresh_upgrades_renews_downgrades():
    assert _refresh() == tiers.RefreshDecision("upgrade", VALID, "shop/orders")
    assert _refresh(tier=PROVISIONAL).action == "upgrade"
    assert _refresh(tier=VALID).action == "renew"
    assert _refresh(tier=VALID, target=Placement(TEMPORARY, "shop/orders")).action == "downgrade"
    assert _refresh(target=Placement(TEMPORARY, "shop/orders")).action == "renew"
    # within the grace after expiry
    assert _refresh(now=1000.0 + tiers.REFRESH_GRACE_SECONDS).action == "upgrade"


@pytest.mark.parametrize(("over", "reason"), [
    ({"state": "revoked"}, "revoked"),
    ({"state": "superseded"}, "superseded"),
    ({"now": 1000.0 + tiers.REFRESH_GRACE_SECONDS + 1}, "expired_too_long"),
    ({"scope_allowed": False}, "scope_changed"),
])
def test_refresh_refusals(over, reason):
    decision = _refresh(**over)
    assert decision.action == "refuse" and decision.reason == reason and decision.tier is None
