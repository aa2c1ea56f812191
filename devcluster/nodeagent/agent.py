"""The node agent: binds pods to its Node and runs their containers as local processes (a kubelet for processes).

One reconcile loop (woken by watches, probes, or every second) owns all pod state; informer and probe
threads only report. State that must survive an agent restart lives under ``--state-dir``:

    ips.json                               the pod CIDR and pod UID -> IP
    kubelet/                               the log API's serving certificate
    pods/<uid>/pod.json                    namespace, name, IP, start time, grace period
    pods/<uid>/containers/<name>.json      PID + kernel start time of the running shim (for adoption)
    pods/<uid>/containers/<name>.last.json restart count, lastState.terminated, a final terminated state
    pods/<uid>/exits/<name>-<restart>.json the exit code the shim recorded
    pods/<uid>/logs/<name>/<restart>.log   stdout+stderr of each run (kubectl logs, chronoshard-dev logs)
    pods/<uid>/volumes/<volume>/           Secret/ConfigMap/projected (atomic ..data layout), emptyDir
    pods/<uid>/serviceaccount/             token, ca.crt, namespace, kubeconfig (atomic; $KUBECONFIG points here)
    volumes/<namespace>/<claim>-<uid>/     PersistentVolumeClaims (kept after the pod is deleted)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .containers import HOST_IP, ContainerRun, ContainerRuntime, PodRun, live_pod
from .env import field_ref
from .informer import Informer
from .ipam import DEFAULT_POD_CIDR, IPAllocator
from .kubeletapi import KubeletAPI
from .node import NodeHeartbeat, now_rfc3339
from .podstatus import pod_status
from .process import ProcessRecord
from .serviceaccount import (
    KUBECONFIG_FILE,
    TOKEN_EXPIRATION_SECONDS,
    credential_files,
    refresh_deadline,
    service_account_name,
    should_automount,
)
from .storage import ensure_bound
from .volumes import VolumeError, volume_payload, write_atomic

log = logging.getLogger("chronoshard.nodeagent")

HEARTBEAT_SECONDS = 10.0


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
        # Pods reach the API server where the agent does, trusting the same CA (its kubeconfig's).
        self.api_server = str(api.configuration.host)
        ca_file = api.configuration.ssl_ca_cert
        self.api_ca = Path(ca_file).read_bytes() if ca_file and Path(ca_file).is_file() else None
        self.kubelet_api = KubeletAPI(self._locate_log, state_dir / "kubelet", HOST_IP, client_ca=client_ca)
        self.heartbeat = NodeHeartbeat(
            self.core, client.CoordinationV1Api(api), node_name, HOST_IP, kubelet_port=self.kubelet_api.port
        )
        self.ips = IPAllocator(state_dir / "ips.json", pod_cidr)
        self.containers = ContainerRuntime(backoff_base, self._lookup, self._event, lambda: self._wake.set())
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
                self.containers.stop_probes(cr)
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
        if self.containers.stop_containers(run, run.grace):
            self._cleanup(run)

    def _sync_deleting(self, pod: dict[str, Any], run: PodRun | None) -> None:
        # A pod marked for deletion: stop its containers within the grace period, then remove the pod object.
        meta, spec = pod["metadata"], pod["spec"]
        if run is not None:
            grace = meta.get("deletionGracePeriodSeconds")
            if grace is None:
                grace = spec.get("terminationGracePeriodSeconds", 30)
            if run.stop_requested is None:
                run.stop_requested = time.monotonic()
                self._event(pod, "Killing", "Stopping containers")
            if not self.containers.stop_containers(run, float(grace)):
                return
            self._post_status(pod, run)
        self._delete_pod_object(pod)
        if run is not None:
            self._cleanup(run)

    def _sync_pod(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        run = self.runs.get(meta["uid"])
        if meta.get("deletionTimestamp"):
            self._sync_deleting(pod, run)
            return
        if run is None:
            run = self._new_run(pod)
        try:
            self._setup_volumes(pod, run)
            self._setup_credentials(pod, run)
        except (VolumeError, ApiException, OSError) as exc:
            message = str(exc) if not isinstance(exc, ApiException) else f"API error {exc.status}: {exc.reason}"
            self.containers.set_waiting(
                run, pod, "ContainerCreating", f"MountVolume failed: {message}", event="FailedMount"
            )
            self._post_status(pod, run)
            return
        if not self.containers.sync_init(pod, run):
            for cspec in spec.get("containers", []):
                cr = self.containers.container_run(run, cspec)
                if cr.record is None and cr.view.terminated is None and cr.runs == 0:
                    cr.view.waiting_reason, cr.view.waiting_message = "PodInitializing", None
            self._post_status(pod, run)
            return
        for cspec in spec.get("containers", []):
            self.containers.sync_container(pod, run, cspec)
        self._post_status(pod, run)

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
            self.containers.stop_probes(cr)
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
                vol, lookup, field=lambda path: field_ref(live_pod(pod, run), path),
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

    def _setup_credentials(self, pod: dict[str, Any], run: PodRun) -> None:
        """Write the pod's ServiceAccount credentials (token, ca.crt, namespace, kubeconfig) if it mounts them."""
        spec = pod["spec"]
        sa_name = service_account_name(spec)
        if run.automount is None:
            account = None
            if spec.get("automountServiceAccountToken") is None:
                try:
                    account = self.core.api_client.sanitize_for_serialization(
                        self.core.read_namespaced_service_account(sa_name, run.namespace)
                    )
                except ApiException as exc:
                    if exc.status == 404:
                        raise VolumeError(f'serviceaccount "{sa_name}" not found') from None
                    raise
            run.automount = should_automount(spec, account)
        if not run.automount:
            return
        token = self._token(pod, run, None, TOKEN_EXPIRATION_SECONDS)
        payload = credential_files(
            self.api_server, self.api_ca, token, run.namespace, f"system:serviceaccount:{run.namespace}:{sa_name}"
        )
        digest = hashlib.sha256(json.dumps(sorted((k, v.hex(), m) for k, (v, m) in payload.items())).encode())
        path = run.directory / "serviceaccount"
        if run.volume_hashes.get("..serviceaccount") != digest.hexdigest():
            # The same ..data swap as volumes: a client re-reading KUBECONFIG never sees half a file.
            write_atomic(path, payload)
            run.volume_hashes["..serviceaccount"] = digest.hexdigest()
        run.kubeconfig = str(path / KUBECONFIG_FILE)

    # ---- containers ----------------------------------------------------------------------------------------

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
        sa = service_account_name(pod["spec"])
        answer = self.core.create_namespaced_service_account_token(sa, run.namespace, request)
        if answer.status is None or not answer.status.token:
            raise VolumeError(f'serviceaccount "{sa}": the token request returned no token')
        token = answer.status.token
        granted = answer.spec.expiration_seconds if answer.spec is not None else None
        lifetime = float(granted or expiration)
        run.tokens[key] = (token, refresh_deadline(time.monotonic(), lifetime))
        return token

    # ---- probes ----------------------------------------------------------------------------------------------

    # ---- status and events -------------------------------------------------------------------------------------

    def _post_status(self, pod: dict[str, Any], run: PodRun) -> None:
        views = [self.containers.container_run(run, c).view for c in pod["spec"].get("containers", [])]
        init_views = [self.containers.container_run(run, c).view for c in pod["spec"].get("initContainers") or []]
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
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version="v1", kind="Pod", name=meta["name"], namespace=meta["namespace"], uid=meta["uid"]
            ),
            reason=reason, message=message, type=etype, count=1, first_timestamp=now, last_timestamp=now,
            source=client.V1EventSource(component="kubelet", host=self.node),
            reporting_component="kubelet", reporting_instance=self.node,
        )
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as exc:
            log.debug("event %s for %s not recorded: %s", reason, meta["name"], exc.reason)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
