"""HTTP and TCP probes with kubelet's thresholds and timing."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any


class ProbeError(Exception):
    """A probe spec this agent cannot run (exec probes, unknown named port)."""


@dataclass(frozen=True)
class ProbeSpec:
    """A probe, resolved against the pod: where to connect and kubelet's timing parameters."""

    kind: str  # "http" or "tcp"
    host: str
    port: int
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


def resolve_port(port: int | str, container: Mapping[str, Any]) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ProbeError(f"probe names port {port!r}, which container {container.get('name')!r} does not declare")


def parse_probe(probe: Mapping[str, Any], container: Mapping[str, Any], pod_ip: str) -> ProbeSpec:
    """Turn a container's probe into a ProbeSpec; the default host is the pod IP, as kubelet does."""
    if "httpGet" in probe:
        get = probe["httpGet"]
        target = ProbeSpec(
            kind="http",
            host=get.get("host") or pod_ip,
            port=resolve_port(get["port"], container),
            path=get.get("path") or "/",
            scheme=(get.get("scheme") or "HTTP").upper(),
            headers=tuple((h["name"], h["value"]) for h in get.get("httpHeaders") or []),
        )
        return _with_timing(target, probe)
    if "tcpSocket" in probe:
        sock = probe["tcpSocket"]
        target = ProbeSpec(kind="tcp", host=sock.get("host") or pod_ip, port=resolve_port(sock["port"], container))
        return _with_timing(target, probe)
    raise ProbeError(f"unsupported probe {sorted(k for k in probe if k.endswith(('Get', 'Socket', 'exec', 'grpc')))}")


def _with_timing(target: ProbeSpec, probe: Mapping[str, Any]) -> ProbeSpec:
    """``target`` with the probe's delays and thresholds (kubelet's defaults where unset)."""
    return replace(
        target,
        initial_delay=float(probe.get("initialDelaySeconds", 0)),
        period=float(probe.get("periodSeconds", 10)),
        timeout=float(probe.get("timeoutSeconds", 1)),
        success_threshold=int(probe.get("successThreshold", 1)),
        failure_threshold=int(probe.get("failureThreshold", 3)),
    )


def run_probe(spec: ProbeSpec) -> bool:
    """One probe attempt: HTTP 200-399 (redirects not followed) or a TCP connect within the timeout."""
    try:
        if spec.kind == "tcp":
            with socket.create_connection((spec.host, spec.port), timeout=spec.timeout):
                return True
        if spec.scheme == "HTTPS":
            # kubelet does not verify probe certificates either.
            ctx = ssl._create_unverified_context()
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                spec.host, spec.port, timeout=spec.timeout, context=ctx
            )
        else:
            conn = http.client.HTTPConnection(spec.host, spec.port, timeout=spec.timeout)
        try:
            headers = {"User-Agent": "kube-probe/chronoshard-dev", "Accept": "*/*", **dict(spec.headers)}
            conn.request("GET", spec.path, headers=headers)
            status = conn.getresponse().status
        finally:
            conn.close()
        return 200 <= status < 400
    except (OSError, http.client.HTTPException):
        return False


@dataclass
class ProbeState:
    """Thresholded result: flips only after success_threshold successes / failure_threshold failures."""

    success_threshold: int
    failure_threshold: int
    initial: bool
    result: bool = field(init=False)
    _successes: int = field(default=0, init=False)
    _failures: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.result = self.initial

    @property
    def failed(self) -> bool:
        """True once failure_threshold attempts in a row failed (a startup probe's give-up point)."""
        return self._failures >= self.failure_threshold

    def record(self, ok: bool) -> bool:
        """Add one attempt's outcome and return the (possibly changed) result."""
        if ok:
            self._successes, self._failures = self._successes + 1, 0
            if self._successes >= self.success_threshold:
                self.result = True
        else:
            self._failures, self._successes = self._failures + 1, 0
            if self._failures >= self.failure_threshold:
                self.result = False
        return self.result


class ProbeWorker:
    """Runs one probe periodically in a thread (kubelet has one worker per probe) and keeps its result."""

    def __init__(
        self,
        spec: ProbeSpec,
        initial: bool,
        on_change: Callable[[bool], None],
        attempt: Callable[[ProbeSpec], bool] = run_probe,
    ) -> None:
        self.spec = spec
        self.state = ProbeState(spec.success_threshold, spec.failure_threshold, initial)
        self._on_change = on_change
        self._attempt = attempt
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"probe-{spec.host}:{spec.port}")

    @property
    def result(self) -> bool:
        """The current thresholded result."""
        return self.state.result

    def start(self) -> ProbeWorker:
        """Start probing after the initial delay."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop probing (the thread ends within one period)."""
        self._stop.set()

    def _run(self) -> None:
        if self._stop.wait(self.spec.initial_delay):
            return
        while not self._stop.is_set():
            before = self.state.result
            after = self.state.record(self._attempt(self.spec))
            if after != before and not self._stop.is_set():
                self._on_change(after)
            if self._stop.wait(self.spec.period):
                return
