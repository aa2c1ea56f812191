"""The asyncio client: routes each key by the partition map straight to its owning shard.

Example::

    from chronoshard.shardnode.client import AsyncClient, NodeMap

    urls = ["http://127.0.0.2:7401", "http://127.0.0.3:7401", "http://127.0.0.4:7401"]
    async with AsyncClient(NodeMap(urls), urls) as c:
        await c.put("users", "alice", b"...")
        value = await c.get("users", "alice")

Every keyed request carries ``X-Chronoshard-Routed: <epoch>``: a shard that does not own the key (or
runs another map epoch) answers 421 instead of forwarding, the client refreshes its map (from its map source,
else from the refusing shard's ``GET /v1/partitions``) and sends the request again at the owner; during a
partition move's cutover (docs/resharding.md) it keeps trying with short growing pauses, a bounded number of times
within its timeout, so the application sees no error. ``AsyncClient.via_service(url)`` instead sends everything
to one address (the ShardSet's client Service) and lets the caches forward.

Credentials are sent by default (``credentials.Credentials.default``: ``token=``/``token_provider=``,
``$CHRONOSHARD_TOKEN``, the projected token file); TLS is verified against ``ca=`` (a PEM file) and endpoints
given as ``host:port`` use the ``auto`` scheme (``transport``). ``AsyncClient.for_shardset(name, namespace)``
finds everything through the Kubernetes API: the map, the pods, and the CA from the ``NAME-ca`` ConfigMap.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
from chronoshard.shardnode.client import discovery
from chronoshard.shardnode.client import mirrors as mdecide
from chronoshard.shardnode.client.credentials import Credentials, TokenGetter, TokenSource, audience
from chronoshard.shardnode.client.discovery import MapProvider, NodeMap, StaticMap
from chronoshard.shardnode.client.errors import (
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
from chronoshard.shardnode.client.tiered import Queued, TieredTokenSource, TokenStatus
from chronoshard.shardnode.client.transport import Endpoint, Scheme, Transport, ca_file_source
from chronoshard.shardnode.keyspace.partitioning import PartitionMap

ROUTED_HEADER = "X-Chronoshard-Routed"  # same value as chronoshard.shardnode.serving.routing.ROUTED_HEADER
# How long we still wait (same value as chronoshard.shardnode.serving.deadlines.TIMEOUT_HEADER): the shard gives
# up on a write when we do, so a write we saw time out can never land after the next one we send.
TIMEOUT_HEADER = "X-Chronoshard-Timeout"
DEFAULT_TIMEOUT = 10.0
# How long a request waits for a shard nobody answers for (connection refused, no Ready pod): a pod replaced by a
# rolling update was unreachable for about 10 s on the local cluster (tests/e2e/test_tls_upgrade.py); 3x that.
RESTART_WAIT = 30.0
RESTART_POLL = (0.2, 1.0)  # first and longest pause between attempts
SCAN_PAGE = 500
BATCH_KEYS = 500  # below the node's 1000-key batch limit
# A keyed request refused with 421 is sent again within the client's timeout, at most this many times in all: during
# a partition move's cutover the source and the target may each refuse it for a moment, and a shard that gets the
# new map late refuses a client that already has it (docs/resharding.md).
MISDIRECTED_ATTEMPTS = 40
MISDIRECTED_PAUSE = 0.02  # the first pause when a refusal taught nothing new; doubled each time


@dataclass(frozen=True)
class BlockInfo:
    """One entry of a scan: the key, its size, the shard it came from, and what else the node said."""

    key: str
    size: int | None
    shard: int | None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


def block_path(table: str, key: str) -> str:
    """The URL path of a block; table and key are percent-encoded whole (a key may hold "/")."""
    return f"/v1/tables/{quote(table, safe='')}/blocks/{quote(key, safe='')}"


def _error_body(payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _not_sent_to_node(status: int, payload: bytes) -> bool:
    """A shard pod's cache answered that it could not connect to its node (``"sent": false``): the request
    never reached the node, like an unreachable pod, so it may be sent again."""
    return status == 503 and _error_body(payload).get("sent") is False


def raise_for(status: int, payload: bytes, url: str, table: str, key: str | None,
              credentials: Credentials | None = None) -> None:
    """Turn a non-2xx answer into the matching client exception (``credentials`` explain a 401)."""
    if status < 300:
        return
    doc = _error_body(payload)
    message = str(doc.get("message") or payload[:200].decode("utf-8", "replace"))
    if status == 401:
        raise Unauthenticated(message, credentials.explain_refusal() if credentials else "", url)
    if status == 403:
        raise Forbidden(message, url)
    if status == 404 and key is not None:
        raise NotFound(table, key)
    if status == 421:
        raise Misdirected(message, doc.get("owner"), doc.get("epoch"))
    if status >= 500:
        raise Unavailable(url, f"HTTP {status}: {message}", status)
    raise RequestRejected(status, str(doc.get("error", "error")), message)


class AsyncClient:
    """Put/get/delete/batch-get/scan blocks of a ShardSet, routed by its partition map."""

    def __init__(
        self,
        maps: MapProvider | PartitionMap,
        endpoints: Sequence[str | Endpoint] | Callable[[int], str | Endpoint],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        concurrency: int = 64,
        session: aiohttp.ClientSession | None = None,
        lagging_shard_wait: float = 1.5,
        token: str | None = None,
        token_provider: TokenGetter | None = None,
        token_file: str | Path | None = None,
        ca: str | Path | None = None,
        scheme: Scheme = "auto",
        transport: Transport | None = None,
        restart_wait: float = RESTART_WAIT,
        rediscover: Callable[[], Awaitable[None]] | None = None,
        mirrors: MirrorRouting | None = None,
        tiered: TieredTokenSource | None = None,
    ) -> None:
        """``endpoints``: per shard (a list indexed by shard, or a function shard -> URL or ``Endpoint``).

        ``restart_wait``: how long a request waits for an unreachable shard (nothing was sent: the connection was
        refused, or discovery knows no Ready pod for it), trying again with short pauses, before it raises
        ``Unreachable``; ``rediscover``: called before each new attempt, so the endpoints can follow a replaced
        pod to its new address (``ShardSetPods.refresh``).

        ``lagging_shard_wait``: the longest pause before retrying at a shard that refused us under an *older*
        epoch than ours (it has not reloaded the mounted map yet; nodes check once a second) or that names
        another owner under our epoch; pauses start at 20 ms and double.
        ``token``/``token_provider``/``token_file``: see ``Credentials.default``; ``ca``: the PEM file the
        shards' certificates are verified against; ``scheme``: for endpoints given without one. ``transport``
        replaces all of these (and ``session``) with one already built. ``mirrors``: route by a MirrorSet
        (``with_mirrors``, ``for_mirrorset``). ``tiered``: the bearer token is that tiered token source's (instead
        of ``token``/``token_provider``), every write carries an ``Idempotency-Key`` and a queued write answers
        ``Queued`` (docs/tokens.md).
        """
        self._provider: MapProvider = StaticMap(maps) if isinstance(maps, PartitionMap) else maps
        if callable(endpoints):
            pick = endpoints
            self._endpoint: Callable[[int], Endpoint] = lambda shard: _as_endpoint(pick(shard))
        else:
            eps = [_as_endpoint(u) for u in endpoints]
            self._endpoint = lambda shard: _index(eps, shard)
        self._service: Endpoint | None = None
        self._mirrors = mirrors
        self.mirror_fallbacks = 0  # reads answered by a mirror copy because the active's failed (tests, metrics)
        self.lagging_shard_wait = lagging_shard_wait
        self.timeout = timeout
        self.restart_wait, self._rediscover = restart_wait, rediscover
        self.restart_waits = 0  # attempts that found their shard unreachable and waited (tests, metrics)
        self._concurrency = concurrency
        self.tiered = tiered
        self._queued: dict[str, tuple[str, str]] = {}  # queued write id -> (table, key): where to ask about it
        credentials = (Credentials([TokenSource(tiered.label, tiered)]) if tiered is not None
                       else Credentials.default(token=token, token_provider=token_provider, token_file=token_file))
        self.transport = transport or Transport(
            credentials,
            default_scheme=scheme, concurrency=concurrency, session=session,
            ca_source=ca_file_source(ca) if ca is not None else None,
            ca_hint=f"verified against {ca}" if ca else "no ca= given: verified against the system's CAs")
        if isinstance(self._provider, NodeMap) and self._provider.transport is None:
            self._provider.transport = self.transport  # the map requests carry the same credentials and CA
        self._map: PartitionMap | None = None
        self._map_lock = asyncio.Lock()
        self.map_refreshes = 0  # how many times the map was fetched (observable in tests and metrics)
        self.misdirected_retries = 0  # keyed requests sent again after a 421 (tests, metrics)
        self.last_queued: Queued | None = None  # the last delete answered 202 (a put returns its Queued)

    @classmethod
    def via_service(cls, url: str | Endpoint, *, maps: MapProvider | None = None,
                    timeout: float = DEFAULT_TIMEOUT, concurrency: int = 64, **security: Any) -> AsyncClient:
        """A client that sends every request to one URL (the client Service); caches forward.

        ``security``: the credential and TLS arguments of ``AsyncClient`` (token, ca, scheme, transport, ...).
        """
        ep = _as_endpoint(url)
        client = cls(maps or _NoMap(), lambda _shard: ep, timeout=timeout, concurrency=concurrency, **security)
        client._service = ep
        return client

    @classmethod
    def for_shardset(cls, name: str, namespace: str, *, api_client: Any = None, kubeconfig: str | None = None,
                     context: str | None = None, ca: str | Path | None = None, port: int = discovery.CACHE_PORT,
                     timeout: float = DEFAULT_TIMEOUT, concurrency: int = 64, token: str | None = None,
                     token_provider: TokenGetter | None = None, token_file: str | Path | None = None,
                     scheme: Scheme = "auto", restart_wait: float = RESTART_WAIT) -> AsyncClient:
        """A client for ShardSet ``namespace/name`` found through the Kubernetes API (blocking reads, once).

        The map comes from the ``NAME-partitions`` ConfigMap, each shard's address from its pod's IP (its
        certificate checked against the pod's DNS name), the CA from ``ca=`` or else the ``NAME-ca`` ConfigMap.
        The pods are listed again when a shard cannot be reached (a rolling update gives its pod a new IP).
        """
        api = api_client or discovery.kube_client(kubeconfig, context)
        cm = f"ConfigMap {namespace}/{discovery.ca_config_map_name(name)}"
        # The ConfigMap is read again after a certificate failure: a client started before the move to TLS
        # picks up the CA the operator publishes then.
        source = ca_file_source(ca) if ca is not None else partial(discovery.shardset_ca, api, name, namespace)
        transport = Transport(
            Credentials.default(token=token, token_provider=token_provider, token_file=token_file,
                                audience=audience(namespace, name)),
            default_scheme=scheme, concurrency=concurrency, ca_source=source,
            ca_hint=f"verified against {ca if ca is not None else cm} (or the system's CAs while it is absent)")
        pods = discovery.ShardSetPods(name, namespace, api_client=api, port=port)
        return cls(discovery.ConfigMapMap(name, namespace, api_client=api), pods.endpoint, timeout=timeout,
                   concurrency=concurrency, transport=transport, restart_wait=restart_wait,
                   rediscover=pods.refresh)

    @classmethod
    def with_mirrors(cls, routing: MirrorRouting, maps: MapProvider | PartitionMap, **kwargs: Any) -> AsyncClient:
        """A MirrorSet-aware client: writes go to the active ShardSet (re-resolved, and sent again within the
        call's timeout, when a node answers 503 not_primary, fenced or lease_lost); reads go to the active too,
        and on a connection failure or a 5xx to the shard's healthy mirror copies, most caught-up first (with
        ``read_your_writes``, carrying the LSN of this client's last acknowledged write of that shard; a copy
        that has not applied it sends the read to the primary).

        ``maps``: the partition layout, the same on every member (requests carry no routing epoch: a member's
        map has its own epochs, and a cache forwards a key it does not own). ``kwargs``: as ``AsyncClient``.
        """
        return cls(maps, routing.active_endpoint, mirrors=routing, **kwargs)

    @classmethod
    def for_mirror_status(cls, status: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
                          endpoints: Mapping[str, Sequence[str | Endpoint]] | Callable[[str, int], str | Endpoint],
                          maps: MapProvider | PartitionMap, *, read_your_writes: bool = False,
                          wait_ms: int | None = None, **kwargs: Any) -> AsyncClient:
        """``with_mirrors`` from a MirrorSet status given as a dict or a callable returning it, and each member's
        shard URLs (``{"ns/name": [url, ...]}`` or a function (member, shard) -> URL): tests and tools."""
        routing = MirrorRouting(StaticMirrorSet(status), StaticEndpoints(endpoints),
                                read_your_writes=read_your_writes, wait_ms=wait_ms)
        return cls.with_mirrors(routing, maps, **kwargs)

    @classmethod
    def for_mirrorset(cls, name: str, namespace: str, *, api_client: Any = None, kubeconfig: str | None = None,
                      context: str | None = None, ca: str | Path | None = None, port: int = discovery.CACHE_PORT,
                      read_your_writes: bool = False, wait_ms: int | None = None, timeout: float = DEFAULT_TIMEOUT,
                      concurrency: int = 64, token: str | None = None, token_provider: TokenGetter | None = None,
                      token_file: str | Path | None = None, scheme: Scheme = "auto") -> AsyncClient:
        """``with_mirrors`` for MirrorSet ``namespace/name`` through the Kubernetes API: its status
        (``activeShardSet``, ``shards``), its members' pods, the partition map of its source, and the members'
        CAs (``NAME-ca`` ConfigMaps, all trusted) unless ``ca=`` is given. The credential must be accepted by
        every member (a token with each member's audience: ``token_provider``, or ``token``)."""
        api = api_client or discovery.kube_client(kubeconfig, context)
        status = discovery.MirrorSetStatus(name, namespace, api_client=api)
        members = status.members()
        source = ca_file_source(ca) if ca is not None else partial(discovery.members_ca, api, members)
        transport = Transport(
            Credentials.default(token=token, token_provider=token_provider, token_file=token_file),
            default_scheme=scheme, concurrency=concurrency, ca_source=source,
            ca_hint=f"verified against {ca if ca is not None else 'the members NAME-ca ConfigMaps'}")
        routing = MirrorRouting(status, discovery.MemberPods(members, api_client=api, port=port),
                                read_your_writes=read_your_writes, wait_ms=wait_ms)
        src_ns, src_name = members[0].split("/", 1)
        return cls.with_mirrors(routing, discovery.ConfigMapMap(src_name, src_ns, api_client=api), timeout=timeout,
                                concurrency=concurrency, transport=transport)

    @property
    def mirror_routing(self) -> MirrorRouting | None:
        """The MirrorSet view and read-your-writes marks of a ``with_mirrors`` client (None for a ShardSet)."""
        return self._mirrors

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client opened it."""
        await self.transport.close()

    # --- the map -------------------------------------------------------------------------------

    async def partition_map(self) -> PartitionMap:
        """The map in use, fetched on first use."""
        if self._map is None:
            # min_epoch=0: many first requests at once fetch the map once, not once each.
            return await self.refresh_map(min_epoch=0)
        return self._map

    async def refresh_map(self, min_epoch: int | None = None) -> PartitionMap:
        """Fetch the map again (once for many concurrent callers that all saw the same refusal)."""
        async with self._map_lock:
            if min_epoch is not None and self._map is not None and self._map.epoch >= min_epoch:
                return self._map
            new = await self._provider.fetch()
            self.map_refreshes += 1
            if self._map is None or new.epoch >= self._map.epoch:
                self._map = new
            return self._map

    def shard_url(self, shard: int) -> str:
        """Base URL (or ``host:port`` for the auto scheme) used for ``shard``."""
        return str(self._endpoint(shard))

    def _raise_for(self, status: int, payload: bytes, url: str, table: str, key: str | None) -> None:
        if self.tiered is not None:
            self.tiered.refused(status)  # 401/403/503: the token's status is checked before the next request
        raise_for(status, payload, url, table, key, self.transport.credentials)

    # --- one keyed request with the 421 retry --------------------------------------------------

    async def _send(self, method: str, ep: Endpoint, path: str, headers: dict[str, str],
                    body: bytes | None, params: dict[str, str] | None = None) -> tuple[int, bytes]:
        return await self.transport.request(method, ep, path, headers=headers, body=body, params=params,
                                            timeout=self.timeout)

    async def _send_shard(self, shard: int, method: str, path: str, headers: dict[str, str],
                          body: bytes | None, params: dict[str, str] | None = None
                          ) -> tuple[Endpoint, int, bytes]:
        """Send to ``shard``'s endpoint, waiting up to ``restart_wait`` while it is unreachable (its pod being
        replaced): nothing was sent then, so sending again is no retry of a request the shard has seen."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.restart_wait
        pause, longest = RESTART_POLL
        while True:
            try:
                ep = self._endpoint(shard)
                status, payload = await self._send(method, ep, path, headers, body, params)
                if not _not_sent_to_node(status, payload) or loop.time() >= deadline:
                    return ep, status, payload
                left = deadline - loop.time()
            except Unreachable:
                left = deadline - loop.time()
                if left <= 0:
                    raise
            self.restart_waits += 1
            await asyncio.sleep(min(pause, left))  # the last attempt comes at the deadline
            pause = min(pause * 2, longest)
            if self._rediscover is not None:
                await self._rediscover()

    async def _keyed(self, method: str, table: str, key: str, body: bytes | None = None,
                     ok_404: bool = False) -> tuple[int, bytes]:
        path = block_path(table, key)
        headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
        if method in ("PUT", "DELETE"):
            headers[TIMEOUT_HEADER] = f"{self.timeout:g}"
            if self.tiered is not None:  # a queued write is applied exactly once under this key
                headers["Idempotency-Key"] = uuid.uuid4().hex
        if self._service is not None:
            status, payload = await self._send(method, self._service, path, headers, body)
            if not (ok_404 and status == 404):
                self._raise_for(status, payload, f"{self._service}{path}", table, key)
            return status, payload
        if self._mirrors is not None:
            return await self._mirror_keyed(self._mirrors, method, table, key, headers, body, ok_404)
        pmap = await self.partition_map()
        route = (pmap.shard_of(table, key), pmap.epoch)
        deadline = asyncio.get_running_loop().time() + self.timeout
        for attempt in range(MISDIRECTED_ATTEMPTS):
            ep, status, payload = await self._send_shard(route[0], method, path,
                                                         headers | {ROUTED_HEADER: str(route[1])}, body)
            last = attempt == MISDIRECTED_ATTEMPTS - 1 or asyncio.get_running_loop().time() >= deadline
            if status == 421 and not last:
                # Refused before anything was done (a fence-held write too): sending it again is safe.
                route = await self._follow_misdirected(ep, table, key, route, _error_body(payload), attempt,
                                                       deadline)
                continue
            if not (ok_404 and status == 404):
                self._raise_for(status, payload, f"{ep}{path}", table, key)
            return status, payload
        raise AssertionError("unreachable")  # pragma: no cover

    async def _follow_misdirected(self, ep: Endpoint, table: str, key: str, route: tuple[int, int],
                                  doc: dict[str, Any], attempt: int, deadline: float) -> tuple[int, int]:
        """Where to send a refused keyed request next, as (shard, epoch), after a pause when the refusal taught us
        nothing new (a shard behind our map, or two shards each naming the other during a cutover)."""
        theirs = doc.get("epoch") if isinstance(doc.get("epoch"), int) else None
        owner = doc.get("owner") if isinstance(doc.get("owner"), int) else None
        self.misdirected_retries += 1
        if theirs is not None and theirs > route[1]:
            # A newer map exists: our sources, else the shard that refused us (a pushed map reaches the nodes
            # before the ConfigMap), else its word for the owner under its epoch.
            pmap = await self.refresh_map(min_epoch=theirs)
            if pmap.epoch < theirs:
                pmap = await self._adopt(await self._map_of(ep)) or pmap
            if pmap.epoch >= theirs:
                return pmap.shard_of(table, key), pmap.epoch
            return (owner if owner is not None else route[0]), theirs
        # The shard runs our epoch or an older one: it names a different owner (a cutover in progress, or a map
        # of the same epoch we took on its word) or has not received our map yet. Wait a little, growing.
        pause = min(MISDIRECTED_PAUSE * 2 ** attempt, self.lagging_shard_wait,
                    max(deadline - asyncio.get_running_loop().time(), 0.0))
        await asyncio.sleep(pause)
        if theirs is not None and theirs == route[1] and owner is not None:
            return owner, route[1]
        if self._map is not None and self._map.epoch > route[1]:
            return self._map.shard_of(table, key), self._map.epoch  # another request learnt a newer map meanwhile
        return route

    async def _map_of(self, ep: Endpoint) -> PartitionMap | None:
        """``GET /v1/partitions`` of one shard (None if it does not answer with a map)."""
        try:
            status, payload = await self.transport.request("GET", ep, "/v1/partitions", timeout=self.timeout)
            return PartitionMap.from_json(payload) if status == 200 else None
        except (Unavailable, ValueError):
            return None

    async def _adopt(self, pmap: PartitionMap | None) -> PartitionMap | None:
        """Use ``pmap`` if it is newer than the map in use; returns the map in use afterwards (None: none given)."""
        if pmap is None:
            return None
        async with self._map_lock:
            if self._map is None or pmap.epoch > self._map.epoch:
                self._map = pmap
                self.map_refreshes += 1
            return self._map

    # --- MirrorSet routing (with_mirrors) ------------------------------------------------------------

    async def _mirror_keyed(self, routing: MirrorRouting, method: str, table: str, key: str,
                            headers: dict[str, str], body: bytes | None, ok_404: bool) -> tuple[int, bytes]:
        shard = (await self.partition_map()).shard_of(table, key)
        path = block_path(table, key)
        if method == "GET":
            status, payload, url = await self._mirror_read(routing, shard, path)
        else:
            status, payload, url = await self._mirror_write(routing, shard, method, path, headers, body)
        if not (ok_404 and status == 404):
            self._raise_for(status, payload, url, table, key)
        if method != "GET":
            routing.marks.note(shard, _error_body(payload))
        return status, payload

    async def _mirror_write(self, routing: MirrorRouting, shard: int, method: str, path: str,
                            headers: dict[str, str], body: bytes | None) -> tuple[int, bytes, str]:
        """Send a write to the active primary; refused before commit by a node that is not (any more) the active
        primary, or unreachable (nothing sent), re-resolve and send again, until the call's timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        view = await routing.view()
        target, attempt = view.active, 0
        while True:
            attempt += 1
            left = max(deadline - loop.time(), 0.001)
            where: Endpoint | str = f"shard {shard} of {target}"
            try:
                # A member with no Ready pod for the shard is unreachable too (a failover moves the primary).
                where = ep = routing.endpoint(target, shard)
                status, payload = await self.transport.request(
                    method, ep, path, headers=headers | {TIMEOUT_HEADER: f"{left:.3f}"}, body=body, timeout=left)
                refused = mdecide.write_refusal(status, _error_body(payload))
                unreachable: Unreachable | None = None
            except Unreachable as exc:
                status, payload, refused, unreachable = 503, b"", "unreachable", exc
                await routing.book.refresh(target)
            observed = time.monotonic()
            if refused is None:
                return status, payload, f"{where}{path}"
            pause = mdecide.backoff(attempt)
            if attempt >= mdecide.MAX_WRITE_ATTEMPTS or loop.time() + pause >= deadline:
                if unreachable is not None:
                    raise unreachable
                return status, payload, f"{where}{path}"
            await asyncio.sleep(pause)
            view = await routing.refresh(observed)
            target = mdecide.next_write_target(view, target, _error_body(payload))

    async def _mirror_read(self, routing: MirrorRouting, shard: int, path: str) -> tuple[int, bytes, str]:
        """Read from the active; on a connection failure or a 5xx from the shard's healthy mirror copies."""
        view = await routing.view()
        failed: tuple[int, bytes, str] | None = None
        error: Unavailable | None = None
        for shard_set in [view.active, *view.read_fallbacks(shard)]:
            mirror = shard_set != view.active
            headers = routing.marks.headers(shard, routing.wait_ms) if mirror and routing.read_your_writes else {}
            try:
                ep = routing.endpoint(shard_set, shard)
                status, payload = await self.transport.request("GET", ep, path, headers=headers,
                                                               timeout=self.timeout)
            except Unavailable as exc:
                error = error or exc
                continue
            if mdecide.read_failed(status):
                failed = failed or (status, payload, f"{ep}{path}")
                continue
            if mirror and mdecide.read_needs_primary(status, _error_body(payload)):
                return await self._read_primary(routing, shard, path)
            if mirror:
                self.mirror_fallbacks += 1
                with contextlib.suppress(Unavailable):  # the answer stands even if the status cannot be read
                    await routing.refresh_if_older(mdecide.STATUS_MAX_AGE)  # has the MirrorSet failed over?
            return status, payload, f"{ep}{path}"
        if failed is not None:
            return failed
        assert error is not None  # the loop tried at least the active
        raise error

    async def _read_primary(self, routing: MirrorRouting, shard: int, path: str) -> tuple[int, bytes, str]:
        """A mirror had not applied our last write: read from the primary the MirrorSet names now."""
        view = await routing.refresh(time.monotonic())
        ep = routing.endpoint(view.active, shard)
        status, payload = await self.transport.request("GET", ep, path, timeout=self.timeout)
        return status, payload, f"{ep}{path}"

    # --- public API ------------------------------------------------------------------------------

    async def put(self, table: str, key: str, value: bytes) -> dict[str, Any]:
        """Store ``value`` under ``(table, key)``; returns the node's JSON acknowledgement, or ``Queued`` (a dict
        too) when a temporary tiered token's write was queued (``queued(id)`` asks how it went)."""
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"value must be bytes, not {type(value).__name__}")
        status, payload = await self._keyed("PUT", table, key, bytes(value))
        return self._answer(status, payload, table, key)

    def _answer(self, status: int, payload: bytes, table: str, key: str) -> dict[str, Any]:
        doc = _error_body(payload)
        if status == 202 and "queued" in doc:
            self._queued[str(doc["queued"])] = (table, key)
            return Queued(doc)
        return doc

    @property
    def token_status(self) -> TokenStatus | None:
        """The tiered token held now (tier, store, expiresAt); None without a tiered source or before the first."""
        return self.tiered.status if self.tiered is not None else None

    async def queued(self, write_id: str) -> dict[str, Any]:
        """A queued write's state ``{"id", "state": queued|applied|failed, "lsn", "error", "position"}``, asked of
        the shard that queued it (a write this client queued)."""
        if write_id not in self._queued:
            raise KeyError(f"no write {write_id} was queued by this client")
        table, key = self._queued[write_id]
        path = f"/v1/queue/{quote(write_id, safe='')}"
        if self._service is not None:
            ep = self._service
            status, payload = await self._send("GET", ep, path, {}, None)
        else:
            shard = (await self.partition_map()).shard_of(table, key)
            ep, status, payload = await self._send_shard(shard, "GET", path, {}, None)
        self._raise_for(status, payload, f"{ep}{path}", table, key)
        return _error_body(payload)

    async def get(self, table: str, key: str) -> bytes:
        """The block's bytes; NotFound if it does not exist."""
        _, payload = await self._keyed("GET", table, key)
        return payload

    async def delete(self, table: str, key: str, *, missing_ok: bool = False) -> bool:
        """Delete a block; True if it existed (or the delete was queued: ``last_queued`` has it). NotFound unless
        ``missing_ok``."""
        status, payload = await self._keyed("DELETE", table, key, ok_404=missing_ok)
        if status == 202:
            answer = self._answer(status, payload, table, key)
            self.last_queued = answer if isinstance(answer, Queued) else None
        return status != 404

    async def batch_get(self, table: str, keys: Iterable[str]) -> dict[str, bytes | None]:
        """Fetch many keys (one ``blocks:batchGet`` per owning shard); missing keys map to None."""
        unique = list(dict.fromkeys(keys))
        if self._service is not None or self._mirrors is not None:
            # A MirrorSet client reads key by key too: each read may go on to a mirror copy.
            # Through the client Service only keyed routes are forwarded, so fetch key by key.
            return await self._gather_gets(table, unique)
        pmap = await self.partition_map()
        by_shard: dict[int, list[str]] = {}
        for k in unique:
            by_shard.setdefault(pmap.shard_of(table, k), []).append(k)
        chunks = [(s, ks[i:i + BATCH_KEYS]) for s, ks in by_shard.items()
                  for i in range(0, len(ks), BATCH_KEYS)]
        out: dict[str, bytes | None] = {}
        refused: list[str] = []
        for part, wrong in await asyncio.gather(*(self._batch_shard(s, table, ks) for s, ks in chunks)):
            out.update(part)
            refused.extend(wrong)
        if refused:
            # Keys a shard no longer owns: the single-key path refreshes the map and retries.
            out.update(await self._gather_gets(table, refused))
        return {k: out[k] for k in unique}

    async def _gather_gets(self, table: str, keys: list[str]) -> dict[str, bytes | None]:
        sem = asyncio.Semaphore(self._concurrency)

        async def one(k: str) -> tuple[str, bytes | None]:
            async with sem:
                try:
                    return k, await self.get(table, k)
                except NotFound:
                    return k, None

        return dict(await asyncio.gather(*(one(k) for k in keys)))

    async def _batch_shard(self, shard: int, table: str,
                           keys: list[str]) -> tuple[dict[str, bytes | None], list[str]]:
        path = f"/v1/tables/{quote(table, safe='')}/blocks:batchGet"
        ep, status, payload = await self._send_shard(shard, "POST", path, {"Content-Type": "application/json"},
                                                     json.dumps({"keys": keys}).encode())
        url = f"{ep}{path}"
        self._raise_for(status, payload, url, table, None)
        found: dict[str, bytes | None] = {}
        refused: list[str] = []
        for item in _error_body(payload).get("blocks", []):
            err = item.get("error")
            if err and err.get("error") == "misdirected":
                refused.append(item["key"])
            elif err:
                # A block that failed verification or a shard without its map: the batch cannot be trusted.
                raise Unavailable(url, f"key {item['key']!r}: {err.get('error')}: {err.get('message')}")
            else:
                found[item["key"]] = base64.b64decode(item["value"]) if item.get("found") else None
        return found, refused

    async def scan(self, table: str, *, prefix: str = "", limit: int | None = None,
                   page: int = SCAN_PAGE) -> AsyncIterator[BlockInfo]:
        """Every block of ``table`` in key order, merged across shards (keys and sizes, not values).

        Needs direct routing: behind the client Service each request reaches one shard, and a range
        scan cannot be forwarded, so a service-only client raises ``ScanUnsupported``.
        """
        if self._service is not None:
            raise ScanUnsupported("a scan must reach every shard: give the shards' URLs (endpoints), "
                                  "not only the client Service URL")
        if self._mirrors is not None:
            await self._mirrors.view()  # scans go to the active ShardSet
        pmap = await self.partition_map()
        owners = sorted({p.shard for p in pmap.partitions})
        sources = [self._scan_shard(s, table, prefix, page, pmap) for s in owners]
        count = 0
        # Each shard scans in key order; a k-way merge keeps the whole result in order with one page
        # per shard in memory.
        async for info in _merge(sources):
            if limit is not None and count >= limit:
                return
            yield info
            count += 1

    async def _scan_shard(self, shard: int, table: str, prefix: str, page: int,
                          pmap: PartitionMap) -> AsyncIterator[BlockInfo]:
        path = f"/v1/tables/{quote(table, safe='')}/blocks"
        # Keys sort as strings, so every key with the prefix comes after the largest key below it;
        # the node has no prefix filter, so start the scan just before the prefix and stop past it.
        after: str | None = _just_below(prefix) if prefix else None
        while True:
            params = {"limit": str(page)}
            if after is not None:
                params["after"] = after
            ep, status, payload = await self._send_shard(shard, "GET", path, {}, None, params)
            self._raise_for(status, payload, f"{ep}{path}", table, None)
            doc = _error_body(payload)
            blocks = doc.get("items", [])
            for b in blocks:
                if prefix and not b["key"].startswith(prefix):
                    if b["key"] > prefix:
                        return
                    continue
                if pmap.shard_of(table, b["key"]) != shard:
                    # Blocks of a range being moved in, or moved away and not purged yet (docs/resharding.md):
                    # the owner under our map lists them, so they are not listed twice.
                    continue
                yield BlockInfo(b["key"], b.get("size"), shard,
                                {k: v for k, v in b.items() if k not in ("key", "size")})
            after = doc.get("next")
            if not after or not blocks:
                return


def _just_below(prefix: str) -> str | None:
    """A string ordered just before every string starting with ``prefix`` (None: start at the top)."""
    # "abc" > "abb\U0010ffff..." > every key starting "abb"; keys equal to "abb\U0010ffff" are
    # impossible in practice and would only be re-filtered anyway.
    last = ord(prefix[-1])
    if last == 0:
        return prefix[:-1] or None
    below = last - 1 if not 0xD800 <= last - 1 <= 0xDFFF else 0xD7FF  # surrogates cannot be encoded
    return prefix[:-1] + chr(below) + "\U0010ffff"


class _NoMap:
    async def fetch(self) -> PartitionMap:
        raise MapUnavailable("this client talks to one service URL and was given no map source")


def _as_endpoint(where: str | Endpoint) -> Endpoint:
    return where if isinstance(where, Endpoint) else Endpoint.parse(where)


def _index(eps: list[Endpoint], shard: int) -> Endpoint:
    if not 0 <= shard < len(eps):
        raise Unavailable(f"shard {shard}", f"no endpoint configured ({len(eps)} known)")
    return eps[shard]


async def _merge(sources: list[AsyncIterator[BlockInfo]]) -> AsyncIterator[BlockInfo]:
    heap: list[tuple[str, int, BlockInfo]] = []
    for i, src in enumerate(sources):
        first = await anext(src, None)
        if first is not None:
            heap.append((first.key, i, first))
    heapq.heapify(heap)
    while heap:
        _, i, info = heapq.heappop(heap)
        yield info
        nxt = await anext(sources[i], None)
        if nxt is not None:
            heapq.heappush(heap, (nxt.key, i, nxt))
