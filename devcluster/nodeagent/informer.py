"""List+watch caches of Kubernetes objects as plain dicts (camelCase, as the API serves them)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

Key = tuple[str, str]


class Informer:
    """Keeps {(namespace, name): object} current for one resource across all namespaces.

    ``list_fn`` is a kubernetes client list function (e.g. ``CoreV1Api.list_pod_for_all_namespaces``);
    ``on_change`` is called (from the informer's thread) after every change, with the object.
    """

    def __init__(self, kind: str, list_fn: Callable[..., Any], on_change: Callable[[str, dict], None]) -> None:
        self.kind = kind
        self._list_fn = list_fn
        self._on_change = on_change
        self._items: dict[Key, dict] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.synced = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"informer-{kind}")

    def start(self) -> Informer:
        """Start listing and watching in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the current watch call returns (at most its timeout)."""
        self._stop.set()

    def get(self, namespace: str, name: str) -> dict | None:
        """The cached object, None if absent."""
        with self._lock:
            return self._items.get((namespace, name))

    def items(self) -> list[dict]:
        """A snapshot of every cached object."""
        with self._lock:
            return list(self._items.values())

    @staticmethod
    def _key(obj: dict) -> Key:
        meta = obj.get("metadata", {})
        return meta.get("namespace", ""), meta["name"]

    def _relist(self) -> str:
        resp = self._list_fn(_preload_content=False, _request_timeout=30)
        body = json.loads(resp.data)
        fresh = {self._key(o): o for o in body.get("items", [])}
        with self._lock:
            gone = [o for k, o in self._items.items() if k not in fresh]
            self._items = fresh
        for obj in gone:
            self._on_change("DELETED", obj)
        for obj in fresh.values():
            self._on_change("SYNC", obj)
        self.synced.set()
        return str(body["metadata"]["resourceVersion"])

    def _run(self) -> None:
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._relist()
                stream = watch.Watch().stream(
                    self._list_fn, resource_version=rv, timeout_seconds=30, allow_watch_bookmarks=True
                )
                for event in stream:
                    obj = event["raw_object"]
                    kind = event["type"]
                    if kind == "ERROR":
                        # 410 Gone: our resourceVersion is too old; start over from a fresh list.
                        rv = None
                        break
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if kind == "BOOKMARK":
                        continue
                    key = self._key(obj)
                    with self._lock:
                        if kind == "DELETED":
                            self._items.pop(key, None)
                        else:
                            self._items[key] = obj
                    self._on_change(kind, obj)
                    if self._stop.is_set():
                        return
            except ApiException as exc:
                if exc.status == 410:
                    rv = None
                else:
                    log.warning("%s watch failed: %s", self.kind, exc.reason)
                    rv = None
                    time.sleep(1)
            except Exception as exc:
                log.warning("%s watch interrupted: %s", self.kind, exc)
                rv = None
                time.sleep(1)
