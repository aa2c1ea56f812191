"""Which ShadowPolicy is in force for a ShardSet (pure): the oldest valid one; the others conflict.

A shard pod runs one shadow process, so at most one policy can configure it; the rule is the PrefetchPolicy's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .spec.common import SpecError
from .spec.shadowpolicy import ShadowPolicySpec, parse_shadowpolicy


@dataclass(frozen=True)
class ShadowSelection:
    """The policy in force (name and parsed spec) and the other valid policies that target the same ShardSet."""

    name: str | None = None
    spec: ShadowPolicySpec | None = None
    conflicting: tuple[str, ...] = field(default_factory=tuple)


def _age_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    # RFC 3339 UTC timestamps at second precision sort as strings; the name breaks ties deterministically.
    return (str(meta.get("creationTimestamp") or ""), str(meta["name"]))


def select_shadow_policy(policies: Iterable[Mapping[str, Any]], shardset: str) -> ShadowSelection:
    """The oldest valid, not-deleting ShadowPolicy whose ``spec.shardSetRef.name`` is ``shardset``."""
    valid: list[tuple[tuple[str, str], str, ShadowPolicySpec]] = []
    for obj in policies:
        if obj["metadata"].get("deletionTimestamp"):
            continue
        if ((obj.get("spec") or {}).get("shardSetRef") or {}).get("name") != shardset:
            continue
        try:
            parsed = parse_shadowpolicy(obj.get("spec"))
        except SpecError:
            continue  # an invalid policy never takes effect; its own status says why
        valid.append((_age_key(obj), obj["metadata"]["name"], parsed))
    if not valid:
        return ShadowSelection()
    valid.sort(key=lambda v: v[0])
    return ShadowSelection(valid[0][1], valid[0][2], tuple(v[1] for v in valid[1:]))
