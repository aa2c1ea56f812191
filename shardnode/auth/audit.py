"""One audit line per guarded request (logger ``chronoshard.audit``): who, what, which table, the status."""

from __future__ import annotations

import json
import logging

from .identity import Identity

audit_log = logging.getLogger("chronoshard.audit")


def audit(identity: Identity | None, method: str, route: str, table: str | None, key: str | None,
          status: int, reason: str) -> None:
    """Log one request as a JSON object (never a credential, never block contents)."""
    audit_log.info(json.dumps({
        "user": identity.user if identity is not None else None,
        "via": identity.via if identity is not None else None,
        "method": method, "route": route, "table": table, "key": key, "status": status, "reason": reason,
    }, ensure_ascii=True))
