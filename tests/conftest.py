"""Shared fixtures: a real kube-apiserver (+ controller manager) on loopback, clients, namespaces."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.scheduling import WITHOUT_OPERATOR

REPO = Path(__file__).resolve().parent.parent
CRDS = REPO / "crds"
_SESSION = {"operator_started": False}
E2E = REPO / "tests" / "e2e"


def _run_rank(item: pytest.Item, parallel: bool) -> int:
    if item.get_closest_marker("without_operator") is not None:
        return 0
    return 1 if parallel and item.path.is_relative_to(E2E) else 2


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``without_operator`` run first: they drive a controller's passes by hand, and the session's
    in-process operator (once a test starts it, it runs to the end of the session, in every namespace) would
    drive the same objects beside them. On xdist workers (hack/test.sh) the e2e tests come next, the longest
    unit, so one worker starts on them while the other takes the rest (tests/support/scheduling.py)."""
    parallel = bool(os.environ.get("PYTEST_XDIST_WORKER"))
    for item in items:
        if item.get_closest_marker("without_operator") is not None:
            item.add_marker(pytest.mark.xdist_group(WITHOUT_OPERATOR))
    items.sort(key=lambda item: _run_rank(item, parallel))  # stable: the collection order within each rank


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: no error when it is not loaded (`-p no:xdist`)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``--dist loadgroup`` the units of tests/support/scheduling.py: one worker per unit at a time, the
    ``without_operator`` tests before any in-process operator of that worker, e2e tests one at a time."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from tests.support.scheduling import SuiteScheduling

    return SuiteScheduling(config, log)


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
