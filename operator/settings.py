"""Process-wide settings chosen on the command line, read by the Kopf startup handler."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RuntimeSettings:
    """What ``chronoshard-operator`` was started with."""

    peering_name: str = "chronoshard"
    clusterwide: bool = True
    namespaces: tuple[str, ...] = ()  # the watched namespaces (glob patterns) when not cluster-wide


RUNTIME = RuntimeSettings()
