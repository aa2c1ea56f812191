"""Which PrefetchPolicy is in force for a ShardSet (pure): the oldest valid one; the others conflict."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .spec.common import SpecError
from .spec.prefetchpolicy import PrefetchPolicySpec, parse_prefetchpolicy


@dataclass(frozen=True)
class Selection:
    """The policy in force (name and parsed spec) and the other valid policies that target the same ShardSet."""

    name: str | None = None
    spec: PrefetchPolicySpec | None = None
    conflicting: tuple[str, ...] = field(default_factory=tuple)


def _age_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    # RFC 3339 UTC timestamps at second precision sort as strings; the name breaks ties deterministically.
    return (str(meta.get("creationTimestamp") or ""), str(meta["name"]))


def select_policy(policies: Iterable[Mapping[str, Any]], shardset: str) -> Selection:
    """The oldest valid, not-deleting PrefetchPolicy whose ``spec.shardSetRef.name`` is ``shardset``."""
    valid: list[tuple[tuple[str, str], str, PrefetchPolicySpec]] = []
    for obj in policies:
        if obj["metadata"].get("deletionTimestamp"):
            continue
        ref = ((obj.get("spec") or {}).get("shardSetRef") or {}).get("name")
        if ref != shardset:
            continue
        try:
            parsed = parse_prefetchpolicy(obj.get("spec"))
        except SpecError:
            continue  # an invalid policy never takes effect; its own status says why
        valid.append((_age_key(obj), obj["metadata"]["name"], parsed))
    if not valid:
        return Selection()
    valid.sort(key=lambda v: v[0])
    return Selection(valid[0][1], valid[0][2], tuple(v[1] for v in valid[1:]))
