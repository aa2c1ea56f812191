"""Shared fixtures: a real kube-apiserver (+ controller manager) on loopback, clients, namespaces."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CRDS = REPO / "crds"
_SESSION = {"operator_started": False}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``without_operator`` run first: they drive a controller's passes by hand, and the session's
    in-process operator (once a test starts it, it runs to the end of the session, in every namespace) would
    drive the same objects beside them."""
    items.sort(key=lambda item: item.get_closest_marker("without_operator") is None)  # stable: order kept


@pytest.fixture(autouse=True)
def _no_operator_beside(request: pytest.FixtureRequest) -> None:
    """A ``without_operator`` test fails at once if the in-process operator is already running (say, when it
    was selected together with tests that start it and the ordering above could not help)."""
    if request.node.get_closest_marker("without_operator") is not None and _SESSION["operator_started"]:
        pytest.fail("this test drives controller passes by hand, but the session's in-process operator runs")


@pytest.fixture(scope="session")
def control_plane() -> Iterator:
    """etcd + kube-apiserver + kube-controller-manager for the whole session, with our CRDs installed."""
    from chronoshard.devcluster.controlplane import ControlPlane

    state = Path(tempfile.mkdtemp(prefix="chronoshard-envtest-"))
    cp = ControlPlane(state_dir=state, controller_manager=True)
    cp.start()
    try:
        cp.install_crds(CRDS)
        yield cp
    finally:
        cp.stop()
        if not os.environ.get("CHRONOSHARD_KEEP_ENVTEST"):
            cp.wipe()


@pytest.fixture(scope="session")
def k8s_client(control_plane):
    """A ``kubernetes.client.ApiClient`` for the test control plane."""
    from kubernetes import config

    api = config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    yield api
    api.close()


@pytest.fixture()
def namespace(k8s_client) -> Iterator[str]:
    """A fresh namespace, deleted after the test (without waiting for it to go)."""
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(k8s_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    try:
        core.delete_namespace(name)
    except client.ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture(scope="session")
def operator_runner(control_plane, k8s_client) -> Iterator:
    """The chronoshard operator running in-process (Kopf's KopfRunner) against the test control plane."""
    from chronoshard.operator import kube
    from kopf.testing import KopfRunner

    os.environ["KUBECONFIG"] = str(control_plane.kubeconfig)
    kube.set_api_client(k8s_client)
    args = ["run", "--all-namespaces", "--standalone", "--verbose", "-m", "chronoshard.operator.handlers"]
    _SESSION["operator_started"] = True
    with KopfRunner(args, timeout=60) as runner:
        yield runner
    kube.set_api_client(None)
    if runner.exception is not None:
        raise runner.exception
