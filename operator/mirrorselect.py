"""Which MirrorSet a ShardSet belongs to (pure): the oldest valid one naming it as source or mirror; the others
conflict.

A ShardSet belongs to at most one MirrorSet (docs/mirroring.md): its pods follow one primary, trust one set of
peers and carry one term. MirrorSets live in any namespace, so the caller passes every MirrorSet of the cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .spec.common import SpecError
from .spec.mirrorset import MirrorSetSpec, parse_mirrorset


@dataclass(frozen=True, order=True)
class MemberRef:
    """One member ShardSet of a MirrorSet."""

    namespace: str
    name: str

    @property
    def key(self) -> str:
        """``namespace/name``, as the MirrorSet status writes it."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class MirrorMembership:
    """The MirrorSet a ShardSet belongs to (none: every field empty) and the other valid ones naming it."""

    namespace: str | None = None
    name: str | None = None
    spec: MirrorSetSpec | None = None
    members: tuple[MemberRef, ...] = ()  # the source first, then the mirrors in spec order
    active: MemberRef | None = None  # whose nodes are primary: status.activeShardSet, else the source
    conflicting: tuple[str, ...] = field(default_factory=tuple)  # "namespace/name" of the other MirrorSets

    @property
    def is_member(self) -> bool:
        """True when the ShardSet belongs to a MirrorSet."""
        return self.spec is not None

    def peers(self, namespace: str, shardset: str) -> tuple[MemberRef, ...]:
        """The members other than ``namespace/shardset``, in member order."""
        me = MemberRef(namespace, shardset)
        return tuple(m for m in self.members if m != me)

    def zone(self, namespace: str, shardset: str) -> str | None:
        """The topology zone the MirrorSet places ``namespace/shardset`` in (a mirror's ``zone``; None otherwise)."""
        if self.spec is None or self.namespace is None:
            return None
        for m in self.spec.mirrors:
            if MemberRef(self.spec.mirror_namespace(m, self.namespace), m.shardset) == MemberRef(namespace, shardset):
                return m.zone
        return None

    def follows(self, namespace: str, shardset: str) -> bool:
        """True when ``namespace/shardset`` is a member but not the active one (its nodes are mirrors)."""
        me = MemberRef(namespace, shardset)
        return self.is_member and me in self.members and self.active != me


def members_of(namespace: str, spec: MirrorSetSpec) -> tuple[MemberRef, ...]:
    """Every member of a MirrorSet living in ``namespace``: the source (same namespace), then each mirror."""
    return (MemberRef(namespace, spec.source),
            *(MemberRef(spec.mirror_namespace(m, namespace), m.shardset) for m in spec.mirrors))


def active_member(obj: Mapping[str, Any], members: tuple[MemberRef, ...]) -> MemberRef:
    """The member named by ``status.activeShardSet`` when it is one; the source before the first pass wrote it."""
    active = str((obj.get("status") or {}).get("activeShardSet") or "")
    for m in members:
        if m.key == active:
            return m
    return members[0]


def _age_key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    # RFC 3339 UTC timestamps at second precision sort as strings; namespace and name break ties deterministically.
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("namespace") or ""), str(meta["name"]))


def select_mirrorset(mirrorsets: Iterable[Mapping[str, Any]], namespace: str, shardset: str) -> MirrorMembership:
    """The oldest valid, not-deleting MirrorSet with ``namespace/shardset`` among its members."""
    me = MemberRef(namespace, shardset)
    valid: list[tuple[tuple[str, str, str], Mapping[str, Any], MirrorSetSpec, tuple[MemberRef, ...]]] = []
    for obj in mirrorsets:
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            continue
        try:
            parsed = parse_mirrorset(obj.get("spec"))
        except SpecError:
            continue  # an invalid MirrorSet never takes effect; its own status says why
        members = members_of(str(meta.get("namespace") or ""), parsed)
        if me in members:
            valid.append((_age_key(obj), obj, parsed, members))
    if not valid:
        return MirrorMembership()
    valid.sort(key=lambda v: v[0])
    _, obj, parsed, members = valid[0]
    return MirrorMembership(
        namespace=str(obj["metadata"].get("namespace") or ""), name=str(obj["metadata"]["name"]), spec=parsed,
        members=members, active=active_member(obj, members),
        conflicting=tuple(f"{v[1]['metadata'].get('namespace')}/{v[1]['metadata']['name']}" for v in valid[1:]))
