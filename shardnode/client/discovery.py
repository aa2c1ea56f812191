"""Where a client gets the partition map: any node's ``GET /v1/partitions``, the ConfigMap, a file; and,
through the Kubernetes API, where a ShardSet's pods are (``ShardSetPods``) and its CA (``shardset_ca``).

Every provider is an object with ``async fetch() -> PartitionMap``; ``FirstOf`` chains them so a
client can ask the nodes first and fall back to the ConfigMap (or the other way round).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from chronoshard.shardnode.client.errors import MapUnavailable, Unavailable, Unreachable
from chronoshard.shardnode.client.mirrors import MirrorView
from chronoshard.shardnode.client.transport import Endpoint, Transport
from chronoshard.shardnode.keyspace.partitioning import PartitionMap

MAP_KEY = "map.json"
CA_KEY = "ca.crt"
CACHE_PORT = 7401


def ca_config_map_name(shardset: str) -> str:
    """Name of the ConfigMap holding a ShardSet's public CA certificate (docs/security.md)."""
    return f"{shardset}-ca"


def pod_dns_name(shardset: str, shard: int, namespace: str) -> str:
    """The DNS name of shard ``shard``'s pod, always among the SANs of the ShardSet's certificate."""
    return f"{shardset}-{shard}.{shardset}-headless.{namespace}.svc"


def kube_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """An ApiClient from the kubeconfig (``$KUBECONFIG``, ``~/.kube/config``), else the in-cluster account."""
    from kubernetes import client, config

    try:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    except config.ConfigException:
        if kubeconfig:
            raise
        config.load_incluster_config()
        return client.ApiClient()


def shardset_ca(api_client: Any, shardset: str, namespace: str) -> str | None:
    """The PEM text of ``ca.crt`` in the ShardSet's ``NAME-ca`` ConfigMap; None if it has none (plain HTTP)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    name = ca_config_map_name(shardset)
    try:
        cm = client.CoreV1Api(api_client).read_namespaced_config_map(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise Unavailable(f"ConfigMap {namespace}/{name}", f"HTTP {exc.status} {exc.reason}") from None
    return (cm.data or {}).get(CA_KEY) or None


def _ready(status: Any) -> bool:
    """False only when the pod says it is not Ready (a pod without conditions is taken at its word)."""
    conditions = [c for c in (status.conditions or []) if c.type == "Ready"]
    return not conditions or conditions[0].status == "True"


class ShardSetPods:
    """Shard index → its Ready pod's IP, checked by TLS against the pod's DNS name; read from the API when built
    and again (``refresh``) when a shard could not be reached: a pod replaced by a rolling update has a new IP."""

    def __init__(self, shardset: str, namespace: str, *, api_client: Any, port: int = CACHE_PORT,
                 min_refresh: float = 1.0) -> None:
        self.shardset, self.namespace, self.port = shardset, namespace, port
        self._api, self.min_refresh = api_client, min_refresh
        self.ips: dict[int, str] = self._list()
        self._listed = time.monotonic()
        self._refreshing: asyncio.Lock | None = None
        self.refreshes = 0  # how many times the pods were listed again (tests)

    def _list(self) -> dict[int, str]:
        from kubernetes import client

        selector = f"app.kubernetes.io/instance={self.shardset},app.kubernetes.io/component=shard"
        ips: dict[int, str] = {}
        for pod in client.CoreV1Api(self._api).list_namespaced_pod(self.namespace, label_selector=selector).items:
            meta, status = pod.metadata, pod.status
            if meta is None or meta.name is None or meta.deletion_timestamp:
                continue  # nameless (never from a real API server) or on its way out
            ordinal = meta.name.rsplit("-", 1)[-1]
            if ordinal.isdigit() and status and status.pod_ip and _ready(status):
                ips[int(ordinal)] = status.pod_ip
        return ips

    async def refresh(self) -> None:
        """List the pods again (in a thread; at most once per ``min_refresh`` s for many waiting requests)."""
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        async with self._refreshing:
            if time.monotonic() - self._listed < self.min_refresh:
                return
            try:
                self.ips = await asyncio.to_thread(self._list)
            finally:
                self._listed = time.monotonic()
            self.refreshes += 1

    def endpoint(self, shard: int) -> Endpoint:
        """``podIP:port`` with the auto scheme and the pod's DNS name as the TLS server name."""
        if shard not in self.ips:
            raise Unreachable(f"shard {shard} of {self.shardset}", "no Ready pod with an IP")
        return Endpoint(f"{self.ips[shard]}:{self.port}", None, pod_dns_name(self.shardset, shard, self.namespace))


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

    def __init__(self, urls: Sequence[str | Endpoint], *, timeout: float = 5.0,
                 session: aiohttp.ClientSession | None = None, transport: Transport | None = None) -> None:
        """``transport``: credentials and TLS (an AsyncClient lends its own); else the defaults per fetch."""
        if not urls:
            raise ValueError("NodeMap needs at least one URL")
        self.endpoints = [u if isinstance(u, Endpoint) else Endpoint.parse(u) for u in urls]
        self.urls = [str(e) for e in self.endpoints]
        self.timeout = timeout
        self.transport = transport if transport is not None or session is None else Transport(session=session)

    async def _one(self, transport: Transport, ep: Endpoint) -> PartitionMap:
        status, payload = await transport.request("GET", ep, "/v1/partitions", timeout=self.timeout)
        if status != 200:
            hint = f" ({transport.credentials.explain_refusal()})" if status == 401 else ""
            raise MapUnavailable(f"{ep}/v1/partitions answered HTTP {status}{hint}")
        return PartitionMap.from_json(payload)

    async def fetch(self) -> PartitionMap:
        """Query every URL concurrently; return the newest map, or MapUnavailable if none answered."""
        transport = self.transport or Transport()
        try:
            results = await asyncio.gather(*(self._one(transport, e) for e in self.endpoints),
                                           return_exceptions=True)
        finally:
            if self.transport is None:
                await transport.close()
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


# --- MirrorSets (AsyncClient.for_mirrorset) ---------------------------------------------------------------

MIRRORSET_GROUP, MIRRORSET_VERSION, MIRRORSET_PLURAL = "chronoshard.io", "v1alpha1", "mirrorsets"


class MirrorSetStatus:
    """A MirrorSet's status read through the Kubernetes API (``activeShardSet``, ``shards``)."""

    def __init__(self, name: str, namespace: str, *, api_client: Any) -> None:
        self.name, self.namespace, self._api = name, namespace, api_client
        self.where = f"MirrorSet {namespace}/{name}"

    def read(self) -> dict[str, Any]:
        """The object (blocking); Unavailable if it cannot be read."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            obj = client.CustomObjectsApi(self._api).get_namespaced_custom_object(
                MIRRORSET_GROUP, MIRRORSET_VERSION, self.namespace, MIRRORSET_PLURAL, self.name)
        except ApiException as exc:
            raise Unavailable(self.where, f"HTTP {exc.status} {exc.reason}") from None
        if not isinstance(obj, dict):
            raise Unavailable(self.where, "the API answered something other than a JSON object")
        return obj

    def members(self) -> list[str]:
        """Every member as ``namespace/name`` from the spec (blocking): the source first, then the mirrors."""
        obj = self.read()
        spec = obj.get("spec") or {}
        out = [f"{self.namespace}/{(spec.get('sourceRef') or {}).get('name')}"]
        out += [f"{m.get('namespace') or self.namespace}/{(m.get('shardSetRef') or {}).get('name')}"
                for m in spec.get("mirrors") or []]
        return out

    async def fetch(self) -> MirrorView:
        """The status now as a ``MirrorView`` (the blocking read runs in a thread)."""
        obj = await asyncio.to_thread(self.read)
        return MirrorView.from_status(obj.get("status") or {}, self.where)


class MemberPods:
    """Each member ShardSet's pods (``ShardSetPods``), listed when first needed and again on ``refresh``."""

    def __init__(self, members: Sequence[str], *, api_client: Any, port: int = CACHE_PORT) -> None:
        self._api, self.port = api_client, port
        self.members = list(members)
        self._pods: dict[str, ShardSetPods] = {}

    def _of(self, shard_set: str) -> ShardSetPods:
        pods = self._pods.get(shard_set)
        if pods is None:
            ns, name = shard_set.split("/", 1)
            # A blocking list, once per member; the status only names members, which for_mirrorset lists first.
            pods = self._pods[shard_set] = ShardSetPods(name, ns, api_client=self._api, port=self.port)
        return pods

    def endpoint(self, shard_set: str, shard: int) -> Endpoint:
        """Shard ``shard``'s Ready pod of ``shard_set``; Unreachable if it has none."""
        return self._of(shard_set).endpoint(shard)

    async def refresh(self, shard_set: str) -> None:
        """List that member's pods again."""
        if shard_set in self._pods:
            await self._pods[shard_set].refresh()
        else:
            await asyncio.to_thread(self._of, shard_set)


def members_ca(api_client: Any, members: Sequence[str]) -> str | None:
    """The PEM text of every member's ``NAME-ca`` ConfigMap, concatenated (None if none has one)."""
    pems = [shardset_ca(api_client, m.split("/", 1)[1], m.split("/", 1)[0]) for m in members]
    return "\n".join(p for p in pems if p) or None
