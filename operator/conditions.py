"""Kubernetes-style status conditions (pure)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any


def now_rfc3339() -> str:
    """The current UTC time, second precision, as Kubernetes writes timestamps."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    existing: Iterable[Mapping[str, Any]] | None,
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    generation: int | None,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """Return ``existing`` with condition ``type_`` set; lastTransitionTime only moves when status changes."""
    status_str = status if isinstance(status, str) else ("True" if status else "False")
    out: list[dict[str, Any]] = []
    found = False
    for cond in existing or []:
        c = dict(cond)
        if c.get("type") == type_:
            found = True
            changed = c.get("status") != status_str
            c.update(status=status_str, reason=reason, message=message)
            if generation is not None:
                c["observedGeneration"] = generation
            if changed or not c.get("lastTransitionTime"):
                c["lastTransitionTime"] = now or now_rfc3339()
        out.append(c)
    if not found:
        c = {
            "type": type_,
            "status": status_str,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now or now_rfc3339(),
        }
        if generation is not None:
            c["observedGeneration"] = generation
        out.append(c)
    return out


def get_condition(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    """The condition of ``type_``, if present."""
    for cond in conditions or []:
        if cond.get("type") == type_:
            return cond
    return None


def conditions_equal_ignoring_time(a: Iterable[Mapping[str, Any]], b: Iterable[Mapping[str, Any]]) -> bool:
    """True when two condition lists differ at most in lastTransitionTime (so a status write can be skipped)."""

    def strip(cs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return sorted(
            ({k: v for k, v in c.items() if k != "lastTransitionTime"} for c in cs), key=lambda c: c["type"]
        )

    return strip(a) == strip(b)


def status_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether writing ``new`` over ``old`` changes anything but ``lastUpdateTime`` and conditions' transition times
    (a policy's status loop then skips the write)."""

    def strip(s: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in s.items() if k not in ("conditions", "lastUpdateTime")}

    if strip(old) != strip(new):
        return True
    return not conditions_equal_ignoring_time(old.get("conditions") or [], new.get("conditions") or [])
