"""The operator, peering on (the default), on a cluster without Kopf's peering CRDs: it warns and still reconciles.

The README promises this for a bare `kubectl apply -f crds/` install, where the peering CRDs are absent.
The session's control plane installs only our CRDs, so it is such a cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from kubernetes import client

from tests.support.waiting import wait_for

SHARDSET = {
    "apiVersion": "chronoshard.io/v1alpha1",
    "kind": "ShardSet",
    "metadata": {"name": "nopeer"},
    "spec": {"shards": 1, "tables": [{"name": "t"}]},
}


def test_operator_runs_with_a_warning_when_peering_crds_are_absent(control_plane, k8s_client, namespace) -> None:
    ext = client.ApiextensionsV1Api(k8s_client)
    names = {c.metadata.name for c in ext.list_custom_resource_definition().items}
    assert "kopfpeerings.kopf.dev" not in names and "clusterkopfpeerings.kopf.dev" not in names

    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "operator.log"
        with log_path.open("w") as log_file:
            # No --standalone: peering "chronoshard" is requested, as in the default install.
            proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "chronoshard.operator.main", "--namespace", namespace, "--verbose"],
                env=env, stdout=log_file, stderr=subprocess.STDOUT,
            )
        try:
            custom = client.CustomObjectsApi(k8s_client)
            custom.create_namespaced_custom_object("chronoshard.io", "v1alpha1", namespace, "shardsets", SHARDSET)
            apps = client.AppsV1Api(k8s_client)

            def reconciled_by_this_copy() -> bool:
                # The session's in-process operator may be running too, so the evidence is this process's own log.
                assert proc.poll() is None, log_path.read_text()[-3000:]
                text = log_path.read_text()
                return "Handler 'shardset_changed' succeeded" in text and bool(
                    apps.list_namespaced_stateful_set(namespace).items)

            wait_for(reconciled_by_this_copy, timeout=90, what="this operator copy (no peering CRDs) to reconcile")
            text = log_path.read_text()
            warning = [line for line in text.splitlines() if "peering" in line.lower() and "WARNING" in line]
            assert warning, text[-3000:]
            assert "not installed" in warning[0]
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
