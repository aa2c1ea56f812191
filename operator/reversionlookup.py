"""Find the ShadowPolicy that shadows a ShardSet and read its reversion settings (API I/O only)."""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes.client.exceptions import ApiException

from . import kube, naming
from .spec.common import SpecError
from .spec.shadowpolicy import parse_shadowpolicy


@dataclass(frozen=True)
class ReversionPolicy:
    """A ShadowPolicy's ``reversion`` settings; ``invalid`` names a policy whose spec does not parse."""

    policy: str
    mode: str
    max_blocks: int | None = None
    invalid: str | None = None


def reversion_policy(namespace: str, shardset: str) -> ReversionPolicy | None:
    """The reversion settings of the ShadowPolicy targeting ``shardset`` (the oldest one if several do), or None
    when none does or the ShadowPolicy CRD is not installed. An invalid policy reads as mode confirm (never auto)."""
    try:
        policies = kube.list_objects(naming.API_VERSION, "ShadowPolicy", namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    mine = [p for p in policies if ((p.get("spec") or {}).get("shardSetRef") or {}).get("name") == shardset
            and not p["metadata"].get("deletionTimestamp")]
    if not mine:
        return None
    chosen = min(mine, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]))
    name = chosen["metadata"]["name"]
    try:
        spec = parse_shadowpolicy(chosen.get("spec"))
    except SpecError as exc:
        return ReversionPolicy(name, "confirm", invalid=str(exc))
    return ReversionPolicy(name, spec.reversion_mode, spec.reversion_max_blocks)
