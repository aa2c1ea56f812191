"""Python client for chronoshard ShardSets: routes by the partition map, async and blocking flavours.

``AsyncClient`` / ``Client`` talk to the owning shard's cache (or node) directly; map sources are in
``discovery`` (any node's ``GET /v1/partitions``, the ``<shardset>-partitions`` ConfigMap, a file);
credentials in ``credentials``, TLS and the ``auto`` scheme in ``transport``. ``AsyncClient.for_mirrorset`` /
``Client.for_mirrorset`` route by a MirrorSet (``mirrors``, ``mirrorrouting``).
"""

from chronoshard.shardnode.client.aio import AsyncClient, BlockInfo, block_path
from chronoshard.shardnode.client.credentials import Credentials, TokenFile, TokenSource
from chronoshard.shardnode.client.discovery import (
    ConfigMapMap,
    FileMap,
    FirstOf,
    MapProvider,
    NodeMap,
    ShardSetPods,
    StaticMap,
)
from chronoshard.shardnode.client.errors import (
    CertificateRejected,
    ChronoshardError,
    Forbidden,
    MapUnavailable,
    Misdirected,
    NotFound,
    RequestRejected,
    ScanUnsupported,
    Unauthenticated,
    Unavailable,
    Unreachable,
)
from chronoshard.shardnode.client.mirrorrouting import MirrorRouting, StaticEndpoints, StaticMirrorSet
from chronoshard.shardnode.client.mirrors import MirrorView
from chronoshard.shardnode.client.sync import Client
from chronoshard.shardnode.client.tiered import Queued, TieredTokenSource, TokenServiceError, TokenStatus
from chronoshard.shardnode.client.transport import Endpoint, Transport

__all__ = [
    "AsyncClient",
    "BlockInfo",
    "CertificateRejected",
    "ChronoshardError",
    "Client",
    "ConfigMapMap",
    "Credentials",
    "Endpoint",
    "FileMap",
    "FirstOf",
    "Forbidden",
    "MapProvider",
    "MapUnavailable",
    "MirrorRouting",
    "MirrorView",
    "Misdirected",
    "NodeMap",
    "NotFound",
    "Queued",
    "RequestRejected",
    "ScanUnsupported",
    "ShardSetPods",
    "StaticEndpoints",
    "StaticMap",
    "StaticMirrorSet",
    "TieredTokenSource",
    "TokenFile",
    "TokenServiceError",
    "TokenSource",
    "TokenStatus",
    "Transport",
    "Unauthenticated",
    "Unavailable",
    "Unreachable",
    "block_path",
]
