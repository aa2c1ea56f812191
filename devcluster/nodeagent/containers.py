"""Containers of the pods the agent runs: start, watch, probe, restart and stop them (one pod at a time).

The agent's loop calls ``ContainerRuntime`` for each pod it owns; everything here works on the agent's
in-memory ``PodRun``/``ContainerRun`` records and the per-pod state directory, and reports through the
``emit`` (events) and ``wake`` (probe result changed) callbacks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .env import EnvError, Lookup, command_line, container_env, mount_map, rewrite_paths
from .node import now_rfc3339
from .podstatus import ContainerView
from .probes import ProbeError, ProbeWorker, parse_probe
from .process import ProcessRecord, launch
from .restart import Backoff, should_restart

HOST_IP = "127.0.0.1"

CLOCK_OFFSET_ENV = "CHRONOSHARD_CLOCK_OFFSET_FILE"  # the data plane's test clock seam (not imported: layering)
Emit = Callable[[dict[str, Any], str, str, str], None]


def base_env(pod_name: str) -> dict[str, str]:
    """The "image" environment every container starts from: PATH with this venv's bin first, HOSTNAME."""
    venv_bin = str(Path(sys.executable).parent)
    env = {
        "PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOSTNAME": pod_name,
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        # Our Dockerfile's image runs Python unbuffered; do the same so logs appear as they happen.
        "PYTHONUNBUFFERED": "1",
    }
    # The test clock (shardnode/serving/clock.py): e2e tests that start the agent with it move every container's
    # housekeeping clock forward; a real kubelet has no such thing.
    if os.environ.get(CLOCK_OFFSET_ENV):
        env[CLOCK_OFFSET_ENV] = os.environ[CLOCK_OFFSET_ENV]
    return env


@dataclass
class ContainerRun:
    """The agent's mutable knowledge of one container."""

    spec: dict[str, Any]
    view: ContainerView
    runs: int = 0  # how many times it was started (restartCount = runs - 1)
    record: ProcessRecord | None = None
    popen: subprocess.Popen[bytes] | None = None
    started_mono: float = 0.0
    next_start: float = 0.0
    backoff: Backoff = field(default_factory=Backoff)
    killing_until: float | None = None
    killed_hard: bool = False
    adopted: bool = False  # the process was started by an earlier agent
    probes: dict[str, ProbeWorker] = field(default_factory=dict)
    last_event: str = ""


@dataclass
class PodRun:
    """The agent's mutable knowledge of one pod it runs."""

    uid: str
    namespace: str
    name: str
    ip: str
    directory: Path
    start_time: str
    grace: float = 30.0
    containers: dict[str, ContainerRun] = field(default_factory=dict)
    adopted: dict[str, tuple[ProcessRecord | None, dict[str, Any]]] = field(default_factory=dict)
    volume_dirs: dict[str, str] = field(default_factory=dict)
    volume_hashes: dict[str, str] = field(default_factory=dict)
    conditions: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_status: dict[str, Any] | None = None
    last_event: str = ""
    stop_requested: float | None = None
    termed: set[int] = field(default_factory=set)  # PIDs already sent SIGTERM for this stop
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)  # audience -> (token, refresh at)
    automount: bool | None = None  # mounts its ServiceAccount's credentials (None: not decided yet)
    kubeconfig: str | None = None  # the kubeconfig with those credentials, for $KUBECONFIG


def live_pod(pod: dict[str, Any], run: PodRun) -> dict[str, Any]:
    """The pod with the IPs the agent gave it, for the downward API (before our status reaches the cache)."""
    return {**pod, "status": {**(pod.get("status") or {}), "podIP": run.ip, "hostIP": HOST_IP,
                              "podIPs": [{"ip": run.ip}], "hostIPs": [{"ip": HOST_IP}]}}


class ContainerRuntime:
    """Runs the containers of pods as processes; the agent owns the loop and the API, this owns processes."""

    def __init__(
        self, backoff_base: float, lookup: Callable[[str], Lookup], emit: Emit, wake: Callable[[], None]
    ) -> None:
        self.backoff_base = backoff_base
        self._lookup = lookup
        self._emit_event = emit
        self._wake = wake

    def _emit(self, pod: dict[str, Any], reason: str, message: str, etype: str = "Normal") -> None:
        self._emit_event(pod, reason, message, etype)

    def stop_containers(self, run: PodRun, grace: float) -> bool:
        """SIGTERM every container once, SIGKILL after ``grace``; True once none is running."""
        started = run.stop_requested or time.monotonic()
        records = [cr.record for cr in run.containers.values() if cr.record is not None]
        records += [rec for rec, _ in run.adopted.values() if rec is not None]
        for cr in run.containers.values():
            self.stop_probes(cr)
            if cr.popen is not None:
                cr.popen.poll()
        alive = [rec for rec in records if rec.alive()]
        if not alive:
            for cr in run.containers.values():
                if cr.record is not None:
                    self._finish_run(cr, run)
            return True
        for rec in alive:
            if time.monotonic() - started >= grace:
                rec.kill_group()
            elif rec.pid not in run.termed:
                rec.signal(signal.SIGTERM)
                run.termed.add(rec.pid)
        return False

    def container_run(self, run: PodRun, cspec: dict[str, Any]) -> ContainerRun:
        name = cspec["name"]
        cr = run.containers.get(name)
        if cr is None:
            cr = ContainerRun(spec=cspec, view=ContainerView(name=name, image=cspec.get("image", "")))
            record, last = run.adopted.pop(name, (None, {}))
            if last:
                cr.runs = int(last.get("runs", 0))
                cr.view.restart_count = max(0, cr.runs - 1)
                cr.view.last_terminated = last.get("lastTerminated")
                if last.get("terminated"):
                    cr.view.terminated, cr.view.waiting_reason = last["terminated"], None
            if record is not None:
                cr.record = record
                cr.runs = max(cr.runs, record.restart_count + 1)
                cr.view.restart_count = record.restart_count
                cr.view.running_since = record.started_at
                cr.view.waiting_reason = None
                cr.view.container_id = f"process://{record.pid}"
                cr.started_mono = time.monotonic()
                cr.adopted = True
            run.containers[name] = cr
        cr.spec = cspec
        return cr

    def set_waiting(self, run: PodRun, pod: dict[str, Any], reason: str, message: str, event: str = "Failed") -> None:
        for cspec in [*(pod["spec"].get("initContainers") or []), *pod["spec"].get("containers", [])]:
            cr = self.container_run(run, cspec)
            if cr.record is None and cr.view.terminated is None:
                cr.view.waiting_reason, cr.view.waiting_message = reason, message
        if run.last_event != message:
            run.last_event = message
            self._emit(pod, event, message, "Warning")

    def sync_container(self, pod: dict[str, Any], run: PodRun, cspec: dict[str, Any]) -> None:
        cr = self.container_run(run, cspec)
        now = time.monotonic()
        if cr.popen is not None:
            cr.popen.poll()  # reap a finished shim so it is not left a zombie
        if cr.record is not None and cr.record.alive():
            self._sync_running(pod, run, cr, now)
            return
        if cr.record is not None:
            self._finish_run(cr, run)
            exit_code = int((cr.view.terminated or {}).get("exitCode", 1))
            if should_restart(pod["spec"].get("restartPolicy", "Always"), exit_code):
                cr.backoff.base = self.backoff_base
                cr.next_start = now + cr.backoff.next_delay(ran_for=now - cr.started_mono)
                cr.view.last_terminated, cr.view.terminated = cr.view.terminated, None
                self._save_last(run, cr)
            else:
                self._save_last(run, cr)
                return
        if cr.view.terminated is not None:
            return  # finished for good (restartPolicy says so)
        if now < cr.next_start:
            # kubelet's wording; no countdown in it, or every second would be a status write.
            cr.view.waiting_reason = "CrashLoopBackOff"
            cr.view.waiting_message = (
                f"back-off {cr.backoff.last:g}s restarting failed container={cr.view.name} "
                f"pod={run.name}_{run.namespace}({run.uid})"
            )
            return
        self._start(pod, run, cr)

    def _sync_running(self, pod: dict[str, Any], run: PodRun, cr: ContainerRun, now: float) -> None:
        assert cr.record is not None
        if cr.killing_until is not None:
            if now >= cr.killing_until and not cr.killed_hard:
                cr.record.kill_group()
                cr.killed_hard = True
            return
        if not cr.probes:
            self._start_probes(run, cr, adopted=cr.adopted)
        startup = cr.probes.get("startup")
        liveness = cr.probes.get("liveness")
        readiness = cr.probes.get("readiness")
        failed = None
        if startup is not None and not startup.result and startup.state.failed:
            failed = "Startup"
        elif liveness is not None and not liveness.result:
            failed = "Liveness"
        if failed:
            message = f"Container {cr.view.name} failed {failed.lower()} probe, will be restarted"
            self._emit(pod, "Unhealthy", f"{failed} probe failed", "Warning")
            self._emit(pod, "Killing", message)
            grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
            self.stop_probes(cr)
            cr.record.signal(signal.SIGTERM)
            cr.killing_until = now + grace
            return
        if startup is not None and startup.result and startup is not _NO_PROBE:
            # Like kubelet: the startup probe stops once it succeeded; liveness and readiness start then.
            startup.stop()
            cr.probes["startup"] = _NO_PROBE
            self._start_probes(run, cr, adopted=False, after_startup=True)
            readiness = cr.probes.get("readiness")
        cr.view.started = startup is None or startup.result
        cr.view.ready = cr.view.started and (readiness is None or readiness.result)

    def sync_init(self, pod: dict[str, Any], run: PodRun) -> bool:
        """Run the init containers one after another; True once every one has exited 0 (they never run again)."""
        policy = pod["spec"].get("restartPolicy", "Always")
        for cspec in pod["spec"].get("initContainers") or []:
            cr = self.container_run(run, cspec)
            if cspec.get("restartPolicy") == "Always":
                # A sidecar would block this sequence forever; say so instead of hanging.
                cr.view.waiting_reason = "CreateContainerConfigError"
                cr.view.waiting_message = (
                    "sidecar containers (init containers with restartPolicy Always) are not supported"
                )
                return False
            if cr.popen is not None:
                cr.popen.poll()
            if cr.record is None and (cr.view.terminated or {}).get("exitCode") == 0:
                continue
            now = time.monotonic()
            if cr.record is not None and cr.record.alive():
                return False
            if cr.record is not None:
                self._finish_run(cr, run)
                code = int((cr.view.terminated or {}).get("exitCode", 1))
                if code == 0:
                    self._save_last(run, cr)
                    continue
                if policy != "Never":
                    # A failed init container is retried with back-off unless the pod never restarts.
                    cr.backoff.base = self.backoff_base
                    cr.next_start = now + cr.backoff.next_delay(ran_for=now - cr.started_mono)
                    cr.view.last_terminated, cr.view.terminated = cr.view.terminated, None
                self._save_last(run, cr)
            if cr.view.terminated is not None:
                return False  # failed, and restartPolicy Never: the pod has failed
            if now < cr.next_start:
                cr.view.waiting_reason = "CrashLoopBackOff"
                cr.view.waiting_message = (
                    f"back-off {cr.backoff.last:g}s restarting failed container={cr.view.name} "
                    f"pod={run.name}_{run.namespace}({run.uid})"
                )
                return False
            self._start(pod, run, cr)
            return False
        return True

    def _finish_run(self, cr: ContainerRun, run: PodRun) -> None:
        """Turn a run whose process ended into a terminated state with its exit code."""
        record = cr.record
        if record is None:
            return
        info = record.exit_info()
        if info is None:
            # No exit file: the shim itself was SIGKILLed (grace expired) or vanished with the machine.
            info = {"exitCode": 137, "reason": "Error" if cr.killed_hard or cr.killing_until else "Unknown",
                    "finishedAt": now_rfc3339()}
        terminated: dict[str, Any] = {
            "exitCode": _record_int(info.get("exitCode"), 137),
            "reason": str(info.get("reason", "Error")),
            "startedAt": record.started_at,
            "finishedAt": str(info.get("finishedAt") or now_rfc3339()),
            "containerID": f"process://{record.pid}",
        }
        if info.get("signal"):
            terminated["signal"] = _record_int(info["signal"], 0)
        if info.get("message"):
            terminated["message"] = str(info["message"])
        self.stop_probes(cr)
        cr.view.running_since = None
        cr.view.terminated = terminated
        cr.view.waiting_reason = None
        cr.view.ready = cr.view.started = False
        cr.record, cr.popen, cr.killing_until, cr.killed_hard = None, None, None, False
        (run.directory / "containers" / f"{cr.view.name}.json").unlink(missing_ok=True)

    def _save_last(self, run: PodRun, cr: ContainerRun) -> None:
        cdir = run.directory / "containers"
        cdir.mkdir(parents=True, exist_ok=True)
        # "terminated" is a final state (restartPolicy said no restart): a restarted agent must not run it again.
        last = {"runs": cr.runs, "lastTerminated": cr.view.last_terminated, "terminated": cr.view.terminated}
        (cdir / f"{cr.view.name}.last.json").write_text(json.dumps(last))


    def _start(self, pod: dict[str, Any], run: PodRun, cr: ContainerRun) -> None:
        downward = live_pod(pod, run)
        try:
            base = base_env(run.name)
            mounts = mount_map(cr.spec, run.volume_dirs)
            env = container_env(downward, cr.spec, self._lookup(run.namespace), base)
            # Declared values may name mount paths (e.g. KEYRING=/etc/chronoshard/keyring): map them too.
            env = {k: (v if base.get(k) == v else rewrite_paths(v, mounts)) for k, v in env.items()}
            if run.kubeconfig and "KUBECONFIG" not in env:
                # In-cluster loaders read a path a process cannot see; every client falls back to $KUBECONFIG.
                env["KUBECONFIG"] = run.kubeconfig
            if "/tmp" in mounts and "TMPDIR" not in env:
                # A volume at /tmp is where the container's temporary files go; tempfile & co. honour TMPDIR.
                env["TMPDIR"] = mounts["/tmp"]
            argv = command_line(cr.spec, env, mounts)
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if probe in cr.spec:
                    parse_probe(cr.spec[probe], cr.spec, run.ip)
        except (EnvError, ProbeError) as exc:
            cr.view.waiting_reason, cr.view.waiting_message = "CreateContainerConfigError", str(exc)
            if cr.last_event != str(exc):
                cr.last_event = str(exc)
                self._emit(pod, "Failed", f"Error: {exc}", "Warning")
            return
        cwd = self._working_dir(run, cr, mounts)
        attempt = cr.runs
        record, popen = launch(
            argv, env, cwd,
            log_file=run.directory / "logs" / cr.view.name / f"{attempt}.log",
            exit_file=run.directory / "exits" / f"{cr.view.name}-{attempt}.json",
            restart_count=attempt, started_at=now_rfc3339(),
        )
        (run.directory / "containers").mkdir(parents=True, exist_ok=True)
        record.save(run.directory / "containers" / f"{cr.view.name}.json")
        cr.record, cr.popen, cr.runs, cr.adopted = record, popen, attempt + 1, False
        cr.started_mono = time.monotonic()
        cr.view.restart_count = attempt
        cr.view.running_since = record.started_at
        cr.view.waiting_reason = cr.view.waiting_message = None
        cr.view.terminated = None
        cr.view.container_id = f"process://{record.pid}"
        cr.view.ready = cr.view.started = False
        cr.last_event = ""
        self._save_last(run, cr)
        self._emit(pod, "Started", f"Started container {cr.view.name} (pid {record.pid})")

    def _working_dir(self, run: PodRun, cr: ContainerRun, mounts: dict[str, str]) -> str:
        wanted = cr.spec.get("workingDir")
        if wanted:
            mapped = rewrite_paths(wanted, mounts)
            if mapped != wanted:
                return mapped
            # Not under a mount: the image's filesystem, which we do not have; give the path a home in the pod dir.
            path = run.directory / "rootfs" / cr.view.name / wanted.lstrip("/")
        else:
            path = run.directory / "rootfs" / cr.view.name
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def _start_probes(self, run: PodRun, cr: ContainerRun, adopted: bool, after_startup: bool = False) -> None:
        kinds = ["livenessProbe", "readinessProbe"] if after_startup else ["startupProbe"]
        if not after_startup and "startupProbe" not in cr.spec:
            kinds = ["livenessProbe", "readinessProbe"]
        for kind in kinds:
            if kind not in cr.spec:
                continue
            spec = parse_probe(cr.spec[kind], cr.spec, run.ip)
            if adopted:
                # The process has been running for a while; its initial delay has long passed.
                spec = type(spec)(**{**spec.__dict__, "initial_delay": 0.0})
            initial = kind == "livenessProbe"  # liveness starts as success, readiness/startup as failure
            cr.probes[kind.removesuffix("Probe")] = ProbeWorker(spec, initial, lambda _r: self._wake()).start()
        if not cr.probes:
            cr.probes["none"] = _NO_PROBE

    def stop_probes(self, cr: ContainerRun) -> None:
        for worker in cr.probes.values():
            worker.stop()
        cr.probes = {}


class _NoProbe:
    """Placeholder so a container without probes is not re-examined for probes on every pass."""

    result = True

    def stop(self) -> None:
        """Nothing to stop."""


_NO_PROBE: Any = _NoProbe()


def _record_int(value: object, default: int) -> int:
    """A number from the shim's JSON exit record; ``default`` when the field is missing or not a number."""
    if isinstance(value, int | float | str):
        try:
            return int(value)
        except ValueError:
            return default
    return default
