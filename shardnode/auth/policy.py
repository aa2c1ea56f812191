"""What each route needs (docs/security.md, "Authorization"), and what a SubjectAccessReview then asks.

Every route a server declares names one ``Access``; a route without one is refused when authentication
is on (fail closed). The table of a built app is ``scaffold.route_policies(app)``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

GROUP = "chronoshard.io"
RESOURCE = "shardsets"


class Access(enum.Enum):
    """The access rule of one route."""

    PUBLIC = "public"  # the kubelet's probes and the OpenAPI document: no credential asked
    DATA_GET = "data:get"  # one block, or a batch read of named blocks
    DATA_LIST = "data:list"  # a scan of a table
    DATA_UPDATE = "data:update"  # a block write
    DATA_DELETE = "data:delete"  # a block delete
    PARTITIONS = "partitions"  # the partition map: `get` on the ShardSet itself
    METRICS = "metrics"  # /metrics: pod, operator, or the non-resource URL /metrics
    ADMIN = "admin"  # rewrap, verify, keys, frames, prefetch, access log, role changes: pod or operator only
    # The change stream, status, replication state, digests and health (docs/mirroring.md): pod, operator, or a
    # `replica` identity (a peer MirrorSet member's pod certificate listed in replicaIdentities); users never.
    REPLICATION = "replication"
    # Any authenticated caller, no review (the token service's request, keys and risk routes, docs/tokens.md):
    # what such a route gives away is decided by the handler (issuance reviews the requested scope itself).
    AUTHENTICATED = "authenticated"


DATA_VERBS = {Access.DATA_GET: "get", Access.DATA_LIST: "list", Access.DATA_UPDATE: "update",
              Access.DATA_DELETE: "delete"}


@dataclass(frozen=True)
class ReviewAttributes:
    """What one SubjectAccessReview asks about (also the decision cache's key, with the caller)."""

    verb: str
    resource: str  # "shardsets/data", "shardsets" or "nonresource"
    name: str  # the table, the ShardSet's name, or the non-resource path

    def spec(self, namespace: str) -> dict[str, Any]:
        """The ``spec`` fields of the review other than the user and groups."""
        if self.resource == "nonresource":
            return {"nonResourceAttributes": {"path": self.name, "verb": self.verb}}
        resource, _, subresource = self.resource.partition("/")
        attrs = {"group": GROUP, "resource": resource, "name": self.name, "namespace": namespace,
                 "verb": self.verb}
        if subresource:
            attrs["subresource"] = subresource
        return {"resourceAttributes": attrs}


def review_attributes(access: Access, *, table: str | None, shard_set: str) -> ReviewAttributes | None:
    """The SubjectAccessReview a non-pod caller needs for ``access`` (None: no review can allow it)."""
    if access in DATA_VERBS:
        return None if table is None else ReviewAttributes(DATA_VERBS[access], f"{RESOURCE}/data", table)
    if access is Access.PARTITIONS:
        return ReviewAttributes("get", RESOURCE, shard_set)
    if access is Access.METRICS:
        return ReviewAttributes("get", "nonresource", "/metrics")
    return None
