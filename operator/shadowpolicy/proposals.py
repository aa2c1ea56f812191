"""Create the Reversions a ShadowPolicy proposes for its incidents (API I/O only; what to create is anomalies.py's)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kubernetes.client.exceptions import ApiException

from .. import kube
from .anomalies import Incident, reversion_object

log = logging.getLogger(__name__)


def propose(namespace: str, policy: str, shardset: str, found: Sequence[Incident]
            ) -> tuple[dict[tuple[int, str], str], dict[tuple[int, str], str]]:
    """Create one Reversion per incident; returns (shard, id) → its name, and (shard, id) → why it could not be
    created (tried again next pass). A Reversion that already exists under the incident's name (a pass that
    created it and died before writing the status) counts as made: never twice."""
    made: dict[tuple[int, str], str] = {}
    failed: dict[tuple[int, str], str] = {}
    for inc in found:
        obj = reversion_object(namespace, policy, shardset, inc)
        name = obj["metadata"]["name"]
        try:
            kube.create(obj)
        except ApiException as exc:
            # E.g. 403 from a chart without the create rule: the incident stays reported, the pass goes on.
            failed[inc.ref] = f"could not create Reversion {name}: HTTP {exc.status} {exc.reason}"[:1024]
            log.warning("ShadowPolicy %s/%s: %s", namespace, policy, failed[inc.ref])
            continue
        made[inc.ref] = name
    return made, failed
