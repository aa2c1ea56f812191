"""Process-wide settings chosen on the command line, read by the Kopf startup handler."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class RuntimeSettings:
    """What ``chronoshard-operator`` was started with."""

    peering_name: str = "chronoshard"
    clusterwide: bool = True
    namespaces: tuple[str, ...] = ()  # the watched namespaces (glob patterns) when not cluster-wide


RUNTIME = RuntimeSettings()


# A test seam, like keyrotation's $CHRONOSHARD_CLOCK_OFFSET_FILE: e2e tests set it so that a policy's status
# follows its shards within a second instead of POLL_SECONDS later. Production never sets it.
TEST_POLL_ENV = "CHRONOSHARD_TEST_POLL_SECONDS"


def poll_seconds(default: float) -> float:
    """``default``, or the shorter period named by $CHRONOSHARD_TEST_POLL_SECONDS (a test seam)."""
    raw = os.environ.get(TEST_POLL_ENV)
    try:
        return min(default, float(raw)) if raw else default
    except ValueError:
        return default
