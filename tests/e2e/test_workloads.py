"""e2e: the node itself and other workloads on it — node status and lease, init containers, Jobs, claims
re-created empty, and features the agent refuses with a clear reason instead of ignoring."""

from __future__ import annotations

import os

import pytest

from tests.support.waiting import wait_for

from .conftest import PROBE_SERVER, LocalCluster, http_get, http_put, is_ready

pytestmark = pytest.mark.e2e


def ready_pod(cluster: LocalCluster, ns: str, name: str) -> dict:
    return wait_for(
        lambda: (p := cluster.get("pod", name, ns)) and is_ready(p) and p,
        timeout=90, interval=0.5, what=f"{name} ready",
    )


def test_unsupported_features_are_reported_not_ignored(local_cluster, e2e_namespace):
    base = {"apiVersion": "v1", "kind": "Pod"}
    exec_probe = {**base, "metadata": {"name": "exec-probe", "namespace": e2e_namespace}, "spec": {"containers": [
        {"name": "main", "image": "none", "command": ["sleep", "60"],
         "readinessProbe": {"exec": {"command": ["true"]}}}]}}
    no_command = {**base, "metadata": {"name": "image-only", "namespace": e2e_namespace}, "spec": {"containers": [
        {"name": "main", "image": "busybox"}]}}
    missing = {**base, "metadata": {"name": "no-secret", "namespace": e2e_namespace}, "spec": {"containers": [
        {"name": "main", "image": "none", "command": ["sleep", "60"]}],
        "volumes": [{"name": "s", "secret": {"secretName": "absent"}}]}}
    sidecar = {**base, "metadata": {"name": "sidecar", "namespace": e2e_namespace}, "spec": {
        "initContainers": [{"name": "side", "image": "none", "command": ["sleep", "60"], "restartPolicy": "Always"}],
        "containers": [{"name": "main", "image": "none", "command": ["sleep", "60"]}]}}
    local_cluster.apply(exec_probe, no_command, missing, sidecar)
    expected = {
        "exec-probe": ("CreateContainerConfigError", "unsupported probe"),
        "image-only": ("CreateContainerConfigError", "has no command"),
        "no-secret": ("ContainerCreating", 'secret "absent" not found'),
    }
    side = wait_for(
        lambda: ((local_cluster.get("pod", "sidecar", e2e_namespace).get("status")
            or {}).get("initContainerStatuses") or [{}])[0].get("state", {}).get("waiting"),
        timeout=90, interval=0.5, what="sidecar refused",
    )
    assert side["reason"] == "CreateContainerConfigError" and "sidecar" in side["message"]
    for name, (reason, text) in expected.items():
        def waiting(name=name):
            p = local_cluster.get("pod", name, e2e_namespace)
            w = ((p.get("status") or {}).get("containerStatuses") or [{}])[0].get("state", {}).get("waiting")
            return w if w and w.get("message") else None

        state = wait_for(waiting, timeout=30, interval=0.5, what=f"{name} waiting with a reason")
        assert state["reason"] == reason and text in state["message"], (name, state)
        assert local_cluster.get("pod", name, e2e_namespace)["status"]["phase"] == "Pending"


def test_node_is_ready_with_capacity_and_a_renewed_lease(local_cluster):
    node = local_cluster.get("node", "chronoshard-dev", "")
    ready = {c["type"]: c for c in node["status"]["conditions"]}["Ready"]
    assert ready["status"] == "True"
    assert node["status"]["addresses"][0] == {"type": "InternalIP", "address": "127.0.0.1"}
    assert int(node["status"]["capacity"]["cpu"]) == os.cpu_count()
    assert node["metadata"]["labels"]["chronoshard.io/process-node"] == "true"
    lease = local_cluster.get("lease", "chronoshard-dev", "kube-node-lease")
    first = lease["spec"]["renewTime"]
    assert lease["spec"]["holderIdentity"] == "chronoshard-dev"
    wait_for(
        lambda: local_cluster.get("lease", "chronoshard-dev", "kube-node-lease")
            ["spec"]["renewTime"] != first,
        timeout=25, interval=0.5, what="lease renewed",
    )


def test_a_recreated_claim_is_a_new_empty_volume(local_cluster, e2e_namespace):
    def objects():
        claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                 "metadata": {"name": "store", "namespace": e2e_namespace},
                 "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "user", "namespace": e2e_namespace},
               "spec": {"terminationGracePeriodSeconds": 2, "containers": [{
                   "name": "web", "image": "none", "command": ["python", str(PROBE_SERVER)],
                   "args": ["--host", "$(POD_IP)", "--port", "8080", "--data-dir", "/data"],
                   "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                   "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1},
                   "volumeMounts": [{"name": "d", "mountPath": "/data"}]}],
                   "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "store"}}]}}
        return claim, pod

    local_cluster.apply(*objects())
    pod = ready_pod(local_cluster, e2e_namespace, "user")
    ip = pod["status"]["podIP"]
    assert http_put(f"http://{ip}:8080/data/marker", b"old data") == 204
    pv = local_cluster.get("pvc", "store", e2e_namespace)["spec"]["volumeName"]
    assert local_cluster.get("pv", pv, "")["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    local_cluster.kubectl("delete", "pod", "user", "-n", e2e_namespace, "--wait=true", "--timeout=30s")
    local_cluster.kubectl("delete", "pvc", "store", "-n", e2e_namespace, "--wait=true", "--timeout=30s")
    local_cluster.apply(*objects())
    pod = ready_pod(local_cluster, e2e_namespace, "user")
    assert http_get(f"http://{pod['status']['podIP']}:8080/data/marker")[0] == 404
    assert local_cluster.get("pvc", "store", e2e_namespace)["spec"]["volumeName"] != pv


def test_init_containers_run_in_order_before_the_app_and_failures_follow_the_restart_policy(
    local_cluster, e2e_namespace
):
    def pod(name, policy, second_exit):
        step = "import pathlib, sys; p = pathlib.Path('/shared/out.txt'); "
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": e2e_namespace},
                "spec": {"restartPolicy": policy, "initContainers": [
                    {"name": "first", "image": "none", "command": ["python", "-c", step + "p.write_text('first\\n')"]},
                    {"name": "second", "image": "none", "command": [
                        "python", "-c", step + f"p.write_text(p.read_text() + 'second\\n'); sys.exit({second_exit})"]},
                ], "containers": [{
                    "name": "web", "image": "none", "command": ["python", str(PROBE_SERVER)],
                    "args": ["--host", "$(POD_IP)", "--port", "8080", "--data-dir", "/shared"],
                    "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1},
                }], "volumes": [{"name": "work", "emptyDir": {}}]}}

    objs = [pod("init-ok", "Always", 0), pod("init-fails", "Never", 3), pod("init-retries", "Always", 4)]
    for obj in objs:
        for c in obj["spec"]["initContainers"] + obj["spec"]["containers"]:
            # Not /work: the checkout lives there, and mount paths are rewritten in arguments.
            c["volumeMounts"] = [{"name": "work", "mountPath": "/shared"}]
    local_cluster.apply(*objs)

    ok = ready_pod(local_cluster, e2e_namespace, "init-ok")
    assert http_get(f"http://{ok['status']['podIP']}:8080/data/out.txt") == (200, b"first\nsecond\n")
    inits = ok["status"]["initContainerStatuses"]
    assert [(s["name"], s["state"]["terminated"]["exitCode"]) for s in inits] == [("first", 0), ("second", 0)]
    assert {c["type"]: c["status"] for c in ok["status"]["conditions"]}["Initialized"] == "True"

    failed = wait_for(
        lambda: (p := local_cluster.get("pod", "init-fails", e2e_namespace))
            and p["status"].get("phase") == "Failed" and p,
        timeout=90, interval=0.5, what="init-fails Failed",
    )
    assert failed["status"]["initContainerStatuses"][1]["state"]["terminated"]["exitCode"] == 3
    assert "waiting" in failed["status"]["containerStatuses"][0]["state"], "the app never started"

    def retried():
        p = local_cluster.get("pod", "init-retries", e2e_namespace)
        inits = (p.get("status") or {}).get("initContainerStatuses") or []
        return len(inits) == 2 and inits[1]["restartCount"] >= 1 and p

    retrying = wait_for(retried, timeout=30, interval=0.5, what="init-retries restarting its init container")
    assert retrying["status"]["phase"] == "Pending"
    assert {c["type"]: c["status"] for c in retrying["status"]["conditions"]}["Initialized"] == "False"
    assert retrying["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "PodInitializing"
    logs = local_cluster.kubectl("get", "pod", "init-retries", "-n", e2e_namespace).stdout
    assert "Init:" in logs, "kubectl shows the init progress"


def test_a_job_runs_to_completion(local_cluster, e2e_namespace):
    local_cluster.apply({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once", "namespace": e2e_namespace},
        "spec": {"completions": 2, "parallelism": 2, "backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "none", "command": ["python", "-c", "print('done')"]}]}}},
    })

    def complete():
        job = local_cluster.get("job", "once", e2e_namespace)
        conds = {c["type"]: c["status"] for c in (job.get("status") or {}).get("conditions") or []}
        return conds.get("Complete") == "True" and job

    job = wait_for(complete, timeout=60, interval=0.5, what="Job complete")
    assert job["status"]["succeeded"] == 2
