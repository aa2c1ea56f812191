"""A real Kubernetes control plane on loopback: embedded etcd, kube-apiserver, kube-controller-manager.

This is our "envtest": the binaries are built from the Go module proxy by ``hack/envtest.sh`` (pinned in
``hack/envtest/go.mod``) and cached outside the repo. Everything binds 127.0.0.1 on free ports; the admin
credential is a random bearer token generated per start. Used by the pytest fixtures and by ``chronoshard-dev``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

log = logging.getLogger(__name__)

ENVTEST_BIN_ENV = "CHRONOSHARD_ENVTEST_BIN"

# Controllers that need a cloud, real nodes or a CNI; everything else (garbage collector, statefulset,
# job, PV binder, namespace, serviceaccount, ...) runs as in a real cluster.
DISABLED_CONTROLLERS = (
    "cloud-node-lifecycle-controller",
    "node-ipam-controller",
    "node-lifecycle-controller",
    "node-route-controller",
    "service-lb-controller",
    "persistentvolume-attach-detach-controller",
    "persistentvolume-expander-controller",
)


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or reached."""


def repo_root(start: Path | None = None) -> Path | None:
    """The chronoshard checkout containing ``start`` (default: this file, then the cwd), if any."""
    candidates = [start] if start else [Path(__file__).resolve(), Path.cwd().resolve()]
    for base in candidates:
        for d in [base, *base.parents]:
            if (d / "hack" / "envtest.sh").is_file() and (d / "crds").is_dir():
                return d
    return None


def envtest_bin_dir(build: bool = True) -> Path:
    """The directory holding the pinned binaries; builds them with ``hack/envtest.sh`` when needed."""
    override = os.environ.get(ENVTEST_BIN_ENV)
    if override:
        return Path(override)
    root = repo_root()
    if root is None:
        raise ControlPlaneError(
            f"cannot find hack/envtest.sh; run from a chronoshard checkout or set {ENVTEST_BIN_ENV}"
        )
    if not build:
        raise ControlPlaneError("envtest binaries not located and building is disabled")
    # Progress of a cold build goes to our stderr so a person sees it; stdout is the bin dir.
    proc = subprocess.run(
        ["bash", str(root / "hack" / "envtest.sh")], stdout=subprocess.PIPE, text=True, check=False
    )
    if proc.returncode != 0:
        raise ControlPlaneError(f"hack/envtest.sh failed with exit code {proc.returncode}")
    return Path(proc.stdout.strip().splitlines()[-1])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_service_account_keys(directory: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv = directory / "sa.key"
    pub = directory / "sa.pub"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    priv.chmod(0o600)
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv, pub


def kubeconfig_document(server: str, token: str, ca_pem: bytes, user: str = "admin") -> dict:
    """A kubeconfig (as a dict) for ``server`` with a bearer token."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "envtest",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": user}}],
        "current-context": "envtest",
    }


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path


@dataclass
class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager) on 127.0.0.1, state kept in ``state_dir``."""

    state_dir: Path
    controller_manager: bool = True
    audit_policy: dict | None = None
    bin_dir: Path | None = None
    extra_apiserver_args: Sequence[str] = ()
    # A /24 holds about 250 ClusterIP Services; a benchmark with one Service per ShardSet at 1,000 passes a wider one.
    service_cluster_ip_range: str = "10.96.0.0/24"
    server: str = ""
    token: str = ""
    _procs: list[_Proc] = field(default_factory=list)

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.state_dir / "audit.log"

    def start(self, timeout: float = 120.0) -> ControlPlane:
        """Start every component and return once the API server's ``/readyz`` answers ok."""
        self.state_dir = Path(self.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.bin_dir is None:
            self.bin_dir = envtest_bin_dir()
        try:
            self._start_etcd()
            self._start_apiserver(timeout)
            if self.controller_manager:
                self._start_controller_manager()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log_path = self.state_dir / f"{name}.log"
        out = open(log_path, "ab")
        # A new session so that a Ctrl-C aimed at pytest does not kill the children before teardown.
        popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self._procs.append(_Proc(name, popen, log_path))
        return popen

    def _start_etcd(self) -> None:
        assert self.bin_dir is not None
        self.etcd_url = f"http://127.0.0.1:{free_port()}"
        data = self.state_dir / "etcd"
        data.mkdir(exist_ok=True)
        self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                f"--data-dir={data}",
                f"--listen-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{free_port()}",
            ],
        )

    def _start_apiserver(self, timeout: float) -> None:
        assert self.bin_dir is not None
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        self.token = secrets.token_urlsafe(32)
        cert_dir = self.state_dir / "certs"
        cert_dir.mkdir(exist_ok=True)
        tokens = self.state_dir / "tokens.csv"
        # The admin token is in system:masters, which RBAC lets do anything, as in a real cluster's admin.
        tokens.write_text(f'{self.token},admin,admin,"system:masters"\n')
        tokens.chmod(0o600)
        sa_priv, sa_pub = _write_service_account_keys(self.state_dir)
        self.sa_private_key = sa_priv
        args = [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={cert_dir}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={self.service_cluster_ip_range}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={sa_pub}",
            f"--service-account-signing-key-file={sa_priv}",
            "--allow-privileged=true",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            *self.extra_apiserver_args,
        ]
        if self.audit_policy is not None:
            policy = self.state_dir / "audit-policy.yaml"
            policy.write_text(yaml.safe_dump(self.audit_policy))
            args += [
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
            ]
        self._spawn("kube-apiserver", args)
        self._wait_ready(cert_dir / "apiserver.crt", timeout)
        ca_pem = (cert_dir / "apiserver.crt").read_bytes()
        self.ca_pem = ca_pem
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig_document(self.server, self.token, ca_pem)))
        self.kubeconfig.chmod(0o600)

    def _wait_ready(self, ca_file: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            for p in self._procs:
                if p.popen.poll() is not None:
                    raise ControlPlaneError(
                        f"{p.name} exited with code {p.popen.returncode}; see {p.log_path}:\n"
                        + _tail(p.log_path)
                    )
            if ca_file.exists():
                try:
                    ctx = ssl.create_default_context(cafile=str(ca_file))
                    req = urllib.request.Request(
                        f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.token}"}
                    )
                    with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
                        if resp.status == 200:
                            return
                except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
                    last = str(exc)
            time.sleep(0.2)
        raise ControlPlaneError(f"kube-apiserver not ready after {timeout}s ({last})")

    def _start_controller_manager(self) -> None:
        assert self.bin_dir is not None
        controllers = ",".join(["*", *(f"-{c}" for c in DISABLED_CONTROLLERS)])
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                f"--controllers={controllers}",
                f"--service-account-private-key-file={self.sa_private_key}",
                f"--root-ca-file={self.state_dir / 'certs' / 'apiserver.crt'}",
                "--cluster-name=envtest",
                # Deleted pods of a StatefulSet are replaced quickly instead of after the default back-off.
                "--concurrent-statefulset-syncs=5",
            ],
        )

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Run the pinned kubectl against this control plane and capture its output as text."""
        assert self.bin_dir is not None
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def install_crds(self, directory: Path, timeout: float = 30) -> list[str]:
        """Apply every CRD YAML directly in ``directory`` and wait until each is Established."""
        files = sorted(p for p in Path(directory).glob("*.yaml") if p.is_file())
        names: list[str] = []
        for f in files:
            for doc in yaml.safe_load_all(f.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    names.append(doc["metadata"]["name"])
        if not files:
            return names
        self.kubectl("apply", "--server-side", "--force-conflicts", *(f"-f={f}" for f in files))
        for name in names:
            self.kubectl(
                "wait", "--for=condition=Established", f"--timeout={int(timeout)}s", f"crd/{name}",
                timeout=timeout + 10,
            )
        return names

    def read_audit_events(self) -> list[dict]:
        """The audit log's events (needs ``audit_policy``)."""
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]

    def stop(self, grace: float = 10.0) -> None:
        """Stop the components in reverse start order: SIGTERM, then SIGKILL after ``grace`` seconds."""
        for p in reversed(self._procs):
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in reversed(self._procs):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                p.popen.wait(remaining)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
        self._procs.clear()

    def pids(self) -> dict[str, int]:
        """PIDs of the running components, by name."""
        return {p.name: p.popen.pid for p in self._procs if p.popen.poll() is None}

    def wipe(self) -> None:
        """Remove the state directory (after ``stop``)."""
        shutil.rmtree(self.state_dir, ignore_errors=True)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
