"""Find a ShardSet's shard pods by shard index, and read what their config ConfigMap carries (API I/O only); the
probes of every controller ask these pods."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from . import kube, naming

_ORDINAL = re.compile(r"-(\d+)$")


def shard_pods(namespace: str, shardset: str) -> dict[int, dict[str, Any]]:
    """The ShardSet's pods by shard index (the StatefulSet ordinal), skipping pods being deleted."""
    selector = ",".join(f"{k}={v}" for k, v in naming.selector_labels(shardset).items())
    pods: dict[int, dict[str, Any]] = {}
    for pod in kube.list_objects("v1", "Pod", namespace, selector):
        m = _ORDINAL.search(pod["metadata"]["name"])
        if m and not pod["metadata"].get("deletionTimestamp"):
            pods[int(m.group(1))] = pod
    return pods


def member_pods(members: Iterable[tuple[str, str]]) -> dict[str, dict[int, dict[str, Any]]]:
    """The shard pods of other ShardSets (``(namespace, name)``, e.g. a MirrorSet's mirror members), keyed by
    ``namespace/name``: a key rotation of the active member also asks their nodes."""
    return {f"{ns}/{name}": shard_pods(ns, name) for ns, name in members}



def config_file_applied(namespace: str, shardset: str, filename: str, wanted: Mapping[str, Any]) -> bool:
    """True when the ShardSet's config ConfigMap carries exactly ``wanted`` as ``filename`` (a policy's json)."""
    cm = kube.get("v1", "ConfigMap", namespace, naming.config_map_name(shardset))
    raw = ((cm or {}).get("data") or {}).get(filename)
    if raw is None:
        return False
    try:
        return bool(json.loads(raw) == wanted)
    except ValueError:
        return False
