"""Pod status from the agent's view of its containers (pure): phase, conditions, container statuses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ContainerView:
    """What the agent knows about one container right now."""

    name: str
    image: str
    restart_count: int = 0
    running_since: str | None = None  # RFC 3339 start time while running
    terminated: dict[str, Any] | None = None  # current terminated state (not restarted yet)
    waiting_reason: str | None = "ContainerCreating"
    waiting_message: str | None = None
    last_terminated: dict[str, Any] | None = None
    ready: bool = False
    started: bool = False
    container_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def container_status(view: ContainerView) -> dict[str, Any]:
    """One ``status.containerStatuses[]`` entry, shaped as kubelet reports it."""
    if view.running_since is not None:
        state: dict[str, Any] = {"running": {"startedAt": view.running_since}}
    elif view.terminated is not None:
        state = {"terminated": dict(view.terminated)}
    else:
        waiting: dict[str, Any] = {"reason": view.waiting_reason or "ContainerCreating"}
        if view.waiting_message:
            waiting["message"] = view.waiting_message
        state = {"waiting": waiting}
    out: dict[str, Any] = {
        "name": view.name,
        "image": view.image,
        "imageID": "",
        "ready": view.ready,
        "started": view.started,
        "restartCount": view.restart_count,
        "state": state,
        "lastState": {"terminated": dict(view.last_terminated)} if view.last_terminated else {},
    }
    if view.container_id:
        out["containerID"] = view.container_id
    return out


def pod_phase(views: list[ContainerView], restart_policy: str) -> str:
    """kubelet's phase rule: Pending until every container ran once, then Running/Succeeded/Failed."""
    never_ran = running = stopped = succeeded = 0
    for v in views:
        if v.running_since is not None:
            running += 1
        elif v.terminated is not None:
            stopped += 1
            succeeded += v.terminated.get("exitCode") == 0
        elif v.last_terminated is not None:
            # Waiting to be restarted: counts as stopped, with the last run's exit code.
            stopped += 1
            succeeded += v.last_terminated.get("exitCode") == 0
        else:
            never_ran += 1
    if never_ran:
        return "Pending"
    if running:
        return "Running"
    if restart_policy == "Always":
        return "Running"
    if stopped == succeeded:
        return "Succeeded"
    return "Running" if restart_policy == "OnFailure" else "Failed"


def conditions(
    views: list[ContainerView],
    phase: str,
    previous: Mapping[str, dict[str, Any]],
    now: str,
    init_views: list[ContainerView] | None = None,
) -> list[dict[str, Any]]:
    """PodScheduled, PodReadyToStartContainers, Initialized, ContainersReady and Ready, keeping transition times."""
    pending_init = [v.name for v in init_views or [] if not _init_done(v)]
    all_ready = bool(views) and all(v.ready for v in views) and phase == "Running"
    wanted = {
        "PodReadyToStartContainers": True,
        "Initialized": not pending_init,
        "ContainersReady": all_ready,
        "Ready": all_ready,
        "PodScheduled": True,
    }
    out = []
    for ctype, ok in wanted.items():
        status = "True" if ok else "False"
        before = previous.get(ctype)
        since = before["lastTransitionTime"] if before and before.get("status") == status else now
        cond: dict[str, Any] = {"type": ctype, "status": status, "lastProbeTime": None, "lastTransitionTime": since}
        if ctype in ("ContainersReady", "Ready", "Initialized"):
            # Explicit nulls: a strategic-merge patch would otherwise keep an earlier False's reason.
            cond["reason"] = cond["message"] = None
        if not ok and ctype == "Initialized":
            cond["reason"] = "ContainersNotInitialized"
            cond["message"] = f"containers with incomplete status: [{' '.join(pending_init)}]"
        if not ok and ctype in ("ContainersReady", "Ready"):
            not_ready = sorted(v.name for v in views if not v.ready)
            cond["reason"] = "ContainersNotReady"
            cond["message"] = f"containers with unready status: [{' '.join(not_ready)}]"
        out.append(cond)
    return out


def _init_done(view: ContainerView) -> bool:
    return view.terminated is not None and view.terminated.get("exitCode") == 0


def init_phase(init_views: list[ContainerView], restart_policy: str) -> str | None:
    """The phase while init containers decide it: Failed (one failed, no restarts) or Pending; None when done."""
    for v in init_views:
        if _init_done(v):
            continue
        if restart_policy == "Never" and v.terminated is not None:
            return "Failed"
        return "Pending"
    return None


def pod_status(
    views: list[ContainerView],
    restart_policy: str,
    pod_ip: str,
    host_ip: str,
    start_time: str,
    previous_conditions: Mapping[str, dict[str, Any]],
    now: str,
    init_views: list[ContainerView] | None = None,
) -> dict[str, Any]:
    """The whole ``status`` the agent writes through the pods/status subresource."""
    phase = init_phase(init_views or [], restart_policy) or pod_phase(views, restart_policy)
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions(views, phase, previous_conditions, now, init_views),
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": start_time,
        "containerStatuses": [container_status(v) for v in views],
    }
    if init_views:
        status["initContainerStatuses"] = [container_status(v) for v in init_views]
    return status
