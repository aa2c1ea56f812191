"""Read a JWT's claims WITHOUT verifying it: only to give a precise refusal reason (expired, wrong audience).

Nothing read here ever lets a request through; acceptance is the API server's TokenReview alone.
"""

from __future__ import annotations

import base64
import json
from typing import Any


def unverified_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT-shaped token (three base64url parts), or None for any other token."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        doc = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, UnicodeEncodeError):
        return None
    return doc if isinstance(doc, dict) else None


def expiry(claims: dict[str, Any] | None) -> float | None:
    """The ``exp`` claim (seconds since the epoch), if it is a number."""
    exp = None if claims is None else claims.get("exp")
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def audiences(claims: dict[str, Any] | None) -> tuple[str, ...] | None:
    """The ``aud`` claim as a tuple (a JWT may carry one string or a list), None when absent."""
    aud = None if claims is None else claims.get("aud")
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return tuple(aud)
    return None
