"""Predictive issuance (docs/tokens.md): which held tokens get a pre-issued replacement when the tier the store can
promise changes. Pure: the service applies the decisions (signs, stores ``replacement``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .tiers import Placement

# Services that held a token for the store this recently get a replacement (docs/tokens.md: "in the last hour").
RECENT_SECONDS = 3600.0


@dataclass(frozen=True)
class HeldToken:
    """One registry row as the decision needs it; ``replacement`` is the placement of its pre-issued successor."""

    token_id: str
    service: str
    scope_key: str  # the scope as canonical JSON: one line per (service, scope)
    tier: str
    store: str
    state: str
    issued_at: float
    expires_at: float
    replacement: Placement | None = None


def latest_per_holder(tokens: Sequence[HeldToken]) -> list[HeldToken]:
    """The newest token of each (service, scope), whatever its state."""
    newest: dict[tuple[str, str], HeldToken] = {}
    for tok in tokens:
        key = (tok.service, tok.scope_key)
        seen = newest.get(key)
        if seen is None or (tok.issued_at, tok.token_id) > (seen.issued_at, seen.token_id):
            newest[key] = tok
    return list(newest.values())


def needs_replacement(tok: HeldToken, target: Placement, now: float) -> bool:
    """Whether ``tok`` (its holder's newest) should get a pre-issued token of ``target``."""
    if tok.state not in ("active", "expired") or now - tok.expires_at > RECENT_SECONDS:
        return False  # revoked tokens get nothing; expired long ago: the service stopped using the store
    if tok.tier == target.tier and tok.store == target.store:
        return False
    return tok.replacement != target


def pre_issues(tokens: Sequence[HeldToken], target: Placement, now: float) -> list[HeldToken]:
    """The tokens to pre-issue a ``target`` replacement for: each holder's newest whose placement differs."""
    return sorted((t for t in latest_per_holder(tokens) if needs_replacement(t, target, now)),
                  key=lambda t: t.token_id)
