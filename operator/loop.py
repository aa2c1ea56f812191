"""The per-object reconcile loop every controller's Kopf daemon runs.

A loop takes a fresh snapshot of its object, runs one pass, and sleeps until the pass's delay passes, its
object (or a child) changes, or the daemon is stopped. API errors end the pass, not the loop: they are
counted, shown as a ``ReconcileError`` event (a 409 conflict only means "read again" and is not shown)
and retried after a short delay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from . import kube, naming
from .metrics import observe_reconcile, record_error, set_managed
from .triggers import TRIGGERS, wait_for_trigger

log = logging.getLogger(__name__)

# Objects whose loop runs in this operator process, by kind (the managed-objects gauge).
_RUNNING: dict[str, set[tuple[str, str]]] = {}
API_ERROR_RETRY_SECONDS = 1.0

OnePass = Callable[[dict[str, Any]], Awaitable[tuple[str, float]]]


def namespace_of(kind: str, name: str, namespace: str | None) -> str:
    """The namespace Kopf passed a handler: Kopf types it optional (cluster-scoped kinds), ours are all namespaced."""
    if namespace is None:
        raise kopf.PermanentError(f"{kind} {name} has no namespace, but every chronoshard kind is namespaced")
    return namespace


def snapshot(body: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """A plain copy of the live body that one pass can use without it changing underneath."""
    return {
        "apiVersion": body.get("apiVersion", naming.API_VERSION),
        "kind": kind,
        "metadata": dict(body["metadata"]),
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


async def run_object_loop(kind: str, namespace: str, name: str, body: kopf.Body, stopped: kopf.DaemonStopped,
                          one_pass: OnePass) -> None:
    """Run ``one_pass(snapshot) -> (outcome, delay_seconds)`` until the object goes away or the daemon stops."""
    wake = TRIGGERS.event(kind, namespace, name)
    running = _RUNNING.setdefault(kind, set())
    running.add((namespace, name))
    set_managed(kind, len(running))
    try:
        while not stopped:
            wake.clear()
            snap = snapshot(body, kind)
            if snap["metadata"].get("deletionTimestamp"):
                return
            started = time.monotonic()
            try:
                outcome, delay = await one_pass(snap)
                observe_reconcile(kind, outcome, time.monotonic() - started)
            except ApiException as exc:
                message = kube.api_error_message(exc)
                observe_reconcile(kind, "error", time.monotonic() - started)
                record_error(kind, f"api-{exc.status}")
                if exc.status != 409:
                    kopf.warn(body, reason="ReconcileError", message=f"Kubernetes API error {exc.status}: {message}")
                log.warning("%s %s/%s: API error %s: %s", kind, namespace, name, exc.status, message)
                delay = API_ERROR_RETRY_SECONDS
            if delay > 0:
                await wait_for_trigger(wake, stopped, delay)
    finally:
        TRIGGERS.forget(kind, namespace, name)
        running.discard((namespace, name))
        set_managed(kind, len(running))


def post_events(body: Any, events: list[tuple[str, str, str]]) -> None:
    """Post ``(type, reason, message)`` events on ``body`` through Kopf."""
    for type_, reason, message in events:
        (kopf.warn if type_ == "Warning" else kopf.info)(body, reason=reason, message=message)


StatusKey = Callable[[Mapping[str, Any]], Any]


async def until_seen(body: kopf.Body, status: Mapping[str, Any], key: StatusKey, timeout: float = 5.0) -> None:
    """Wait (at most ``timeout``) until Kopf's live body shows the status we just wrote, compared by ``key``.

    The body lags until our write's watch event arrives; a pass woken before that would start from the status before
    it and repeat a step that is not idempotent across phases (a rotation picking the next version twice, a
    Reversion planning again, a Reshard repeating its step's last phase).
    """
    want = key(status)
    deadline = asyncio.get_running_loop().time() + timeout
    while key(body.get("status") or {}) != want:
        if asyncio.get_running_loop().time() > deadline:
            log.warning("status write not seen in the watch after %ss; continuing", timeout)
            return
        await asyncio.sleep(0.05)
