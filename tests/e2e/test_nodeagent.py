"""e2e: the node agent runs a StatefulSet's pods as processes, the way a kubelet would.

The container command is tests/e2e/probe_server.py (a clearly named test server), so these tests
check the agent itself, independent of the shard-node commands.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import ssl
import subprocess
import threading
import uuid

import pytest
from chronoshard.devcluster.nodeagent.process import descendants, proc_start_time
from chronoshard.devcluster.nodeagent.volumes import read_snapshot

from tests.support.waiting import wait_for

from .conftest import PROBE_SERVER, LocalCluster, dev, http_get, http_put, is_ready

pytestmark = pytest.mark.e2e

NAME = "web"


def keys_secret(ns: str, generation: int) -> dict:
    # Every file names the generation, so a reader can tell a mixed set from a consistent one.
    files = {f"v{i}.key": f"generation={generation} key={i}".encode() * 64 for i in range(4)}
    files["keyring.json"] = json.dumps({"generation": generation}).encode()
    return {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web-keys", "namespace": ns},
        "data": {k: base64.b64encode(v).decode() for k, v in files.items()},
    }


def statefulset(ns: str) -> list[dict]:
    container = {
        "name": "web",
        "image": "example.invalid/never-pulled:test",
        "command": ["python", str(PROBE_SERVER)],
        "args": ["--host", "$(POD_IP)", "--port", "8080", "--data-dir", "/data", "--unready-file", "/scratch/unready"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "workingDir": "/scratch",
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "SELF_URL", "value": "http://$(POD_IP):8080"},
            {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "web-config", "key": "greeting"}}},
            {"name": "KEYS_DIR", "value": "/etc/keys"},
        ],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2},
        "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "keys", "mountPath": "/etc/keys", "readOnly": True},
            {"name": "scratch", "mountPath": "/scratch"},
        ],
    }
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config", "namespace": ns},
         "data": {"greeting": "hello"}},
        keys_secret(ns, 1),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": NAME, "namespace": ns},
         "spec": {"clusterIP": "None", "selector": {"app": NAME}, "ports": [{"name": "http", "port": 8080}]}},
        {
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": NAME, "namespace": ns},
            "spec": {
                "serviceName": NAME, "replicas": 3, "selector": {"matchLabels": {"app": NAME}},
                "template": {
                    "metadata": {"labels": {"app": NAME}},
                    "spec": {
                        "terminationGracePeriodSeconds": 5,
                        "containers": [container],
                        "volumes": [{"name": "keys", "secret": {"secretName": "web-keys"}},
                                    {"name": "scratch", "emptyDir": {}}],
                    },
                },
                "volumeClaimTemplates": [{
                    "metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                }],
            },
        },
    ]


@pytest.fixture(scope="module")
def web(local_cluster: LocalCluster):
    ns = f"e2e-{uuid.uuid4().hex[:8]}"
    local_cluster.kubectl("create", "namespace", ns)
    local_cluster.apply(*statefulset(ns))
    wait_for(
        lambda: len([p for p in local_cluster.pods(ns, f"app={NAME}") if is_ready(p)]) == 3,
        timeout=90, interval=0.5, what="3 ready web pods",
    )
    yield ns
    local_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def ready_pod(cluster: LocalCluster, ns: str, name: str) -> dict:
    return wait_for(
        lambda: (p := cluster.get("pod", name, ns)) and is_ready(p) and p,
        timeout=90, interval=0.5, what=f"{name} ready",
    )


def test_pods_run_on_distinct_loopback_ips_with_downward_api_env(local_cluster, web):
    pods = local_cluster.pods(web, f"app={NAME}")
    ips = [p["status"]["podIP"] for p in pods]
    assert len(set(ips)) == 3 and all(ip.startswith("127.") and ip != "127.0.0.1" for ip in ips)
    # Secret volumes (key material) live under a tree only this user can enter.
    assert (local_cluster.state_dir / "agent" / "pods").stat().st_mode & 0o777 == 0o700
    for pod in pods:
        ip, name = pod["status"]["podIP"], pod["metadata"]["name"]
        assert pod["spec"]["nodeName"] == "chronoshard-dev"
        assert pod["status"]["hostIP"] == "127.0.0.1" and pod["status"]["podIPs"] == [{"ip": ip}]
        assert http_get(f"http://{ip}:8080/healthz") == (200, b"ok")
        assert http_get(f"http://{ip}:8080/env/POD_NAME") == (200, name.encode())
        assert http_get(f"http://{ip}:8080/env/POD_NAMESPACE") == (200, web.encode())
        assert http_get(f"http://{ip}:8080/env/SELF_URL") == (200, f"http://{ip}:8080".encode())
        assert http_get(f"http://{ip}:8080/env/GREETING") == (200, b"hello")
        assert http_get(f"http://{ip}:8080/env/TMPDIR")[0] == 404, "no volume at /tmp, no TMPDIR"
        scratch = local_cluster.pod_dir(pod) / "volumes" / "scratch"
        assert http_get(f"http://{ip}:8080/cwd") == (200, str(scratch).encode()), "workingDir under a mount"
        keys_dir = http_get(f"http://{ip}:8080/env/KEYS_DIR")[1].decode()
        assert keys_dir == str(local_cluster.pod_dir(pod) / "volumes" / "keys"), "mount path mapped to the volume"
        (status,) = pod["status"]["containerStatuses"]
        assert status["ready"] and status["started"] and "running" in status["state"]
        pvc = local_cluster.get("pvc", f"data-{name}", web)
        assert pvc["status"]["phase"] == "Bound"


def test_secret_update_reaches_the_volume_atomically(local_cluster, web):
    pod = local_cluster.get("pod", f"{NAME}-0", web)
    volume = local_cluster.pod_dir(pod) / "volumes" / "keys"
    assert json.loads((volume / "keyring.json").read_text())["generation"] == 1
    stop = threading.Event()
    seen: list[set[str]] = []

    def reader():
        while not stop.is_set():
            files = read_snapshot(volume)
            seen.append({v.split(b" ")[0].decode() for k, v in files.items() if k.endswith(".key")}
                        | {f"generation={json.loads(files['keyring.json'])['generation']}"})

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for generation in range(2, 7):
            local_cluster.apply(keys_secret(web, generation))
            wait_for(
                lambda g=generation: json.loads((volume / "keyring.json").read_text())["generation"] == g,
                timeout=30, interval=0.05, what=f"generation {generation} mounted",
            )
    finally:
        stop.set()
        thread.join()
    mixed = [s for s in seen if len(s) != 1]
    assert not mixed, f"a reader saw a half-updated volume: {mixed[:3]}"
    assert {next(iter(s)) for s in seen} >= {"generation=1", "generation=6"}
    assert (volume / "..data").is_symlink() and os.readlink(volume / "keyring.json") == "..data/keyring.json"


def test_readiness_probe_failure_makes_the_pod_unready_and_back(local_cluster, web):
    pod = ready_pod(local_cluster, web, f"{NAME}-1")
    flag = local_cluster.pod_dir(pod) / "volumes" / "scratch" / "unready"
    flag.write_text("x")
    try:
        wait_for(
            lambda: not is_ready(local_cluster.get("pod", f"{NAME}-1", web)),
            timeout=30, interval=0.5, what="pod not ready",
        )
        status = local_cluster.get("pod", f"{NAME}-1", web)["status"]
        assert status["containerStatuses"][0]["ready"] is False and status["phase"] == "Running"
    finally:
        flag.unlink()
    ready_pod(local_cluster, web, f"{NAME}-1")


def test_killed_container_process_is_restarted_and_counted(local_cluster, web):
    pod = ready_pod(local_cluster, web, f"{NAME}-1")
    (status,) = pod["status"]["containerStatuses"]
    before = status["restartCount"]
    shim = int(status["containerID"].removeprefix("process://"))
    (server,) = descendants(shim)
    os.kill(server, signal.SIGKILL)

    def restarted():
        p = local_cluster.get("pod", f"{NAME}-1", web)
        s = p["status"]["containerStatuses"][0]
        return s["restartCount"] > before and is_ready(p) and s

    status = wait_for(restarted, timeout=60, interval=0.5, what="restart")
    assert status["lastState"]["terminated"]["exitCode"] == 128 + signal.SIGKILL
    assert proc_start_time(server) is None
    ip = local_cluster.get("pod", f"{NAME}-1", web)["status"]["podIP"]
    assert ip == pod["status"]["podIP"], "the pod keeps its IP across container restarts"
    assert http_get(f"http://{ip}:8080/healthz") == (200, b"ok")
    logs = dev(local_cluster.state_dir, "logs", f"{NAME}-1", "-n", web, "--previous")
    assert logs.returncode == 0 and "probe_server listening" in logs.stdout


def test_deleted_pod_comes_back_with_the_same_volume_and_data(local_cluster, web):
    pod = ready_pod(local_cluster, web, f"{NAME}-2")
    ip = pod["status"]["podIP"]
    marker = uuid.uuid4().hex.encode()
    assert http_put(f"http://{ip}:8080/data/marker", marker) == 204
    claim = local_cluster.get("pvc", f"data-{NAME}-2", web)
    host_file = (local_cluster.state_dir / "agent" / "volumes" / web
                 / f"data-{NAME}-2-{claim['metadata']['uid']}" / "marker")
    assert host_file.read_bytes() == marker
    old_uid = pod["metadata"]["uid"]
    local_cluster.kubectl("delete", "pod", f"{NAME}-2", "-n", web, "--wait=false")
    new = wait_for(
        lambda: (p := local_cluster.get("pod", f"{NAME}-2", web))
            and p["metadata"]["uid"] != old_uid and is_ready(p) and p,
        timeout=60, interval=0.5, what="a new web-2",
    )
    assert http_get(f"http://{new['status']['podIP']}:8080/data/marker") == (200, marker)
    assert not local_cluster.pod_dir(pod).exists(), "the old pod's directory is cleaned up"


def test_kubectl_logs_reach_the_agent_through_the_api_server(local_cluster, web):
    pod = ready_pod(local_cluster, web, f"{NAME}-0")
    out = local_cluster.kubectl("logs", f"{NAME}-0", "-n", web).stdout
    assert f"probe_server listening on {pod['status']['podIP']}:8080" in out
    assert len(local_cluster.kubectl("logs", f"{NAME}-0", "-n", web, "--tail=2").stdout.splitlines()) == 2
    # Only the API server (with its kubelet client certificate) gets in; another local process does not.
    port = local_cluster.get("node", "chronoshard-dev", "")["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
    with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ssl._create_unverified_context())
        conn.request("GET", f"/containerLogs/{web}/{NAME}-0/web")
        conn.getresponse().read()
    # -f streams: the probes hit the server every second or two and it logs each request.
    follow = subprocess.Popen(
        [str(local_cluster.bin_dir / "kubectl"), f"--kubeconfig={local_cluster.kubeconfig}",
         "logs", "-f", "--tail=0", f"{NAME}-0", "-n", web],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = follow.stdout.readline()
        assert "GET /readyz" in line or "GET /healthz" in line
    finally:
        follow.kill()
        follow.wait()
