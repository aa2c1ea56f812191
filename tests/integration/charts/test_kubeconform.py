"""`helm template | kubeconform -strict` with schemas of the pinned kube-apiserver's own OpenAPI and of our CRDs.

kubeconform's default schemas come from the network; here every schema is generated offline by
hack/kube-jsonschemas.py: built-in kinds from the envtest API server (exactly the Kubernetes version
we pin), our kinds from the CRD files the chart ships.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.charts.helpers import render_text, tools_bin

from .conftest import CHART, REPO

pytestmark = pytest.mark.integration

# API groups whose kinds the chart renders.
GROUP_PATHS = ["api/v1", "apis/apps/v1", "apis/rbac.authorization.k8s.io/v1", "apis/networking.k8s.io/v1",
               "apis/policy/v1", "apis/apiextensions.k8s.io/v1"]


@pytest.fixture(scope="module")
def schema_location(audited_plane, tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("schemas")
    args = [sys.executable, str(REPO / "hack" / "kube-jsonschemas.py"), "--out", str(work / "out"),
            "--crds", str(CHART / "crds")]
    for path in GROUP_PATHS:
        doc = work / (path.replace("/", "_") + ".json")
        doc.write_text(audited_plane.kubectl("get", "--raw", f"/openapi/v3/{path}").stdout)
        args += ["--openapi", str(doc)]
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout.strip()


def kubeconform(location: str, *targets: str, input: str | None = None) -> subprocess.CompletedProcess:
    # ServiceMonitor: the Prometheus operator's CRD is not available offline (see the chart README).
    return subprocess.run(
        [str(tools_bin() / "kubeconform"), "-strict", "-summary", "-schema-location", location,
         "-skip", "ServiceMonitor", *targets],
        input=input, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("values", [None, *sorted((CHART / "ci").glob("*-values.yaml"))],
                         ids=lambda v: Path(v).name if v else "defaults")
def test_rendered_chart_is_valid_for_the_pinned_kubernetes(schema_location, values) -> None:
    manifests = render_text(*(["--values", str(values)] if values else []))
    result = kubeconform(schema_location, "-", input=manifests)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Invalid: 0, Errors: 0" in result.stdout


def test_crds_and_samples_are_valid(schema_location) -> None:
    result = kubeconform(schema_location, str(CHART / "crds"), str(REPO / "crds" / "samples"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Invalid: 0, Errors: 0" in result.stdout


def test_strict_schemas_reject_a_misspelt_pod_field(schema_location) -> None:
    manifests = render_text().replace("readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true")
    result = kubeconform(schema_location, "-", input=manifests)
    assert result.returncode != 0
    assert "readOnlyRootFileSystem" in result.stdout
