"""e2e: chronoshard-dev's own lifecycle — up is idempotent, a restarted agent adopts running containers,
down stops every process it started (checked by PID and kernel start time)."""

from __future__ import annotations

import json
import os
import signal
import tempfile
from pathlib import Path

import pytest
from chronoshard.devcluster.cli import all_pids
from chronoshard.devcluster.nodeagent.process import descendants, proc_start_time

from tests.support.waiting import wait_for

from .conftest import PROBE_SERVER, dev, http_get, is_ready, start_cluster

pytestmark = pytest.mark.e2e


def test_up_reuse_agent_restart_adoption_and_down_leaves_nothing():
    state = Path(tempfile.mkdtemp(prefix="chronoshard-dev-life-"))
    cluster = start_cluster(state, "--no-operator")
    try:
        first = json.loads((state / "dev.json").read_text())["processes"]
        again = dev(state, "up", "--no-operator")
        assert again.returncode == 0 and "reusing" in again.stderr
        assert json.loads((state / "dev.json").read_text())["processes"]["controlplane"] == first["controlplane"]
        status = dev(state, "status")
        assert status.returncode == 0 and "nodeagent" in status.stdout
        assert dev(state, "kubeconfig").stdout.strip() == str(cluster.kubeconfig)

        cluster.apply({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "survivor", "namespace": "default"},
            "spec": {"containers": [{
                "name": "web", "image": "none", "command": ["python", str(PROBE_SERVER)],
                "args": ["--host", "$(POD_IP)", "--port", "8080"],
                "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1},
            }]},
        })
        cluster.apply({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "done", "namespace": "default"},
            "spec": {"restartPolicy": "Never", "containers": [
                {"name": "once", "image": "none", "command": ["python", "-c", "print('ran once')"]}]},
        })
        done = wait_for(
            lambda: (p := cluster.get("pod", "done", "default"))
                and p["status"].get("phase") == "Succeeded" and p,
            timeout=90, interval=0.5, what="done Succeeded",
        )
        pod = wait_for(
            lambda: (p := cluster.get("pod", "survivor", "default")) and is_ready(p) and p,
            timeout=90, interval=0.5, what="survivor ready",
        )
        container_id = pod["status"]["containerStatuses"][0]["containerID"]
        shim = int(container_id.removeprefix("process://"))

        # The agent dies hard; the container keeps running and a new agent adopts it instead of restarting it.
        os.kill(first["nodeagent"]["pid"], signal.SIGKILL)
        restarted = dev(state, "up", "--no-operator")
        assert restarted.returncode == 0, restarted.stderr
        new_agent = json.loads((state / "dev.json").read_text())["processes"]["nodeagent"]
        assert new_agent["pid"] != first["nodeagent"]["pid"]
        assert proc_start_time(shim) is not None

        def adopted_and_ready():
            p = cluster.get("pod", "survivor", "default")
            s = p["status"]["containerStatuses"][0]
            return is_ready(p) and s["containerID"] == container_id and s["restartCount"] == 0 and p

        # Readiness is re-probed by the new agent; wait for a status it wrote after adopting.
        wait_for(adopted_and_ready, timeout=30, interval=0.5, what="adopted")
        ip = pod["status"]["podIP"]
        assert http_get(f"http://{ip}:8080/healthz") == (200, b"ok")

        # The adopted container is really managed: killing it makes the new agent restart it.
        (server,) = descendants(shim)
        os.kill(server, signal.SIGKILL)
        wait_for(
            lambda: cluster.get("pod", "survivor", "default")["status"]
                ["containerStatuses"][0]["restartCount"] == 1,
            timeout=30, interval=0.5, what="restart by the new agent",
        )

        # A container that finished for good is not run again by the new agent (which has synced by now).
        logs = cluster.pod_dir(done) / "logs" / "once"
        assert sorted(p.name for p in logs.iterdir()) == ["0.log"]
        assert cluster.get("pod", "done", "default")["status"]["phase"] == "Succeeded"

        before = all_pids(state)
        survivor_status = cluster.get("pod", "survivor", "default")["status"]
        container_before_down = survivor_status["containerStatuses"][0]["containerID"]
        assert len(before) >= 6, before  # keeper, etcd, apiserver, controller-manager, agent, shim, container
    finally:
        down = dev(state, "down")
    assert down.returncode == 0, down.stderr
    left = [pid for pid, start in before.items() if proc_start_time(pid) == start]
    assert left == [], f"still running after down: {left}"
    assert dev(state, "status").returncode == 1

    # Like a node reboot: etcd and the agent's state survive down/up; the pod comes back and runs again.
    try:
        cluster = start_cluster(state, "--no-operator")
        # etcd still holds the Ready status written before down: wait for one the new agent wrote about the
        # container it started after the "reboot" (a new container ID), not for the stale one.
        back = wait_for(
            lambda: (p := cluster.get("pod", "survivor", "default")) and is_ready(p)
                and p["status"]["containerStatuses"][0]["containerID"] != container_before_down and p,
            timeout=60, interval=0.5, what="survivor back in a new container",
        )
        assert back["metadata"]["uid"] == pod["metadata"]["uid"] and back["status"]["podIP"] == ip
        assert http_get(f"http://{ip}:8080/healthz") == (200, b"ok")
    finally:
        purge = dev(state, "down", "--purge")
    assert purge.returncode == 0, purge.stderr
    assert not state.exists()
