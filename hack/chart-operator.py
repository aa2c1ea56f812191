#!/usr/bin/env python3
"""Run the operator of an installed chart release as a local process, as its pod would run it.

On the local cluster (`chronoshard-dev`) the chart's operator pod runs by itself (the node agent gives it
its ServiceAccount's credentials). Where no node agent runs pods (a bare envtest control plane, as in
tests/integration/charts/) or to run the operator from a shell (a debugger, say; install the release with
replicaCount=0 then), this script runs `chronoshard-operator` from this venv with exactly the command,
args and environment the release's rendered Deployment declares ($(POD_IP) is 127.0.0.1), signed in
with a TokenRequest token of the release's ServiceAccount, so the API server enforces the chart's
RBAC on every call. tests/integration/charts/ use the same functions.

    hack/chart-operator.py --release chronoshard --namespace chronoshard-system [--kubeconfig PATH]
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def expand_kubelet_vars(text: str, env: Mapping[str, str]) -> str:
    """Expand $(VAR) references as the kubelet does ($$ escapes, unknown references kept as written)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def operator_command(deployment: Mapping[str, Any], namespace: str, pod_ip: str = "127.0.0.1",
                     pod_name: str | None = None) -> tuple[list[str], dict[str, str], str]:
    """(argv, pod env, ServiceAccount name) the Deployment's single container would run with."""
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # Like a ReplicaSet's pod, each local copy gets a name of its own (Kopf peering tells copies apart by it).
    fields = {"status.podIP": pod_ip, "metadata.namespace": namespace,
              "metadata.name": pod_name or f"{deployment['metadata']['name']}-local-{secrets.token_hex(3)}"}
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand_kubelet_vars(item["value"], env)
        else:
            path = item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            if path not in fields:
                raise ValueError(f"env {item['name']}: unsupported source {item.get('valueFrom')}")
            env[item["name"]] = fields[path]
    argv = [expand_kubelet_vars(a, env) for a in container["command"] + container.get("args", [])]
    return argv, env, pod["serviceAccountName"]


def token_kubeconfig(server: str, ca_pem: bytes, token: str, user: str) -> dict[str, Any]:
    """A kubeconfig that signs in with a bearer token (the ServiceAccount's)."""
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "chart-operator",
        "clusters": [{"name": "cluster", "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "chart-operator", "context": {"cluster": "cluster", "user": user}}],
    }


def release_deployment(helm: str, kubeconfig: str, release: str, namespace: str) -> dict[str, Any]:
    """The release's operator Deployment as Helm rendered it."""
    out = subprocess.run([helm, f"--kubeconfig={kubeconfig}", "get", "manifest", release, "--namespace", namespace],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    (deploy,) = [d for d in yaml.safe_load_all(out) if d and d.get("kind") == "Deployment"]
    return deploy


def _admin_cluster(kubeconfig: str) -> tuple[str, bytes]:
    config = yaml.safe_load(Path(kubeconfig).read_text())
    current = config.get("current-context")
    context = next(c["context"] for c in config["contexts"] if c["name"] == current)
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    if "certificate-authority-data" in cluster:
        ca = base64.b64decode(cluster["certificate-authority-data"])
    else:
        ca = Path(cluster["certificate-authority"]).read_bytes()
    return cluster["server"], ca


def main(argv: list[str] | None = None) -> int:
    """Resolve the release's operator command, sign in as its ServiceAccount and run it until stopped."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--release", default="chronoshard")
    p.add_argument("--namespace", default="chronoshard-system")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="an admin kubeconfig (to mint the token)")
    args = p.parse_args(argv)
    if not args.kubeconfig:
        p.error("--kubeconfig (or KUBECONFIG) is required")
    tools = subprocess.run(["bash", str(ROOT / "hack" / "tools.sh"), "helm"], capture_output=True, text=True,
                           check=True).stdout.strip()
    kubectl = shutil.which("kubectl", path=os.environ.get("CHRONOSHARD_ENVTEST_BIN")) or shutil.which("kubectl")
    if not kubectl:
        p.error("kubectl not found (set CHRONOSHARD_ENVTEST_BIN to hack/envtest.sh's output)")
    deploy = release_deployment(str(Path(tools) / "helm"), args.kubeconfig, args.release, args.namespace)
    command, pod_env, sa = operator_command(deploy, args.namespace)
    token = subprocess.run([kubectl, f"--kubeconfig={args.kubeconfig}", "create", "token", sa,
                            "--namespace", args.namespace, "--duration=24h"],
                           capture_output=True, text=True, check=True).stdout.strip()
    server, ca = _admin_cluster(args.kubeconfig)
    workdir = Path(tempfile.mkdtemp(prefix="chart-operator-"))
    sa_config = workdir / "kubeconfig"
    sa_config.write_text(yaml.safe_dump(token_kubeconfig(server, ca, token, sa)))
    sa_config.chmod(0o600)
    exe = shutil.which(command[0], path=str(Path(sys.executable).parent)) or shutil.which(command[0])
    if not exe:
        p.error(f"{command[0]} is not installed (pip install -e .)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(pod_env, KUBECONFIG=str(sa_config))
    print(f"running as ServiceAccount {args.namespace}/{sa}: {' '.join(command)}", file=sys.stderr)
    os.execve(exe, [exe, *command[1:]], env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
