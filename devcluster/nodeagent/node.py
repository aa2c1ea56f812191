"""The Node object and its heartbeat (status + Lease in kube-node-lease), as a kubelet keeps them."""

from __future__ import annotations

import datetime as dt
import os
import platform
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
PROCESS_NODE_LABEL = "chronoshard.io/process-node"
AGENT_VERSION = "v1.35.4-chronoshard-dev"


def now_rfc3339() -> str:
    """The current UTC time as Kubernetes writes it (seconds precision)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _memory_bytes() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def node_labels(name: str) -> dict[str, str]:
    """Labels the agent's Node carries; pods select it by these (nodeSelector)."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch,
        PROCESS_NODE_LABEL: "true",
    }


def node_status(
    host_ip: str, hostname: str, max_pods: int, kubelet_port: int = 0, since: str | None = None
) -> dict[str, Any]:
    """A Ready node status with this machine's capacity, loopback address and log endpoint port.

    ``since`` is when the conditions last changed (the agent's start): heartbeats move only lastHeartbeatTime.
    """
    now = now_rfc3339()
    since = since or now
    capacity = {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{_memory_bytes() // 1024}Ki",
        "pods": str(max_pods),
        "ephemeral-storage": "100Gi",
    }

    def cond(ctype: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {
            "type": ctype, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": since,
        }

    return {
        "capacity": capacity,
        "allocatable": capacity,
        # No Hostname address: the API server prefers it for reaching the kubelet API (kubectl logs), and
        # the node's name does not resolve; the InternalIP does.
        "addresses": [{"type": "InternalIP", "address": host_ip}],
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "chronoshard-dev has sufficient memory"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "chronoshard-dev has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "chronoshard-dev has sufficient PID"),
            cond("Ready", "True", "KubeletReady", "chronoshard-dev node agent is posting ready status"),
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": platform.release(),
            "osImage": "chronoshard-dev (processes, no containers)", "containerRuntimeVersion": "process://0.1",
            "kubeletVersion": AGENT_VERSION, "kubeProxyVersion": "", "operatingSystem": "linux",
            "architecture": node_labels(hostname)["kubernetes.io/arch"],
        },
    }


class NodeHeartbeat:
    """Registers the Node and renews its status and Lease."""

    def __init__(
        self, core: client.CoreV1Api, coord: client.CoordinationV1Api, name: str, host_ip: str, kubelet_port: int = 0
    ) -> None:
        self.core, self.coord, self.name, self.host_ip = core, coord, name, host_ip
        self.kubelet_port = kubelet_port
        self.since = now_rfc3339()
        self.labels = node_labels(name)

    def register(self) -> None:
        """Create the Node if missing (or re-label it), then post a Ready status."""
        body = client.V1Node(
            api_version="v1", kind="Node", metadata=client.V1ObjectMeta(name=self.name, labels=self.labels)
        )
        try:
            self.core.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            self.core.patch_node(self.name, {"metadata": {"labels": self.labels}})
        self._post()

    def beat(self) -> None:
        """Post the node status and renew the Lease (re-registering a Node someone deleted)."""
        try:
            self._post()
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.register()

    def _post(self) -> None:
        status = node_status(self.host_ip, self.name, 110, self.kubelet_port, self.since)
        self.core.patch_node_status(self.name, {"status": status})
        renew = dt.datetime.now(dt.UTC)
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": renew.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
        try:
            self.coord.patch_namespaced_lease(self.name, LEASE_NAMESPACE, {"spec": spec})
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.coord.create_namespaced_lease(LEASE_NAMESPACE, self._lease(renew))

    def _lease(self, renew: dt.datetime) -> client.V1Lease:
        # The client writes a datetime with isoformat(), which drops a zero fraction; a Lease's renewTime is a
        # MicroTime and the API server rejects it without one.
        renew = renew.replace(microsecond=renew.microsecond or 1)
        return client.V1Lease(
            api_version="coordination.k8s.io/v1", kind="Lease",
            metadata=client.V1ObjectMeta(name=self.name, namespace=LEASE_NAMESPACE),
            spec=client.V1LeaseSpec(holder_identity=self.name, lease_duration_seconds=LEASE_SECONDS, renew_time=renew),
        )
