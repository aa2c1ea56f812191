"""KeyRotation spec: what starts a rotation of a ShardSet's table key, and how long the old key lingers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from chronoshard.operator.spec.common import Fields, SpecError

THREAT_REASONS = ("compromise", "suspected-compromise")
# Five cron fields or a macro; croniter decides the finer points, the schema only the shape.
SCHEDULE_PATTERN = r"(@(yearly|annually|monthly|weekly|daily|hourly)|([0-9*/,?A-Za-z-]+ ){4}[0-9*/,?A-Za-z-]+)"


@dataclass(frozen=True)
class Threat:
    """A detected threat that starts a rotation at once."""

    reason: str
    compromised_version: int | None = None
    detected_at: datetime | None = None
    description: str | None = None


@dataclass(frozen=True)
class KeyRotationSpec:
    """A parsed, defaulted KeyRotation spec."""

    shardset: str
    schedule: str | None = None
    trigger: str | None = None
    threat: Threat | None = None
    transition_period: timedelta = timedelta(hours=24)
    history_limit: int = 10
    suspend: bool = False


def parse_keyrotation(spec: Mapping[str, Any] | None) -> KeyRotationSpec:
    """Validate and default a KeyRotation `spec` exactly as the CRD schema does; raise SpecError otherwise."""
    f = Fields.root(spec)
    shardset = f.ref("shardSetRef")
    schedule = f.string("schedule", max_length=128, pattern=SCHEDULE_PATTERN)
    trigger = f.string("trigger", min_length=1, max_length=63)
    threat_fields = f.maybe_obj("threat")
    threat = _threat(threat_fields) if threat_fields is not None else None
    transition = f.duration("transitionPeriod", default="24h")
    history_limit = f.integer("historyLimit", default=10, minimum=1, maximum=100)
    suspend = f.boolean("suspend", default=False)
    f.done()
    if schedule is None and trigger is None and threat is None:
        raise SpecError("spec", "a KeyRotation needs a schedule, a trigger or a threat")
    if threat is not None and suspend:
        raise SpecError("spec.suspend",
                        "a threat rotation cannot be suspended (suspend must be false when threat is set)")
    return KeyRotationSpec(
        shardset=shardset,
        schedule=schedule,
        trigger=trigger,
        threat=threat,
        transition_period=transition,
        history_limit=history_limit,
        suspend=suspend,
    )


def _threat(f: Fields) -> Threat:
    reason = f.required_string("reason", enum=THREAT_REASONS)
    version = f.integer("compromisedVersion", minimum=1)
    detected_at = f.date_time("detectedAt")
    description = f.string("description", max_length=1024)
    f.done()
    return Threat(reason=reason, compromised_version=version, detected_at=detected_at, description=description)
