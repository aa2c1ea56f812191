"""e2e: single pods on the node agent — deletion and signals, node selection, restart policies, probes."""

from __future__ import annotations

import signal
import time

import pytest
from chronoshard.devcluster.nodeagent.process import descendants, proc_start_time

from tests.support.waiting import wait_for

from .conftest import PROBE_SERVER, LocalCluster, http_get, is_ready

pytestmark = pytest.mark.e2e


def ready_pod(cluster: LocalCluster, ns: str, name: str) -> dict:
    return wait_for(
        lambda: (p := cluster.get("pod", name, ns)) and is_ready(p) and p,
        timeout=90, interval=0.5, what=f"{name} ready",
    )


def test_graceful_delete_sends_sigterm_then_sigkill_after_the_grace_period(local_cluster, e2e_namespace):
    code = ("import signal, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: print('got SIGTERM, ignoring', flush=True))\n"
            "print('up', flush=True)\ntime.sleep(600)\n")
    local_cluster.apply({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stubborn", "namespace": e2e_namespace},
        "spec": {"terminationGracePeriodSeconds": 3,
                 "containers": [{"name": "main", "image": "none", "command": ["python", "-c", code]}]},
    })
    pod = ready_pod(local_cluster, e2e_namespace, "stubborn")
    shim = int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("process://"))
    family = {shim, *descendants(shim)}
    log = local_cluster.pod_dir(pod) / "logs" / "main" / "0.log"
    # Ready comes with the process start (no probe); wait until its SIGTERM handler is installed.
    wait_for(lambda: "up" in log.read_text(), timeout=15, interval=0.1, what="handler installed")
    started = time.monotonic()
    local_cluster.kubectl("delete", "pod", "stubborn", "-n", e2e_namespace, "--wait=false")
    wait_for(lambda: "got SIGTERM" in log.read_text(), timeout=15, interval=0.1, what="SIGTERM delivered")
    assert any(proc_start_time(p) is not None for p in family), "still running during the grace period"
    wait_for(
        lambda: local_cluster.get("pod", "stubborn", e2e_namespace) is None,
        timeout=30, interval=0.5, what="pod object gone",
    )
    elapsed = time.monotonic() - started
    assert elapsed >= 3, f"killed before the grace period ended ({elapsed:.1f}s)"
    assert all(proc_start_time(p) is None for p in family)


def test_pods_for_other_nodes_stay_pending(local_cluster, e2e_namespace):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "elsewhere", "namespace": e2e_namespace},
           "spec": {"nodeSelector": {"disktype": "ssd"},
                    "containers": [{"name": "main", "image": "none", "command": ["sleep", "60"]}]}}
    here = {**pod, "metadata": {"name": "here", "namespace": e2e_namespace},
            "spec": {**pod["spec"], "nodeSelector": {"chronoshard.io/process-node": "true"}}}
    local_cluster.apply(pod, here)
    wait_for(
        lambda: (local_cluster.get("pod", "here", e2e_namespace) or {})
            .get("spec", {}).get("nodeName") == "chronoshard-dev",
        timeout=90, interval=0.5, what="selected pod bound",
    )
    # No fixed wait: the agent binds in passes over its whole pod cache, and its watch delivered "elsewhere"
    # (created first) before "here", so the pass that bound "here" had already declined "elsewhere".
    other = local_cluster.get("pod", "elsewhere", e2e_namespace)
    assert "nodeName" not in other["spec"] and other["status"]["phase"] == "Pending"


def test_restart_policies_and_exit_codes(local_cluster, e2e_namespace):
    def pod(name, policy, code):
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": e2e_namespace},
                "spec": {"restartPolicy": policy, "containers": [
                    {"name": "main", "image": "none", "command": ["python", "-c", f"import sys; sys.exit({code})"]}]}}

    local_cluster.apply(pod("fails", "Never", 3), pod("succeeds", "OnFailure", 0), pod("retries", "OnFailure", 4))
    failed = wait_for(
        lambda: (p := local_cluster.get("pod", "fails", e2e_namespace))
            and p["status"].get("phase") == "Failed" and p,
        timeout=90, interval=0.5, what="Failed",
    )
    state = failed["status"]["containerStatuses"][0]
    assert state["state"]["terminated"]["exitCode"] == 3 and state["restartCount"] == 0
    ok = wait_for(
        lambda: (p := local_cluster.get("pod", "succeeds", e2e_namespace))
            and p["status"].get("phase") == "Succeeded" and p,
        timeout=90, interval=0.5, what="Succeeded",
    )
    assert ok["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    retried = wait_for(
        lambda: (p := local_cluster.get("pod", "retries", e2e_namespace))
            and p["status"]["containerStatuses"][0]["restartCount"] >= 2 and p,
        timeout=90, interval=0.5, what="two restarts",
    )
    s = retried["status"]["containerStatuses"][0]
    assert retried["status"]["phase"] == "Running" and s["lastState"]["terminated"]["exitCode"] == 4


def test_liveness_failure_restarts_the_container_after_startup(local_cluster, e2e_namespace):
    local_cluster.apply({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sickly", "namespace": e2e_namespace},
        "spec": {"terminationGracePeriodSeconds": 5, "containers": [{
            "name": "web", "image": "none", "command": ["python", str(PROBE_SERVER)],
            "args": ["--host", "$(POD_IP)", "--port", "8080", "--unhealthy-file", "/scratch/sick"],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            # timeoutSeconds 5: with the default 1 s a loaded machine fails a healthy probe now and then, and the
            # spurious restarts back off past the wait below. The sick answer is immediate either way.
            "startupProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1, "failureThreshold": 30,
                             "timeoutSeconds": 5},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1, "failureThreshold": 2,
                              "timeoutSeconds": 5},
            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}, {"name": "tmp", "mountPath": "/tmp"}],
        }], "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]},
    })
    pod = ready_pod(local_cluster, e2e_namespace, "sickly")
    tmpdir = http_get(f"http://{pod['status']['podIP']}:8080/env/TMPDIR")
    assert tmpdir == (200, str(local_cluster.pod_dir(pod) / "volumes" / "tmp").encode())
    assert pod["status"]["containerStatuses"][0]["started"] is True
    sick = local_cluster.pod_dir(pod) / "volumes" / "scratch" / "sick"
    sick.write_text("x")

    def restarted():
        s = local_cluster.get("pod", "sickly", e2e_namespace)["status"]["containerStatuses"][0]
        return s["restartCount"] >= 1 and s

    status = wait_for(restarted, timeout=30, interval=0.5, what="liveness restart")
    sick.unlink()
    # The server exits on SIGTERM from the kill: 128 + 15.
    assert status["lastState"]["terminated"]["exitCode"] == 128 + signal.SIGTERM
    events = local_cluster.kubectl("get", "events", "-n", e2e_namespace, "-o", "json").stdout
    assert "Liveness probe failed" in events
    ready_pod(local_cluster, e2e_namespace, "sickly")


def test_force_deleted_pod_processes_are_stopped(local_cluster, e2e_namespace):
    local_cluster.apply({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "forced", "namespace": e2e_namespace},
        "spec": {"containers": [{"name": "main", "image": "none", "command": ["sleep", "600"]}]},
    })
    pod = ready_pod(local_cluster, e2e_namespace, "forced")
    shim = int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("process://"))
    family = {shim, *descendants(shim)}
    local_cluster.kubectl("delete", "pod", "forced", "-n", e2e_namespace, "--grace-period=0", "--force")
    wait_for(lambda: all(proc_start_time(p) is None for p in family), timeout=45, interval=0.5, what="processes gone")
    wait_for(lambda: not local_cluster.pod_dir(pod).exists(), timeout=10, interval=0.5, what="pod dir removed")
