"""The tier machine (docs/tokens.md, "The tiers"): which tier a store can promise now, and what a refresh does.

Pure: values in, values out. ``next_tier`` is the one rule every issuance, pre-issue and refresh goes through.
"""

from __future__ import annotations

from dataclasses import dataclass

VALID, TEMPORARY, PROVISIONAL = "valid", "temporary", "provisional"
TIERS = (VALID, TEMPORARY, PROVISIONAL)
# A temporary token becomes valid only after the store has been healthy and below the threshold this many samples
# in a row: one good sample between bad ones must not flap every client's tier.
CALM_SAMPLES_TO_UPGRADE = 2
# How long after its expiry a token may still be refreshed (a client that slept through its expiry by a little).
REFRESH_GRACE_SECONDS = 300.0


@dataclass(frozen=True)
class Operation:
    """A MirrorSet operation in progress (``status.operation``): its kind, source and target members."""

    kind: str
    source: str
    target: str
    term: int = 0


@dataclass(frozen=True)
class StoreHealth:
    """What the service knows of the active store now: every shard up, and how many samples in a row it has been
    healthy and below the threshold (``calm_samples``)."""

    healthy: bool
    calm_samples: int = 0


@dataclass(frozen=True)
class Placement:
    """A tier and the member (``store``) it applies to."""

    tier: str
    store: str


def next_tier(current: str | None, health: StoreHealth, risk: float, threshold: float,
              operation: Operation | None) -> str:
    """The tier a token of tier ``current`` (None: a new request) should have now."""
    if operation is not None:
        return PROVISIONAL
    if not health.healthy or risk >= threshold:
        return TEMPORARY
    if current == TEMPORARY and health.calm_samples < CALM_SAMPLES_TO_UPGRADE:
        return TEMPORARY
    return VALID


def placement(current: str | None, health: StoreHealth, risk: float, threshold: float,
              operation: Operation | None, active_store: str) -> Placement:
    """``next_tier`` with its store: the operation's target for provisional, else the active member."""
    tier = next_tier(current, health, risk, threshold, operation)
    return Placement(tier, operation.target if tier == PROVISIONAL and operation is not None else active_store)


@dataclass(frozen=True)
class RefreshDecision:
    """What a refresh does: ``action`` upgrade | renew | downgrade | refuse; ``reason`` when refused."""

    action: str
    tier: str | None = None
    store: str | None = None
    reason: str | None = None


RANK = {TEMPORARY: 0, PROVISIONAL: 1, VALID: 2}


def refresh_decision(*, state: str, tier: str, expires_at: float, now: float, scope_allowed: bool,
                     target: Placement) -> RefreshDecision:
    """Refresh a token in ``state`` of ``tier``: refuse (revoked, superseded, expired too long ago, scope no longer
    allowed), else the tier ``target`` says: upgrade, renew the same tier, or downgrade."""
    if state == "revoked":
        return RefreshDecision("refuse", reason="revoked")
    if state == "superseded":
        return RefreshDecision("refuse", reason="superseded")
    if now > expires_at + REFRESH_GRACE_SECONDS:
        return RefreshDecision("refuse", reason="expired_too_long")
    if not scope_allowed:
        return RefreshDecision("refuse", reason="scope_changed")
    if target.tier == tier:
        action = "renew"
    else:
        action = "upgrade" if RANK[target.tier] > RANK[tier] else "downgrade"
    return RefreshDecision(action, target.tier, target.store)
