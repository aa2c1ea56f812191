"""e2e fixtures: a whole local cluster (control plane + operator + node agent) started by ``chronoshard-dev up``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PROBE_SERVER = Path(__file__).resolve().parent / "probe_server.py"


def dev(state: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``chronoshard-dev`` (this checkout's) with ``--state-dir state``."""
    return subprocess.run(
        [sys.executable, "-m", "chronoshard.devcluster.cli", "--state-dir", str(state), *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


@dataclass
class LocalCluster:
    """A running local cluster: its state dir and helpers to drive it."""

    state_dir: Path
    kubeconfig: Path
    bin_dir: Path

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, timeout=60, check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}")
        return proc

    def apply(self, *objs: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        proc = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return json.loads(self.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout)["items"]

    def pod_dir(self, pod: dict[str, Any]) -> Path:
        return self.state_dir / "agent" / "pods" / pod["metadata"]["uid"]


def is_ready(pod: dict[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return pod["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conds
    )


def http_get(url: str, timeout: float = 3) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_put(url: str, body: bytes) -> int:
    req = urllib.request.Request(url, data=body, method="PUT")
    with urllib.request.urlopen(req, timeout=3) as resp:
        return resp.status


def start_cluster(state: Path, *extra: str) -> LocalCluster:
    up = dev(state, "up", "--backoff-base", "1", *extra)
    assert up.returncode == 0, f"chronoshard-dev up failed:\n{up.stdout}\n{up.stderr}"
    info = json.loads((state / "dev.json").read_text())["controlplane"]
    return LocalCluster(state_dir=state, kubeconfig=Path(info["kubeconfig"]), bin_dir=Path(info["bin_dir"]))


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    """``chronoshard-dev up`` in a temporary state dir for the session; ``down`` (checked) afterwards."""
    state = Path(tempfile.mkdtemp(prefix="chronoshard-dev-e2e-"))
    cluster = start_cluster(state)
    try:
        yield cluster
    finally:
        down = dev(state, "down")
        if down.returncode != 0:
            raise AssertionError(f"chronoshard-dev down failed:\n{down.stdout}\n{down.stderr}")
        if not os.environ.get("CHRONOSHARD_KEEP_E2E"):
            dev(state, "down", "--purge")


@pytest.fixture()
def e2e_namespace(local_cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace in the local cluster, deleted afterwards."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    local_cluster.kubectl("create", "namespace", name)
    yield name
    local_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
