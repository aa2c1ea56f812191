"""Shared helpers for the chart tests: the pinned tools (hack/tools.sh) and helm template rendering."""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "chronoshard"

# kube-score checks we deliberately do not apply; each is explained in charts/chronoshard/README.md.
KUBE_SCORE_SKIPS = {
    "container-cpu-limit": "a CPU limit throttles the event loop during watch storms",
    "container-image-pull-policy": "images are pinned by tag or digest; IfNotPresent survives a registry outage",
    "deployment-strategy": "Recreate on purpose: Kopf must never run two active copies",
    "deployment-replicas": "one replica on purpose: Kopf peering keeps a single active copy",
}
KUBE_SCORE_OPTIONAL = [
    "container-seccomp-profile",
    "container-ports-check",
    "container-memory-requests-equal-limits",
    "container-ephemeral-storage-request-equals-limit",
]


@cache
def tools_bin() -> Path:
    """Directory with helm, kubeconform and kube-score, built once by hack/tools.sh (cached outside the repo)."""
    if os.environ.get("CHRONOSHARD_TOOLS_BIN"):  # hack/test.sh ran hack/tools.sh already
        return Path(os.environ["CHRONOSHARD_TOOLS_BIN"])
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "tools.sh")], capture_output=True, text=True, timeout=1800, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return Path(out.stdout.strip().splitlines()[-1])


def helm(*args: str, check: bool = True, input: str | None = None, timeout: float = 120,
         env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the pinned helm."""
    result = subprocess.run(
        [str(tools_bin() / "helm"), *args], capture_output=True, text=True, timeout=timeout, input=input, env=env,
    )
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)}: {result.stderr}"
    return result


def render(*args: str, namespace: str = "chronoshard-system") -> list[dict]:
    """`helm template` of the chart with extra args, as parsed documents."""
    out = helm("template", "cs", str(CHART), "--namespace", namespace, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def render_text(*args: str, namespace: str = "chronoshard-system") -> str:
    """`helm template` output as text."""
    return helm("template", "cs", str(CHART), "--namespace", namespace, *args).stdout


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    """Documents of one kind."""
    return [d for d in docs if d["kind"] == kind]


def kube_score_args() -> list[str]:
    """kube-score options: the optional checks we add and the documented skips."""
    ignored = sorted(k for k in KUBE_SCORE_SKIPS if k != "container-cpu-limit")
    return [
        "--ignore-container-cpu-limit",
        "--enable-optional-test", ",".join(KUBE_SCORE_OPTIONAL),
        "--ignore-test", ",".join(ignored),
    ]
