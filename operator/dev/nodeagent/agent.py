"""The node agent: binds pods to its Node and runs their containers as local processes (a kubelet for processes).

One reconcile loop (woken by watches, probes, or every second) owns all pod state; informer and probe
threads only report. State that must survive an agent restart lives under ``--state-dir``:

    ips.json                               pod UID -> loopback IP
    pods/<uid>/pod.json                    namespace, name, IP, start time, grace period
    pods/<uid>/containers/<name>.json      PID + kernel start time of the running shim (for adoption)
    pods/<uid>/containers/<name>.last.json lastState.terminated and restart count
    pods/<uid>/logs/<name>/<restart>.log   stdout+stderr of each run (``chronoshard-dev logs``)
    pods/<uid>/volumes/<volume>/           Secret/ConfigMap (atomic ..data layout) and emptyDir volumes
    volumes/<namespace>/<claim>/           PersistentVolumeClaims (kept after the pod is deleted)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .env import EnvError, command_line, container_env, field_ref, mount_map, rewrite_paths
from .informer import Informer
from .ipam import DEFAULT_POD_CIDR, IPAllocator
from .kubeletapi import KubeletAPI
from .node import NodeHeartbeat, now_rfc3339
from .podstatus import ContainerView, pod_status
from .probes import ProbeError, ProbeWorker, parse_probe
from .process import ProcessRecord, launch
from .restart import Backoff, should_restart
from .storage import ensure_bound
from .volumes import VolumeError, volume_payload, write_atomic

log = logging.getLogger("chronoshard.nodeagent")

HOST_IP = "127.0.0.1"
HEARTBEAT_SECONDS = 10.0


def base_env(pod_name: str) -> dict[str, str]:
    """The "image" environment every container starts from: PATH with this venv's bin first, HOSTNAME."""
    venv_bin = str(Path(sys.executable).parent)
    return {
        "PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOSTNAME": pod_name,
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        # Our Dockerfile's image runs Python unbuffered; do the same so logs appear as they happen.
        "PYTHONUNBUFFERED": "1",
    }


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


class NodeAgent:
    """Registers a Node, binds the pods it may run, runs them, and reports their status."""

    def __init__(
        self,
        api: client.ApiClient,
        state_dir: Path,
        node_name: str = "chronoshard-dev",
        backoff_base: float = 10.0,
        pod_cidr: str = DEFAULT_POD_CIDR,
        client_ca: Path | None = None,
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.node = node_name
        self.state_dir = state_dir
        self.pods_root = state_dir / "pods"
        self.volumes_root = state_dir / "volumes"
        self.backoff_base = backoff_base
        self.kubelet_api = KubeletAPI(self._locate_log, state_dir / "kubelet", HOST_IP, client_ca=client_ca)
        self.heartbeat = NodeHeartbeat(
            self.core, client.CoordinationV1Api(api), node_name, HOST_IP, kubelet_port=self.kubelet_api.port
        )
        self.ips = IPAllocator(state_dir / "ips.json", pod_cidr)
        self.runs: dict[str, PodRun] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        notify = lambda _kind, _obj: self._wake.set()  # noqa: E731
        self.pods = Informer("pods", self.core.list_pod_for_all_namespaces, notify)
        self.secrets = Informer("secrets", self.core.list_secret_for_all_namespaces, notify)
        self.configmaps = Informer("configmaps", self.core.list_config_map_for_all_namespaces, notify)

    # ---- lifecycle -------------------------------------------------------------------------------------

    def run(self) -> None:
        """Register the node, adopt what a previous agent left, then reconcile until ``stop``."""
        # Secret volumes hold key material: keep the agent's tree private to this user, as kubelet's is.
        for directory in (self.state_dir, self.pods_root, self.volumes_root):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o700)
        self.kubelet_api.start()
        self.heartbeat.register()
        for inf in (self.pods, self.secrets, self.configmaps):
            inf.start()
        for inf in (self.pods, self.secrets, self.configmaps):
            inf.synced.wait(60)
        self._adopt()
        next_beat = time.monotonic() + HEARTBEAT_SECONDS
        log.info("node %s ready; state in %s", self.node, self.state_dir)
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                self.sync_once()
            except Exception:
                log.exception("sync failed")
            if time.monotonic() >= next_beat:
                try:
                    self.heartbeat.beat()
                except Exception as exc:
                    log.warning("heartbeat failed: %s", exc)
                next_beat = time.monotonic() + HEARTBEAT_SECONDS
        for run in self.runs.values():
            for cr in run.containers.values():
                self._stop_probes(cr)
        for inf in (self.pods, self.secrets, self.configmaps):
            inf.stop()
        self.kubelet_api.stop()

    def stop(self) -> None:
        """Ask the loop to end; container processes keep running (a restarted agent adopts them)."""
        self._stop.set()
        self._wake.set()

    def _locate_log(
        self, namespace: str, pod: str, container: str, previous: bool
    ) -> tuple[Path, Callable[[], bool]] | None:
        """The log file of a container's current (or previous) run, for the kubelet API; None if unknown."""
        for run in list(self.runs.values()):
            if (run.namespace, run.name) != (namespace, pod):
                continue
            cr = run.containers.get(container)
            if cr is None or cr.runs == 0:
                return None
            attempt = cr.runs - 1 - (1 if previous else 0)
            if attempt < 0:
                return None

            def running(run: PodRun = run, cr: ContainerRun = cr, attempt: int = attempt) -> bool:
                return run.uid in self.runs and cr.runs - 1 == attempt and cr.record is not None

            return run.directory / "logs" / container / f"{attempt}.log", running
        return None

    # ---- scheduling ------------------------------------------------------------------------------------

    def may_run(self, pod: dict[str, Any]) -> bool:
        """Unscheduled, not deleting, default scheduler, and its nodeSelector matches this node's labels."""
        spec, meta = pod.get("spec", {}), pod.get("metadata", {})
        if spec.get("nodeName") or meta.get("deletionTimestamp"):
            return False
        if spec.get("schedulerName", "default-scheduler") != "default-scheduler":
            return False
        selector = spec.get("nodeSelector") or {}
        return all(self.heartbeat.labels.get(k) == v for k, v in selector.items())

    def _bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        body = client.V1Binding(
            metadata=client.V1ObjectMeta(name=meta["name"], uid=meta["uid"]),
            target=client.V1ObjectReference(api_version="v1", kind="Node", name=self.node),
        )
        try:
            # _preload_content=False: the client cannot deserialize the Status this endpoint returns.
            self.core.create_namespaced_pod_binding(meta["name"], meta["namespace"], body, _preload_content=False)
            self._event(pod, "Scheduled", f"Successfully assigned {meta['namespace']}/{meta['name']} to {self.node}")
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("binding %s/%s failed: %s", meta["namespace"], meta["name"], exc.reason)

    # ---- the loop --------------------------------------------------------------------------------------

    def sync_once(self) -> None:
        """One reconcile pass over every pod."""
        mine: dict[str, dict[str, Any]] = {}
        for pod in self.pods.items():
            node = pod.get("spec", {}).get("nodeName")
            if not node:
                if self.may_run(pod):
                    self._bind(pod)
            elif node == self.node:
                mine[pod["metadata"]["uid"]] = pod
        for pod in mine.values():
            try:
                self._sync_pod(pod)
            except ApiException as exc:
                meta = pod["metadata"]
                log.warning("pod %s/%s: API error %s", meta["namespace"], meta["name"], exc.reason)
        if not self.pods.synced.is_set():
            return  # without a complete pod list, "not listed" does not mean "deleted"
        for uid in [u for u in self.runs if u not in mine]:
            self._sync_orphan(self.runs[uid])

    def _sync_orphan(self, run: PodRun) -> None:
        # The pod object is gone (deleted by us after termination, or force-deleted): stop and clean up.
        if run.stop_requested is None:
            run.stop_requested = time.monotonic()
        if self._stop_containers(run, run.grace):
            self._cleanup(run)

    def _sync_pod(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        run = self.runs.get(meta["uid"])
        if meta.get("deletionTimestamp"):
            if run is not None:
                grace = meta.get("deletionGracePeriodSeconds")
                if grace is None:
                    grace = spec.get("terminationGracePeriodSeconds", 30)
                if run.stop_requested is None:
                    run.stop_requested = time.monotonic()
                    self._event(pod, "Killing", "Stopping containers")
                if not self._stop_containers(run, float(grace)):
                    return
                self._post_status(pod, run)
            self._delete_pod_object(pod)
            if run is not None:
                self._cleanup(run)
            return
        if run is None:
            run = self._new_run(pod)
        try:
            self._setup_volumes(pod, run)
        except (VolumeError, ApiException, OSError) as exc:
            message = str(exc) if not isinstance(exc, ApiException) else f"API error {exc.status}: {exc.reason}"
            self._set_waiting(run, pod, "ContainerCreating", f"MountVolume failed: {message}", event="FailedMount")
            self._post_status(pod, run)
            return
        if not self._sync_init(pod, run):
            for cspec in spec.get("containers", []):
                cr = self._container_run(run, cspec)
                if cr.record is None and cr.view.terminated is None and cr.runs == 0:
                    cr.view.waiting_reason, cr.view.waiting_message = "PodInitializing", None
            self._post_status(pod, run)
            return
        for cspec in spec.get("containers", []):
            self._sync_container(pod, run, cspec)
        self._post_status(pod, run)

    def _sync_init(self, pod: dict[str, Any], run: PodRun) -> bool:
        """Run the init containers one after another; True once every one has exited 0 (they never run again)."""
        policy = pod["spec"].get("restartPolicy", "Always")
        for cspec in pod["spec"].get("initContainers") or []:
            cr = self._container_run(run, cspec)
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

    # ---- pods --------------------------------------------------------------------------------------------

    def _new_run(self, pod: dict[str, Any]) -> PodRun:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        directory = self.pods_root / uid
        directory.mkdir(parents=True, exist_ok=True)
        ip = self.ips.allocate(uid)
        run = PodRun(
            uid=uid, namespace=meta["namespace"], name=meta["name"], ip=ip, directory=directory,
            start_time=now_rfc3339(), grace=float(spec.get("terminationGracePeriodSeconds", 30)),
        )
        self._save_pod_meta(run)
        self.runs[uid] = run
        return run

    def _save_pod_meta(self, run: PodRun) -> None:
        meta = {"uid": run.uid, "namespace": run.namespace, "name": run.name, "ip": run.ip,
                "startTime": run.start_time, "grace": run.grace}
        (run.directory / "pod.json").write_text(json.dumps(meta))

    def _adopt(self) -> None:
        """Rebuild pod runs from the state dir; processes still alive are adopted, not restarted."""
        if not self.pods_root.is_dir():
            return
        for directory in sorted(self.pods_root.iterdir()):
            try:
                meta = json.loads((directory / "pod.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                shutil.rmtree(directory, ignore_errors=True)
                continue
            run = PodRun(
                uid=meta["uid"], namespace=meta["namespace"], name=meta["name"], ip=self.ips.allocate(meta["uid"]),
                directory=directory, start_time=meta["startTime"], grace=float(meta.get("grace", 30)),
            )
            cdir = directory / "containers"
            if cdir.is_dir():
                for rec_file in cdir.glob("*.json"):
                    if rec_file.name.endswith(".last.json"):
                        continue
                    name = rec_file.stem
                    last = _read_json(cdir / f"{name}.last.json") or {}
                    run.adopted[name] = (ProcessRecord.load(rec_file), last)
                for last_file in cdir.glob("*.last.json"):
                    name = last_file.name[: -len(".last.json")]
                    run.adopted.setdefault(name, (None, _read_json(last_file) or {}))
            alive = sum(1 for rec, _ in run.adopted.values() if rec is not None and rec.alive())
            log.info("adopted pod %s/%s (%d live processes)", run.namespace, run.name, alive)
            self.runs[run.uid] = run

    def _cleanup(self, run: PodRun) -> None:
        for cr in run.containers.values():
            self._stop_probes(cr)
        self.ips.release(run.uid)
        shutil.rmtree(run.directory, ignore_errors=True)
        self.runs.pop(run.uid, None)

    def _delete_pod_object(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            self.core.delete_namespaced_pod(
                meta["name"], meta["namespace"],
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=meta["uid"])
                ),
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def _stop_containers(self, run: PodRun, grace: float) -> bool:
        """SIGTERM every container once, SIGKILL after ``grace``; True once none is running."""
        started = run.stop_requested or time.monotonic()
        records = [cr.record for cr in run.containers.values() if cr.record is not None]
        records += [rec for rec, _ in run.adopted.values() if rec is not None]
        for cr in run.containers.values():
            self._stop_probes(cr)
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

    # ---- volumes -----------------------------------------------------------------------------------------

    def _lookup(self, namespace: str) -> Any:
        def lookup(kind: str, name: str) -> dict[str, Any] | None:
            return (self.secrets if kind == "Secret" else self.configmaps).get(namespace, name)

        return lookup

    def _setup_volumes(self, pod: dict[str, Any], run: PodRun) -> None:
        lookup = self._lookup(run.namespace)
        for vol in pod["spec"].get("volumes") or []:
            name = vol["name"]
            if "persistentVolumeClaim" in vol:
                if name not in run.volume_dirs:
                    claim = vol["persistentVolumeClaim"]["claimName"]
                    run.volume_dirs[name] = str(ensure_bound(self.core, self.volumes_root, run.namespace, claim))
                continue
            if "emptyDir" in vol:
                path = run.directory / "volumes" / name
                path.mkdir(parents=True, exist_ok=True)
                run.volume_dirs[name] = str(path)
                continue
            if "hostPath" in vol:
                path = Path(vol["hostPath"]["path"])
                if vol["hostPath"].get("type") in ("DirectoryOrCreate",):
                    path.mkdir(parents=True, exist_ok=True)
                run.volume_dirs[name] = str(path)
                continue
            payload = volume_payload(
                vol, lookup, field=lambda path: field_ref(self._live_pod(pod, run), path),
                token=lambda aud, exp: self._token(pod, run, aud, exp),
            )
            if payload is None:
                raise VolumeError(f"volume {name!r}: type {sorted(k for k in vol if k != 'name')} is not supported")
            digest = hashlib.sha256(
                json.dumps(sorted((k, v.hex(), m) for k, (v, m) in payload.items())).encode()
            ).hexdigest()
            path = run.directory / "volumes" / name
            if run.volume_hashes.get(name) != digest:
                write_atomic(path, payload)
                run.volume_hashes[name] = digest
            run.volume_dirs[name] = str(path)

    # ---- containers ----------------------------------------------------------------------------------------

    def _container_run(self, run: PodRun, cspec: dict[str, Any]) -> ContainerRun:
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

    def _set_waiting(self, run: PodRun, pod: dict[str, Any], reason: str, message: str, event: str = "Failed") -> None:
        for cspec in [*(pod["spec"].get("initContainers") or []), *pod["spec"].get("containers", [])]:
            cr = self._container_run(run, cspec)
            if cr.record is None and cr.view.terminated is None:
                cr.view.waiting_reason, cr.view.waiting_message = reason, message
        if run.last_event != message:
            run.last_event = message
            self._event(pod, event, message, "Warning")

    def _sync_container(self, pod: dict[str, Any], run: PodRun, cspec: dict[str, Any]) -> None:
        cr = self._container_run(run, cspec)
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
            self._event(pod, "Unhealthy", f"{failed} probe failed", "Warning")
            self._event(pod, "Killing", message)
            grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
            self._stop_probes(cr)
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
            "exitCode": int(info.get("exitCode", 137)),
            "reason": str(info.get("reason", "Error")),
            "startedAt": record.started_at,
            "finishedAt": str(info.get("finishedAt") or now_rfc3339()),
            "containerID": f"process://{record.pid}",
        }
        if info.get("signal"):
            terminated["signal"] = int(info["signal"])  # type: ignore[arg-type]
        if info.get("message"):
            terminated["message"] = str(info["message"])
        self._stop_probes(cr)
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

    @staticmethod
    def _live_pod(pod: dict[str, Any], run: PodRun) -> dict[str, Any]:
        # The downward API must see the IP even before our first status update reaches the cache.
        return {**pod, "status": {**(pod.get("status") or {}), "podIP": run.ip, "hostIP": HOST_IP,
                                  "podIPs": [{"ip": run.ip}], "hostIPs": [{"ip": HOST_IP}]}}

    def _token(self, pod: dict[str, Any], run: PodRun, audience: str | None, expiration: int) -> str:
        """A bound service account token for the pod, renewed at 80% of its lifetime, as kubelet does."""
        key = audience or ""
        cached = run.tokens.get(key)
        if cached is not None and time.monotonic() < cached[1]:
            return cached[0]
        meta = pod["metadata"]
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[audience] if audience else [],
                expiration_seconds=expiration,
                bound_object_ref=client.V1BoundObjectReference(
                    api_version="v1", kind="Pod", name=meta["name"], uid=meta["uid"]
                ),
            )
        )
        sa = pod["spec"].get("serviceAccountName") or "default"
        answer = self.core.create_namespaced_service_account_token(sa, run.namespace, request)
        lifetime = float(answer.spec.expiration_seconds or expiration)
        run.tokens[key] = (answer.status.token, time.monotonic() + 0.8 * lifetime)
        return answer.status.token

    def _start(self, pod: dict[str, Any], run: PodRun, cr: ContainerRun) -> None:
        live_pod = self._live_pod(pod, run)
        try:
            base = base_env(run.name)
            mounts = mount_map(cr.spec, run.volume_dirs)
            env = container_env(live_pod, cr.spec, self._lookup(run.namespace), base)
            # Declared values may name mount paths (e.g. KEYRING=/etc/chronoshard/keyring): map them too.
            env = {k: (v if base.get(k) == v else rewrite_paths(v, mounts)) for k, v in env.items()}
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
                self._event(pod, "Failed", f"Error: {exc}", "Warning")
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
        self._event(pod, "Started", f"Started container {cr.view.name} (pid {record.pid})")

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

    # ---- probes ----------------------------------------------------------------------------------------------

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
            cr.probes[kind.removesuffix("Probe")] = ProbeWorker(spec, initial, lambda _r: self._wake.set()).start()
        if not cr.probes:
            cr.probes["none"] = _NO_PROBE

    def _stop_probes(self, cr: ContainerRun) -> None:
        for worker in cr.probes.values():
            worker.stop()
        cr.probes = {}

    # ---- status and events -------------------------------------------------------------------------------------

    def _post_status(self, pod: dict[str, Any], run: PodRun) -> None:
        views = [self._container_run(run, c).view for c in pod["spec"].get("containers", [])]
        init_views = [self._container_run(run, c).view for c in pod["spec"].get("initContainers") or []]
        status = pod_status(
            views, pod["spec"].get("restartPolicy", "Always"), run.ip, HOST_IP, run.start_time,
            run.conditions, now_rfc3339(), init_views,
        )
        if status == run.last_status:
            return
        try:
            self.core.patch_namespaced_pod_status(pod["metadata"]["name"], run.namespace, {"status": status})
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        run.last_status = status
        run.conditions = {c["type"]: c for c in status["conditions"]}

    def _event(self, pod: dict[str, Any], reason: str, message: str, etype: str = "Normal") -> None:
        meta = pod["metadata"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "reason": reason, "message": message, "type": etype, "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet", "reportingInstance": self.node,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as exc:
            log.debug("event %s for %s not recorded: %s", reason, meta["name"], exc.reason)


class _NoProbe:
    """Placeholder so a container without probes is not re-examined for probes on every pass."""

    result = True

    def stop(self) -> None:
        """Nothing to stop."""


_NO_PROBE: Any = _NoProbe()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
