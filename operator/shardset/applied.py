"""Skip a server-side apply that cannot change anything (API I/O only).

Every pass of a ShardSet applies about ten children. When the manifest is the one this process last applied to
a child, and the watch on children has since reported that child at exactly the resourceVersion that apply
returned, nobody has touched it since: the apply would be a no-op, so it is not sent. Anything else applies as
before: a different manifest, a child changed or deleted by anyone (the watch reports another version or a
deletion), a child not watched, a process that has not seen the watch report yet (a pass right after a start,
or passes driven by hand without the operator's watches), or one whose watch fell behind. A change the watch has
not delivered yet is not lost: its event wakes the owner for another pass, which then applies.

A thousand ShardSets resyncing every 30 s sent about 300 applies a second that changed nothing; the API server
spent its CPU on them instead of on ShardSets that were still being created.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from typing import Any

from .. import kube

Key = tuple[str, str, str, str]  # apiVersion, kind, namespace, name


def _key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(obj.get("apiVersion", "")), str(obj.get("kind", "")), str(meta.get("namespace", "")), \
        str(meta.get("name", ""))


def _digest(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class AppliedChildren:
    """What this process last applied to each child (manifest digest, returned resourceVersion) and the
    resourceVersion the watch last reported for it. Passes run in threads, watch events on the event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._applied: dict[Key, tuple[str, str]] = {}
        self._seen: dict[Key, str] = {}

    def apply(self, obj: Mapping[str, Any], always: bool = False) -> dict[str, Any] | None:
        """Server-side apply ``obj`` (as ``kube.apply``) unless it is unchanged since our last apply of it
        (``always``: send it regardless, e.g. when a read just found the child missing); returns the live
        object, or None when the apply was skipped."""
        key, digest = _key(obj), _digest(obj)
        with self._lock:
            applied = self._applied.get(key)
            if (not always and applied is not None and applied[0] == digest
                    and self._seen.get(key) == applied[1]):
                return None
        live = kube.apply(obj)
        version = str((live.get("metadata") or {}).get("resourceVersion", ""))
        with self._lock:
            self._applied[key] = (digest, version)
        return live

    def observed(self, body: Mapping[str, Any], event_type: str | None) -> None:
        """A watch event of a child: remember the version it reported, or forget a deleted child."""
        key = _key(body)
        with self._lock:
            if event_type == "DELETED":
                self._seen.pop(key, None)
                self._applied.pop(key, None)
            else:
                self._seen[key] = str((body.get("metadata") or {}).get("resourceVersion", ""))

    def forget_all(self) -> None:
        """Drop everything (tests that restart the operator in one process)."""
        with self._lock:
            self._seen.clear()
            self._applied.clear()


APPLIED = AppliedChildren()
