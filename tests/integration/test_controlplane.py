"""The envtest control plane itself: API server reachable, CRDs established, controller manager working."""

from kubernetes import client

from tests.conftest import CRDS
from tests.support.waiting import wait_for


def test_api_server_answers_and_crds_are_served(control_plane, k8s_client):
    version = client.VersionApi(k8s_client).get_code()
    assert version.git_version.startswith("v1.35.")
    out = control_plane.kubectl("api-resources", "--api-group=chronoshard.io", "-o", "name").stdout
    crd_files = list(CRDS.glob("*.yaml"))
    assert len(out.split()) == len(crd_files), out


def test_controller_manager_creates_default_service_account(control_plane, namespace, k8s_client):
    # The serviceaccount controller only runs inside kube-controller-manager: seeing it act proves it runs.
    core = client.CoreV1Api(k8s_client)
    wait_for(lambda: "default" in [sa.metadata.name for sa in core.list_namespaced_service_account(namespace).items],
             timeout=30, interval=0.2,
             what="the default ServiceAccount (made by kube-controller-manager's serviceaccount controller)")
