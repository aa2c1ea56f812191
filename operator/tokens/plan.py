"""The token controller's decisions (pure): the signing key's rotation step and ``status.tokenService``.

Rotation (docs/tokens.md, "The token"): a new value of the MirrorSet annotation ``chronoshard.io/rotate-token-key``
makes the current key ``previous.pem`` and a new one ``signing.pem`` (both public keys published, the service signs
with the new one); ``validTTL`` later every token signed with the old key has expired and ``previous.pem`` is
dropped. What was handled and when lives on the Secret's annotations, so a restarted operator repeats nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from .manifests import ROTATED_AT_ANNOTATION, ROTATED_REQUEST_ANNOTATION

KEEP = "keep"
ROTATE = "rotate"
DROP_PREVIOUS = "drop-previous"


def parse_time(text: str | None) -> dt.datetime | None:
    """An RFC 3339 UTC time written by ``format_time``; None when absent or unreadable."""
    if not text:
        return None
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def format_time(when: dt.datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ``."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rotation_step(request: str | None, secret_annotations: Mapping[str, str], has_previous: bool,
                  now: dt.datetime, valid_ttl: dt.timedelta) -> str:
    """What to do with the signing Secret this pass: ``rotate`` for a request not yet handled (and no rotation
    still publishing its old key: one rotation at a time), ``drop-previous`` once ``valid_ttl`` passed since the
    last rotation, else ``keep``."""
    handled = secret_annotations.get(ROTATED_REQUEST_ANNOTATION)
    rotated_at = parse_time(secret_annotations.get(ROTATED_AT_ANNOTATION))
    if has_previous:
        # Tokens signed with the old key live at most validTTL (the longest tier) after the switch.
        if rotated_at is None or now - rotated_at >= valid_ttl:
            return DROP_PREVIOUS
        return KEEP
    if request and request != handled:
        return ROTATE
    return KEEP


def rotation_annotations(request: str, now: dt.datetime) -> dict[str, str]:
    """The signing Secret's annotations after handling ``request``."""
    return {ROTATED_REQUEST_ANNOTATION: request, ROTATED_AT_ANNOTATION: format_time(now)}


def tokens_issued(service_status: Mapping[str, Any] | None) -> dict[str, int] | None:
    """``status.tokensIssued`` from the service's ``GET /v1/status``: the registry's tokens per tier (rows are
    pruned a day after they expire); None when the service did not answer."""
    tiers = ((service_status or {}).get("tokens") or {}).get("tier") if service_status is not None else None
    if not isinstance(tiers, Mapping):
        return None
    return {t: int(n) if isinstance(n, int) and not isinstance(n, bool) else 0
            for t in ("temporary", "provisional", "valid") for n in [tiers.get(t, 0)]}


def token_service_status(ready: bool, url: str, key_ids: list[str], risk: Mapping[str, Any] | None,
                         message: str | None = None) -> dict[str, Any]:
    """``status.tokenService``: whether the service's pod is ready, its URL, the published key ids, and the
    model as its ``GET /v1/risk`` last reported it (None: not reached)."""
    model = (risk or {}).get("model") if isinstance((risk or {}).get("model"), Mapping) else None
    sources = sorted({str(m.get("source")) for m in (risk or {}).get("members") or []
                      if isinstance(m, Mapping) and m.get("source")})
    out: dict[str, Any] = {"ready": ready, "url": url, "keyIds": key_ids,
                           "model": {"trained": bool((model or {}).get("trained")),
                                     "source": sources[0] if len(sources) == 1 else ("mixed" if sources else None)}}
    if message:
        out["message"] = message[:500]
    return out
