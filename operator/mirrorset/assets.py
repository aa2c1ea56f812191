"""Keys in step across a MirrorSet: every member's keyring Secret and KEK Secret hold the active member's data.

A mirror's node stores the frames it receives as the primary sealed them, so it must hold the same key versions
(docs/mirroring.md, "Keys"). Each pass of the MirrorSet controller calls ``copy_keys``: it replaces the data of
every other member's keyring Secret (and the KEK Secret the operator made for it) with the active member's, only
where they differ, keeping each Secret's own metadata (owner, labels, the rotation lock annotation). The decisions
are pure (``keys_wanted``, ``data_patch``); ``copy_keys`` reads and patches. Key material never reaches a log, an
event, a status or an error: only Secret names do.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from .. import kube, naming
from ..keyring import KEK_FILE
from ..spec.common import SpecError
from ..spec.shardset import ShardSetSpec, parse_shardset

log = logging.getLogger(__name__)
Ref = tuple[str, str]  # (namespace, ShardSet name)


@dataclass(frozen=True)
class KeySecrets:
    """The Secrets a member's pods mount for keys: its keyring, and its KEK (None with provider none); ``user_kek``
    when the KEK is the user's own Secret (spec.keyEncryption.kekSecretRef), which the operator only reads."""

    keyring: str
    kek: str | None
    user_kek: bool = False


def key_secrets(shardset: str, spec: ShardSetSpec) -> KeySecrets:
    """The key Secrets of ``shardset`` (the same names the ShardSet controller gives them)."""
    ke = spec.key_encryption
    if not ke.wrapped:
        return KeySecrets(naming.keyring_secret_name(shardset), None)
    if ke.kek_secret is not None:
        return KeySecrets(naming.keyring_secret_name(shardset), ke.kek_secret, user_kek=True)
    return KeySecrets(naming.keyring_secret_name(shardset), naming.kek_secret_name(shardset))


def data_patch(source: Mapping[str, str], target: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch that makes ``target``'s data equal to ``source`` (keys it lacks removed), guarded by its
    resourceVersion; None when they are already equal."""
    current = dict(target.get("data") or {})
    if current == dict(source):
        return None
    return {"metadata": {"resourceVersion": target["metadata"]["resourceVersion"]},
            "data": {**{k: None for k in current if k not in source}, **source}}


@dataclass
class KeySync:
    """What one ``copy_keys`` did: Secrets written (``namespace/name``) and why a member was left as it is."""

    copied: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Member:
    ref: Ref
    secrets: KeySecrets


def _member(ref: Ref, sync: KeySync) -> _Member | None:
    ss = kube.get(naming.API_VERSION, "ShardSet", ref[0], ref[1])
    if ss is None:
        sync.problems.append(f"ShardSet {ref[0]}/{ref[1]} does not exist")
        return None
    try:
        spec = parse_shardset(ss.get("spec") or {})
    except SpecError:
        sync.problems.append(f"ShardSet {ref[0]}/{ref[1]} has an invalid spec")
        return None
    return _Member(ref, key_secrets(ref[1], spec))


def _data(namespace: str, name: str | None) -> tuple[dict[str, Any] | None, dict[str, str]]:
    if name is None:
        return None, {}
    secret = kube.get("v1", "Secret", namespace, name)
    return secret, dict((secret or {}).get("data") or {})


def _write(namespace: str, secret: Mapping[str, Any], source: Mapping[str, str], sync: KeySync) -> None:
    patch = data_patch(source, secret)
    if patch is None:
        return
    name = secret["metadata"]["name"]
    try:
        kube.merge_patch("v1", "Secret", namespace, name, patch)
    except ApiException as exc:
        # 409: changed since read (a KeyRotation, the ShardSet controller): the next pass copies again.
        sync.problems.append(f"Secret {namespace}/{name} not written (HTTP {exc.status}); retried next pass")
        return
    sync.copied.append(f"{namespace}/{name}")
    log.info("Secret %s/%s now holds the active member's key data", namespace, name)


def _copy_to(active: _Member, keyring: Mapping[str, str], kek: Mapping[str, str], other: _Member,
             sync: KeySync) -> None:
    ns = other.ref[0]
    who = f"{ns}/{other.ref[1]}"
    target_keyring, _ = _data(ns, other.secrets.keyring)
    target_kek, target_kek_data = _data(ns, other.secrets.kek)
    if target_keyring is None:
        sync.problems.append(f"{who}: keyring Secret {other.secrets.keyring} does not exist yet")
        return
    if active.secrets.kek is not None:
        # Wrapped versions unwrap only under the active member's KEK: the member needs that KEK first.
        if other.secrets.kek is None:
            sync.problems.append(f"{who}: spec.keyEncryption.provider is none, but the active member's keyring is "
                                 "wrapped under a KEK; keys not copied")
            return
        if other.secrets.user_kek:
            # The user's Secret is only ever read (GitOps owns it): it must already hold the same KEK.
            if target_kek_data.get(KEK_FILE) != kek.get(KEK_FILE):
                sync.problems.append(f"{who}: its KEK Secret {other.secrets.kek} (kekSecretRef) differs from the "
                                     "active member's; keys not copied until they are equal")
                return
        elif target_kek is None:
            sync.problems.append(f"{who}: KEK Secret {other.secrets.kek} does not exist yet")
            return
        else:
            _write(ns, target_kek, kek, sync)  # first: a keyring must never be mounted before its KEK
    _write(ns, target_keyring, keyring, sync)


def copy_keys(active: Ref, others: Sequence[Ref]) -> KeySync:
    """Make every member in ``others`` hold the keyring and KEK data of ``active`` (only where they differ)."""
    sync = KeySync()
    source = _member(active, sync)
    if source is None:
        return sync
    _, keyring = _data(active[0], source.secrets.keyring)
    kek_secret, kek = _data(active[0], source.secrets.kek)
    if not keyring or (source.secrets.kek is not None and not kek):
        sync.problems.append(f"the active member {active[0]}/{active[1]} has no keyring or KEK yet")
        return sync
    for ref in others:
        other = _member(ref, sync)
        if other is not None:
            _copy_to(source, keyring, kek, other, sync)
    return sync
