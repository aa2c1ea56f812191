"""Secrets the operator creates once and never overwrites (keyring, KEK, CA): create without racing another
writer, and adopt one left behind by a deleted ShardSet of the same name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import kube, naming

Events = list[tuple[str, str, str]]  # (type, reason, message)

CREATE_ATTEMPTS = 3  # rounds of create-conflict-read for a Secret another writer deletes under us


def adopt(owner: Mapping[str, Any], secret: Mapping[str, Any], events: Events, what: str, reason: str) -> None:
    """Add our controller ownerReference to an orphaned Secret we made (a ShardSet re-created under the same name)."""
    meta = secret["metadata"]
    refs = meta.get("ownerReferences") or []
    if any(r.get("uid") == owner["metadata"]["uid"] for r in refs):
        return
    if any(r.get("controller") for r in refs):
        raise ValueError(f"Secret {meta['name']} is controlled by another object; not adopting it")
    kube.merge_patch("v1", "Secret", meta["namespace"], meta["name"],
                     {"metadata": {"ownerReferences": [*refs, naming.owner_reference(owner)]}})
    events.append(("Normal", reason, f"Adopted existing {what} Secret {meta['name']}"))


def create_once(manifest: dict[str, Any], events: Events, event: tuple[str, str, str]) -> dict[str, Any]:
    """Create a Secret that must never be overwritten; if another writer won the race, read theirs."""
    meta = manifest["metadata"]
    for _ in range(CREATE_ATTEMPTS):
        created = kube.create(manifest)
        if created is not None:
            events.append(event)
            return created
        existing = kube.get("v1", "Secret", meta["namespace"], meta["name"])
        if existing is not None:
            return existing
        # Deleted between our create and our read: create it again.
    raise RuntimeError(f"Secret {meta['name']} is deleted as soon as it exists; not creating it again")
