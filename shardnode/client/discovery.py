"""Where a client gets the partition map: any node's ``GET /v1/partitions``, the ConfigMap, a file.

Every provider is an object with ``async fetch() -> PartitionMap``; ``FirstOf`` chains them so a
client can ask the nodes first and fall back to the ConfigMap (or the other way round).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from chronoshard.shardnode.client.errors import MapUnavailable
from chronoshard.shardnode.keyspace.partitioning import PartitionMap

MAP_KEY = "map.json"


def partitions_config_map_name(shardset: str) -> str:
    """Name of the ConfigMap holding a ShardSet's partition map (docs/interfaces.md)."""
    return f"{shardset}-partitions"


class MapProvider(Protocol):
    """Anything that can fetch the current partition map."""

    async def fetch(self) -> PartitionMap:
        """Return the current map or raise MapUnavailable."""
        ...


class StaticMap:
    """A fixed map (tests, tools that were handed a map)."""

    def __init__(self, pmap: PartitionMap) -> None:
        self.pmap = pmap

    async def fetch(self) -> PartitionMap:
        """Return the fixed map."""
        return self.pmap


class FileMap:
    """A ``map.json`` on disk (e.g. the mounted ConfigMap inside a pod)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    async def fetch(self) -> PartitionMap:
        """Read and validate the file."""
        try:
            return PartitionMap.from_json(await asyncio.to_thread(self.path.read_bytes))
        except (OSError, ValueError) as exc:
            raise MapUnavailable(f"partition map file {self.path}: {exc}") from exc


class NodeMap:
    """Ask nodes (or caches) for ``GET /v1/partitions``; the highest epoch among the answers wins."""

    def __init__(self, urls: Sequence[str], *, timeout: float = 5.0,
                 session: aiohttp.ClientSession | None = None) -> None:
        if not urls:
            raise ValueError("NodeMap needs at least one URL")
        self.urls = [u.rstrip("/") for u in urls]
        self.timeout = timeout
        self.session = session

    async def _one(self, session: aiohttp.ClientSession, url: str) -> PartitionMap:
        async with session.get(f"{url}/v1/partitions",
                               timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
            if resp.status != 200:
                raise MapUnavailable(f"{url}/v1/partitions answered HTTP {resp.status}")
            return PartitionMap.from_json(await resp.read())

    async def fetch(self) -> PartitionMap:
        """Query every URL concurrently; return the newest map, or MapUnavailable if none answered."""
        session = self.session or aiohttp.ClientSession()
        try:
            results = await asyncio.gather(*(self._one(session, u) for u in self.urls),
                                           return_exceptions=True)
        finally:
            if self.session is None:
                await session.close()
        maps = [r for r in results if isinstance(r, PartitionMap)]
        if not maps:
            reasons = "; ".join(f"{u}: {r}" for u, r in zip(self.urls, results, strict=True))
            raise MapUnavailable(f"no node served a partition map ({reasons})")
        return max(maps, key=lambda m: m.epoch)


class ConfigMapMap:
    """Read ``<shardset>-partitions`` through the Kubernetes API (the operator's published map)."""

    def __init__(self, shardset: str, namespace: str, *, api_client: Any = None,
                 kubeconfig: str | None = None, context: str | None = None) -> None:
        self.shardset, self.namespace = shardset, namespace
        self._api_client = api_client
        self._kubeconfig, self._context = kubeconfig, context

    def _core(self) -> Any:
        from kubernetes import client, config

        if self._api_client is None:
            self._api_client = config.new_client_from_config(config_file=self._kubeconfig,
                                                             context=self._context)
        return client.CoreV1Api(self._api_client)

    def _read(self) -> PartitionMap:
        from kubernetes.client.exceptions import ApiException

        name = partitions_config_map_name(self.shardset)
        try:
            cm = self._core().read_namespaced_config_map(name, self.namespace)
        except ApiException as exc:
            where = f"ConfigMap {self.namespace}/{name}"
            raise MapUnavailable(f"{where}: HTTP {exc.status} {exc.reason}") from None
        text = (cm.data or {}).get(MAP_KEY)
        if text is None:
            raise MapUnavailable(f"ConfigMap {self.namespace}/{name} has no {MAP_KEY}")
        try:
            return PartitionMap.from_json(text)
        except ValueError as exc:
            raise MapUnavailable(f"ConfigMap {self.namespace}/{name}: {exc}") from None

    async def fetch(self) -> PartitionMap:
        """Read and validate the ConfigMap's map.json (the blocking API call runs in a thread)."""
        return await asyncio.to_thread(self._read)


class FirstOf:
    """Try providers in order; the first that answers wins."""

    def __init__(self, *providers: MapProvider) -> None:
        if not providers:
            raise ValueError("FirstOf needs at least one provider")
        self.providers = providers

    async def fetch(self) -> PartitionMap:
        """The first provider's map that can be fetched; MapUnavailable listing every failure otherwise."""
        errors: list[str] = []
        for p in self.providers:
            try:
                return await p.fetch()
            except MapUnavailable as exc:
                errors.append(str(exc))
        raise MapUnavailable("; ".join(errors))
