"""Every Kopf handler of the operator; importing this module registers them (``kopf run -m`` target)."""

from __future__ import annotations

import logging
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from . import kube
from .keyrotation import controller as keyrotation_controller  # noqa: F401 - registers handlers
from .mirrorset import controller as mirrorset_controller  # noqa: F401 - registers handlers
from .prefetchpolicy import controller as prefetchpolicy_controller  # noqa: F401 - registers handlers
from .reshard import controller as reshard_controller  # noqa: F401 - registers handlers
from .reversion import controller as reversion_controller  # noqa: F401 - registers handlers
from .settings import RUNTIME
from .shadowpolicy import controller as shadowpolicy_controller  # noqa: F401 - registers handlers
from .shardset import controller as shardset_controller  # noqa: F401 - registers handlers
from .tokens import controller as tokens_controller  # noqa: F401 - registers handlers
from .weaveplan import controller as weaveplan_controller  # noqa: F401 - registers handlers

log = logging.getLogger(__name__)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Operator-wide Kopf settings: our own annotation prefix and finalizer, quiet event posting."""
    # Kopf's bookkeeping lives under our own domain so users see who owns it.
    settings.persistence.finalizer = "chronoshard.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="chronoshard.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="chronoshard.io", key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    # Keep watches short so a half-open connection is noticed within a minute.
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.peering.name = RUNTIME.peering_name
    settings.peering.mandatory = False
    settings.peering.clusterwide = RUNTIME.clusterwide
    settings.execution.max_workers = 8
    log.info("chronoshard operator starting (peering %s)", RUNTIME.peering_name or "off")
    if RUNTIME.peering_name and not peering_crds_served():
        # Kopf silently runs without peering when its CRDs are absent; say so, since two copies would then both act.
        log.warning("Kopf's peering CRDs (kopf.dev) are not installed: peering %r is off and a second operator copy "
                    "would act at the same time; install them (the Helm chart does) or run one copy only",
                    RUNTIME.peering_name)


def peering_crds_served() -> bool:
    """True if the API server serves Kopf's peering group ``kopf.dev`` (discovery, allowed to every identity)."""
    try:
        groups = client.ApisApi(kube.api_client()).get_api_versions().groups or []
    except (ApiException, HTTPError) as exc:
        log.warning("cannot list API groups to check for Kopf's peering CRDs: %s", exc)
        return True  # unknown: do not claim they are missing
    return any(g.name == "kopf.dev" for g in groups)
