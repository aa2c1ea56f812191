"""The floor for ``bench_operator_scale``: a trivial Kopf operator, one FloorObject → one ConfigMap.

    python -P tests/bench/floor_operator.py --metrics-port PORT   (KUBECONFIG names the cluster)

On create it makes a ConfigMap owned by the object and writes ``status.observedGeneration``, the same two things
the benchmark waits for on a ShardSet (its StatefulSet and its observed generation). Its handler's duration goes
into a histogram of the same name and buckets as the operator's reconcile histogram, so both are read alike.
Nothing else: no daemon, no resync, no other watch. This is what Kopf and the API server cost by themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Any

import kopf
from chronoshard.operator.metrics import RECONCILE_SECONDS, RECONCILES, start_metrics_server
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

GROUP, VERSION, PLURAL, KIND = "bench.chronoshard.io", "v1", "floorobjects", "FloorObject"

CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "floorobject", "kind": KIND},
        "versions": [{
            "name": VERSION, "served": True, "storage": True, "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
        }],
    },
}

_core: client.CoreV1Api | None = None


def core() -> client.CoreV1Api:
    global _core
    if _core is None:
        _core = client.CoreV1Api(config.new_client_from_config())
    return _core


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.enabled = False  # the floor posts no events (ours posts a few per ShardSet)


@kopf.on.create(GROUP, VERSION, PLURAL)
def created(name: str, namespace: str, uid: str, meta: kopf.Meta, patch: kopf.Patch, **_: Any) -> None:
    started = time.monotonic()
    cm = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(
            name=f"{name}-cm", namespace=namespace,
            owner_references=[client.V1OwnerReference(api_version=f"{GROUP}/{VERSION}", kind=KIND, name=name,
                                                      uid=uid, controller=True, block_owner_deletion=True)]),
        data={"owner": name},
    )
    try:
        core().create_namespaced_config_map(namespace, cm)
    except ApiException as exc:
        if exc.status != 409:
            raise
    patch.status["observedGeneration"] = meta.get("generation")
    RECONCILES.labels(kind=KIND, outcome="success").inc()
    RECONCILE_SECONDS.labels(kind=KIND).observe(time.monotonic() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics-port", type=int, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    start_metrics_server(args.metrics_port)
    asyncio.run(kopf.operator(clusterwide=True, standalone=True))


if __name__ == "__main__":
    main()
