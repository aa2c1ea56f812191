"""e2e: with a routable pod CIDR, Services' EndpointSlices list the pods' IPs and those answer.

The API server refuses loopback addresses in Endpoints/EndpointSlices, so with the default 127.x pod IPs
they stay empty. A range assigned to ``lo`` is local too and is accepted; assigning one needs
CAP_NET_ADMIN, which an unprivileged user gets inside its own user+network namespace (``unshare -rn``).
So this test re-runs itself inside such a namespace, with 10.88.0.0/16 on ``lo``, and starts a whole
local cluster there with ``--pod-cidr 10.88.0.0/16``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.waiting import wait_for

from .conftest import PROBE_SERVER, dev, http_get, is_ready, start_cluster

pytestmark = pytest.mark.e2e

IN_NETNS = "CHRONOSHARD_E2E_IN_NETNS"
POD_CIDR = "10.88.0.0/16"


def _in_namespace() -> None:
    unshare = shutil.which("unshare")
    assert unshare, "this test needs util-linux unshare (user + network namespaces)"
    if shutil.which("ip") is None:
        pytest.skip("iproute2's ip command is not installed (needed to put a range on lo)")
    probe = subprocess.run([unshare, "--user", "--map-root-user", "--net", "true"], capture_output=True, text=True,
                           check=False)
    if probe.returncode != 0:
        # Some hosts forbid unprivileged user namespaces (e.g. Ubuntu 24.04's AppArmor default): an environment
        # limit, not a missing feature; the reason is printed with the skip.
        pytest.skip(f"unprivileged user+network namespaces are not available here: {probe.stderr.strip()}")
    script = (
        "ip link set lo up && ip addr add 10.88.0.1/16 dev lo && "
        f'exec env {IN_NETNS}=1 "$0" -m pytest "$1" -q -p no:cacheprovider -k endpoint_slices'
    )
    proc = subprocess.run(
        [unshare, "--user", "--map-root-user", "--net", "sh", "-c", script, sys.executable, __file__],
        capture_output=True, text=True, timeout=280, cwd=Path(__file__).resolve().parents[2], check=False,
    )
    assert proc.returncode == 0, f"inner run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    assert "1 passed" in proc.stdout


def test_endpoint_slices_list_reachable_pod_ips():
    if os.environ.get(IN_NETNS) != "1":
        _in_namespace()
        return
    state = Path(tempfile.mkdtemp(prefix="chronoshard-dev-netns-"))
    cluster = start_cluster(state, "--no-operator", "--pod-cidr", POD_CIDR)
    try:
        ns = "default"
        container = {
            "name": "web", "image": "none", "command": ["python", str(PROBE_SERVER)],
            "args": ["--host", "$(POD_IP)", "--port", "8080"],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1},
        }
        cluster.apply(
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
             "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080}]}},
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
             "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                      "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [container]}}}},
        )
        pods = wait_for(
            lambda: [p for p in cluster.pods(ns, "app=web") if is_ready(p)]
                if len([p for p in cluster.pods(ns, "app=web") if is_ready(p)]) == 2 else None,
            timeout=90, interval=0.5, what="2 ready pods",
        )
        ips = {p["status"]["podIP"] for p in pods}
        assert all(ip.startswith("10.88.") for ip in ips)

        def slice_ips():
            out = cluster.kubectl("get", "endpointslices", "-n", ns, "-l", "kubernetes.io/service-name=web",
                                  "-o", "json").stdout
            return {a for s in json.loads(out)["items"] for e in s.get("endpoints") or []
                    if (e.get("conditions") or {}).get("ready") for a in e["addresses"]}

        wait_for(lambda: slice_ips() == ips, timeout=90, interval=0.5, what="EndpointSlice with both pod IPs")
        for ip in slice_ips():
            assert http_get(f"http://{ip}:8080/healthz") == (200, b"ok")
    finally:
        down = dev(state, "down", "--purge")
    assert down.returncode == 0, down.stderr
