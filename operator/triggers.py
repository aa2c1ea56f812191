"""Wake-ups for per-object reconcile loops ("enqueue the owner" when a child changes)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any


class Triggers:
    """One asyncio.Event per (kind, namespace, name); firing an unknown key is a harmless no-op."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str, str], asyncio.Event] = {}

    def event(self, kind: str, namespace: str, name: str) -> asyncio.Event:
        """The event a reconcile loop waits on (created on first use)."""
        return self._events.setdefault((kind, namespace, name), asyncio.Event())

    def fire(self, kind: str, namespace: str, name: str) -> None:
        """Wake the loop of that object, if one is running."""
        ev = self._events.get((kind, namespace, name))
        if ev is not None:
            ev.set()

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """Drop the event once the object's loop has ended."""
        self._events.pop((kind, namespace, name), None)

    def fire_owner(self, child: Mapping[str, Any]) -> str | None:
        """Wake the loop of ``child``'s chronoshard.io controller owner; returns the owner's kind if any."""
        meta = child.get("metadata") or {}
        for ref in meta.get("ownerReferences") or []:
            if str(ref.get("apiVersion", "")).startswith("chronoshard.io/") and ref.get("controller"):
                self.fire(ref["kind"], meta.get("namespace", ""), ref["name"])
                return str(ref["kind"])
        return None


async def wait_for_trigger(event: asyncio.Event, stopped: Any, timeout: float) -> None:
    """Sleep until ``event`` fires, the daemon is asked to stop, or ``timeout`` passes."""
    waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


TRIGGERS = Triggers()
