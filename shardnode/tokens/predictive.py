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
    """One registry row as the decision needs it; ``replacement`` is the placement of its pre-issued successor;
    ``delivered``: its holder has it (requested or refreshed, or a pre-issued one handed out by a status check)."""

    token_id: str
    service: str
    scope_key: str  # the scope as canonical JSON
    tier: str
    store: str
    state: str
    issued_at: float
    expires_at: float
    replacement: Placement | None = None
    delivered: bool = True


def needs_replacement(tok: HeldToken, target: Placement, now: float) -> bool:
    """Whether ``tok`` should get a pre-issued token of ``target``."""
    if not tok.delivered:
        return False  # nobody holds it: a successor of an unclaimed pre-issue would only pile up
    if tok.state not in ("active", "expired") or now - tok.expires_at > RECENT_SECONDS:
        return False  # revoked or superseded tokens get nothing; expired long ago: the service stopped using it
    if tok.tier == target.tier and tok.store == target.store:
        return False
    return tok.replacement != target


def pre_issues(tokens: Sequence[HeldToken], target: Placement, now: float) -> list[HeldToken]:
    """The tokens to pre-issue a ``target`` replacement for: every held token whose placement differs (each pod
    of a service holds its own token, under the same service and scope)."""
    return sorted((t for t in tokens if needs_replacement(t, target, now)), key=lambda t: t.token_id)


def stale_replacements(tokens: Sequence[HeldToken], target: Placement) -> list[HeldToken]:
    """Tokens whose own placement is ``target`` again but that still offer a replacement made for another one (the
    store recovered before the holder swapped): the offer is withdrawn."""
    return sorted((t for t in tokens if t.replacement is not None and t.replacement != target
                   and t.tier == target.tier and t.store == target.store), key=lambda t: t.token_id)
