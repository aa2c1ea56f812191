"""Fixtures shared by the operator's controller tests."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client


@pytest.fixture()
def apis(k8s_client) -> dict[str, Any]:
    """Typed API clients for the test control plane."""
    return {
        "core": client.CoreV1Api(k8s_client),
        "apps": client.AppsV1Api(k8s_client),
        "policy": client.PolicyV1Api(k8s_client),
        "custom": client.CustomObjectsApi(k8s_client),
    }
