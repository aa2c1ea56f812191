"""Which WeavePlan is in force for a ShardSet (pure): the oldest valid one; the others conflict.

A shard pod runs one weaver, so at most one plan can configure it; the rule is the ShadowPolicy's
(``shadowselect``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .spec.common import SpecError
from .spec.weaveplan import WeavePlanSpec, parse_weaveplan


@dataclass(frozen=True)
class WeaveSelection:
    """The plan in force (name and parsed spec) and the other valid plans that target the same ShardSet."""

    name: str | None = None
    spec: WeavePlanSpec | None = None
    conflicting: tuple[str, ...] = field(default_factory=tuple)


def _age_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    # RFC 3339 UTC timestamps at second precision sort as strings; the name breaks ties deterministically.
    return (str(meta.get("creationTimestamp") or ""), str(meta["name"]))


def select_weave_plan(plans: Iterable[Mapping[str, Any]], shardset: str) -> WeaveSelection:
    """The oldest valid, not-deleting WeavePlan whose ``spec.shardSetRef.name`` is ``shardset``."""
    valid: list[tuple[tuple[str, str], str, WeavePlanSpec]] = []
    for obj in plans:
        if obj["metadata"].get("deletionTimestamp"):
            continue
        if ((obj.get("spec") or {}).get("shardSetRef") or {}).get("name") != shardset:
            continue
        try:
            parsed = parse_weaveplan(obj.get("spec"))
        except SpecError:
            continue  # an invalid plan never takes effect; its own status says why
        valid.append((_age_key(obj), obj["metadata"]["name"], parsed))
    if not valid:
        return WeaveSelection()
    valid.sort(key=lambda v: v[0])
    return WeaveSelection(valid[0][1], valid[0][2], tuple(v[1] for v in valid[1:]))
