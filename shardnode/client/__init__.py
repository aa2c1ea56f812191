"""Python client for chronoshard ShardSets: routes by the partition map, async and blocking flavours.

``AsyncClient`` / ``Client`` talk to the owning shard's cache (or node) directly; map sources are in
``discovery`` (any node's ``GET /v1/partitions``, the ``<shardset>-partitions`` ConfigMap, a file).
"""

from chronoshard.shardnode.client.aio import AsyncClient, BlockInfo, block_path
from chronoshard.shardnode.client.discovery import (
    ConfigMapMap,
    FileMap,
    FirstOf,
    MapProvider,
    NodeMap,
    StaticMap,
)
from chronoshard.shardnode.client.errors import (
    ChronoshardError,
    MapUnavailable,
    Misdirected,
    NotFound,
    RequestRejected,
    ScanUnsupported,
    Unavailable,
)
from chronoshard.shardnode.client.sync import Client

__all__ = [
    "AsyncClient",
    "BlockInfo",
    "ChronoshardError",
    "Client",
    "ConfigMapMap",
    "FileMap",
    "FirstOf",
    "MapProvider",
    "MapUnavailable",
    "Misdirected",
    "NodeMap",
    "NotFound",
    "RequestRejected",
    "ScanUnsupported",
    "StaticMap",
    "Unavailable",
    "block_path",
]
