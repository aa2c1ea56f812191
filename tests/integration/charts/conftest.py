"""Fixtures for the chart's integration tests: an audited control plane, helm against it, the chart's operator."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.support.waiting import WaitTimeout, wait_for
from tests.unit.charts.helpers import CHART, tools_bin

REPO = Path(__file__).resolve().parents[3]


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CHART_OPERATOR = _load_script(REPO / "hack" / "chart-operator.py")
RELEASE_NS = "chronoshard-system"
# Only calls by the chart's ServiceAccounts are audited (every namespace we install a release into).
AUDITED_GROUPS = [f"system:serviceaccounts:{RELEASE_NS}", "system:serviceaccounts:chronoshard-ns"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def audited_plane() -> Iterator:
    """kube-apiserver + etcd (RBAC enforced) writing an audit log of the chart ServiceAccounts' calls."""
    from chronoshard.devcluster.controlplane import ControlPlane

    policy = {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [{"level": "Metadata", "userGroups": AUDITED_GROUPS}, {"level": "None"}],
    }
    state = Path(tempfile.mkdtemp(prefix="chronoshard-chart-envtest-"))
    cp = ControlPlane(state_dir=state, controller_manager=False, audit_policy=policy)
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()
        if not os.environ.get("CHRONOSHARD_KEEP_ENVTEST"):
            cp.wipe()


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory) -> dict[str, str]:
    """Environment for helm with its config, data and cache inside the test's temp dir."""
    home = tmp_path_factory.mktemp("helm")
    return {
        **os.environ,
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "HELM_CACHE_HOME": str(home / "cache"),
    }


def run_helm(plane, env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The pinned helm against the control plane (as its admin)."""
    result = subprocess.run(
        [str(tools_bin() / "helm"), f"--kubeconfig={plane.kubeconfig}", *args],
        capture_output=True, text=True, timeout=180, env=env,
    )
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def manifest_docs(plane, env: dict[str, str], release: str, namespace: str) -> list[dict]:
    """The objects of a release as Helm rendered them (`helm get manifest`)."""
    out = run_helm(plane, env, "get", "manifest", release, "--namespace", namespace).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@dataclass
class OperatorProcess:
    """`chronoshard-operator` run as a local process exactly as the chart's Deployment declares it."""

    argv: list[str]
    env: dict[str, str]
    log: Path
    health_url: str
    popen: subprocess.Popen | None = None
    history: list[list[str]] = field(default_factory=list)

    def start(self, timeout: float = 60) -> None:
        self.history.append(self.argv)
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                          cwd=self.log.parent)
        try:
            wait_for(self._healthy, timeout, interval=0.3, what=f"the operator to be healthy at {self.health_url}")
        except WaitTimeout as exc:
            raise AssertionError(f"{exc}:\n{self.tail()}") from None

    def _healthy(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            raise AssertionError(f"operator exited {self.popen.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(self.health_url, timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self, timeout: float = 30) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        # SIGTERM lets Kopf leave the peering object, so the next copy does not wait for a stale peer.
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


def operator_from_release(plane, docs: list[dict], namespace: str, workdir: Path) -> OperatorProcess:
    """The operator process the release's Deployment describes, signed in as its ServiceAccount.

    Uses hack/chart-operator.py's functions (the script users run on clusters without containers):
    command and args from the rendered Deployment, $(POD_IP) = 127.0.0.1, a TokenRequest token of the
    Deployment's ServiceAccount, so the API server enforces the chart's RBAC on every call.
    """
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    command, pod_env, sa = CHART_OPERATOR.operator_command(deploy, namespace)
    token = plane.kubectl("create", "token", sa, "--namespace", namespace, "--duration=2h").stdout.strip()
    kubeconfig = workdir / f"{sa}.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(CHART_OPERATOR.token_kubeconfig(plane.server, plane.ca_pem, token, sa)))
    kubeconfig.chmod(0o600)
    exe = shutil.which(command[0], path=str(Path(sys.executable).parent))
    assert exe, f"{command[0]} is not installed in this venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(pod_env)
    env["KUBECONFIG"] = str(kubeconfig)
    health = next(a.split("=", 1)[1] for a in command if a.startswith("--liveness="))
    return OperatorProcess(argv=[exe, *command[1:]], env=env, log=workdir / "operator.log", health_url=health)


def audit_calls(plane, username: str) -> list[dict]:
    """The audited API calls of one user: verb, group, resource (with /subresource), namespace, code, decision."""
    calls = []
    for event in plane.read_audit_events():
        if event["user"]["username"] != username or "objectRef" not in event:
            continue  # discovery (/api, /apis) has no objectRef and is allowed to everyone
        ref = event["objectRef"]
        resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        calls.append({
            "verb": event["verb"], "group": ref.get("apiGroup", ""), "resource": resource,
            "namespace": ref.get("namespace"), "code": event.get("responseStatus", {}).get("code"),
            "decision": event.get("annotations", {}).get("authorization.k8s.io/decision"),
            "uri": event["requestURI"],
        })
    return calls


def rule_allows(rule: dict, verb: str, group: str, resource: str) -> bool:
    """Whether one RBAC PolicyRule allows (verb, group, resource)."""
    return group in rule.get("apiGroups", []) and resource in rule.get("resources", []) and verb in rule["verbs"]


__all__ = ["CHART", "REPO", "RELEASE_NS", "OperatorProcess", "audit_calls", "free_port", "manifest_docs",
           "operator_from_release", "rule_allows", "run_helm"]
