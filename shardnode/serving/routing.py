"""Ownership checks and forwarding for shard-node and cache HTTP apps.

Three pieces, all driven by the mounted partition map (``map.json``, format in docs/interfaces.md):

* ``PartitionMapSource`` reads the map from the mounted ConfigMap (kubelet's ``..data`` symlink
  layout), reloads it when it changes (checked at most once per ``min_interval`` seconds, on access,
  so no background task is needed), keeps the last good map when a new one does not parse or goes
  back in epoch, and reports that error (``load_error``, metrics, log). A map pushed with ``PUT /v1/partitions``
  (``push_handler``, docs/resharding.md) is in force when its epoch is higher than the file's; the node persists
  it before answering, a cache keeps it in memory (a restarted cache reads the ConfigMap, which the operator
  updates right after its pushes).
* ``ownership_middleware(source, shard_index)`` answers HTTP 421
  ``{"error": "misdirected", "message", "owner", "epoch"}`` for any request whose route has
  ``{table}`` and ``{key}`` match-info (``/v1/tables/{table}/blocks/{key}``, frames, ...) when the key
  is not owned by ``shard_index``. Given ``peers`` (the cache), it forwards such a request once to the
  owner's cache instead, with ``X-Chronoshard-Forwarded: <epoch>``; a request that already carries
  that header is never forwarded again (at most one hop, no loops), and a forwarded request whose
  epoch differs from the receiver's map is answered 421 with the receiver's owner and epoch.
  Map-aware clients send ``X-Chronoshard-Routed: <epoch>``, which gets the same treatment, so a
  client with a stale map learns it from the first refusal instead of being silently forwarded.
* ``PeerURLs`` turns a shard index into a base URL: a template such as
  ``http://{shardset}-{shard}.{service}.{namespace}.svc:7401`` in a cluster, or a list of URLs for
  local processes on 127.0.0.x / free ports.

Example (a node app; the cache passes ``peers=`` to forward instead of refusing)::

    source = PartitionMapSource("/etc/chronoshard/partitions/map.json")
    shard = shard_index_from_pod_name(os.environ["POD_NAME"])
    app = web.Application(middlewares=[ownership_middleware(source, shard)])
    app.router.add_get("/v1/partitions", partitions_handler(source))
    app.router.add_get("/v1/tables/{table}/blocks/{key}", get_block)

Handlers that take many keys (batch get, scan) check each key with ``source.owner(table, key)``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiohttp
from aiohttp import web
from chronoshard.shardnode.auth.writer import ON_BEHALF_HEADER, on_behalf_headers
from chronoshard.shardnode.keyspace.partitioning import PartitionMap, keyspace_id
from multidict import CIMultiDict
from prometheus_client import Counter, Gauge
from prometheus_client.core import GaugeMetricFamily

from . import tls
from .deadlines import onward_headers
from .peer_http import PeerError, PeerPool

log = logging.getLogger(__name__)

FORWARDED_HEADER = "X-Chronoshard-Forwarded"
# Sent by map-aware clients: "I routed this by epoch N; do not forward it, refuse it if I am wrong".
ROUTED_HEADER = "X-Chronoshard-Routed"
EPOCH_HEADER = "X-Chronoshard-Epoch"
DEFAULT_PEER_TEMPLATE = "{scheme}://{shardset}-{shard}.{service}.{namespace}.svc:{port}"
DEFAULT_CACHE_PORT = 7401

MAP_EPOCH = Gauge("chronoshard_partition_map_epoch", "Epoch of the partition map in use (0: none loaded)")
MAP_LOAD_ERRORS = Counter(
    "chronoshard_partition_map_load_errors_total", "Partition map files that failed to load (old map kept)"
)
MISDIRECTED = Counter("chronoshard_misdirected_total", "Requests answered 421 (key owned by another shard)")
FORWARDED = Counter(
    "chronoshard_forwarded_total", "Requests forwarded to the owning shard's cache", ["outcome"]
)
# Bound once: a forwarded request counts its outcome without a labels() lookup.
FORWARDED_OK = FORWARDED.labels("ok")
FORWARDED_REFUSED = FORWARDED.labels("refused")
FORWARDED_UNAVAILABLE = FORWARDED.labels("unavailable")

# Fallback for unmatched routes (404s) so a wrong path on the wrong shard still names the owner.
_KEY_PATH = re.compile(r"^/v1/tables/(?P<table>[^/]+)/(?:blocks|frames)/(?P<key>.+)$")
_POD_ORDINAL = re.compile(r"^(?P<shardset>.+)-(?P<ordinal>\d+)$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Where an app that forwards keeps its one pool of peer connections (see forward_session_ctx).
FORWARD_SESSION = web.AppKey("chronoshard_forward_session", PeerPool)
# The forwarding pool: connections to a peer stay open between requests (no handshake per request); at most
# FORWARD_CONNECTIONS_PER_PEER are open to one peer at once (a forward beyond them waits for one to come free,
# within its timeout). Idle ones are closed after FORWARD_KEEPALIVE_SECONDS, before aiohttp's server closes its
# side (75 s), so a forward never picks a connection the peer is just closing.
FORWARD_CONNECTIONS_PER_PEER = 64
FORWARD_CONNECTIONS = 256
FORWARD_KEEPALIVE_SECONDS = 60.0
DEFAULT_FORWARD_TIMEOUT = aiohttp.ClientTimeout(total=10.0)


def shard_index_from_pod_name(pod_name: str) -> int:
    """The StatefulSet ordinal of ``<shardset>-<i>``; ValueError if the name has none."""
    m = _POD_ORDINAL.match(pod_name)
    if not m:
        raise ValueError(f"pod name {pod_name!r} does not end in -<ordinal>")
    return int(m.group("ordinal"))


class NoPartitionMap(RuntimeError):
    """No valid partition map has been loaded yet."""


@dataclass(frozen=True)
class Misdirection:
    """Why a key is refused: who owns it under which epoch."""

    table: str
    key: str
    owner: int
    epoch: int

    def body(self) -> dict[str, object]:
        """The 421 JSON body fixed in docs/interfaces.md."""
        return {
            "error": "misdirected",
            "message": f"key {self.key!r} of table {self.table!r} is owned by shard {self.owner} "
            f"(partition map epoch {self.epoch})",
            "owner": self.owner,
            "epoch": self.epoch,
        }


def misdirected_response(m: Misdirection) -> web.Response:
    """HTTP 421 with the misdirected body and the epoch header."""
    MISDIRECTED.inc()
    return web.json_response(m.body(), status=421, headers={EPOCH_HEADER: str(m.epoch)})


PushOutcome = Literal["accepted", "same"]


class FenceGone(RuntimeError):
    """A push conditioned on a fence (``?fence=<name>``) whose fence no longer stands (409 ``fence_gone``)."""


class MapConflict(ValueError):
    """A pushed map refused (409): its epoch is below the one in force, or equal with other content."""

    def __init__(self, message: str, epoch: int | None) -> None:
        super().__init__(message)
        self.epoch = epoch


def push_decision(in_force: PartitionMap | None, pushed: PartitionMap) -> PushOutcome:
    """Whether a pushed map is taken (docs/resharding.md, ``PUT /v1/partitions``): a higher epoch than the map in
    force is accepted, the same map again is a no-op; MapConflict for a lower epoch or the same with other content."""
    if in_force is None or pushed.epoch > in_force.epoch:
        return "accepted"
    if pushed == in_force:
        return "same"
    if pushed.epoch == in_force.epoch:
        raise MapConflict(f"epoch {pushed.epoch} is in force with other content", in_force.epoch)
    raise MapConflict(f"epoch {pushed.epoch} is older than the map in force (epoch {in_force.epoch})",
                      in_force.epoch)


def in_force(mounted: PartitionMap | None, pushed: PartitionMap | None) -> PartitionMap | None:
    """The map in force: the higher-epoch one of the mounted file and the last pushed map (the file wins a tie)."""
    if pushed is None or (mounted is not None and mounted.epoch >= pushed.epoch):
        return mounted
    return pushed


class PartitionMapSource:
    """The partition map in force: the mounted file (hot-reloaded on change; the last good map wins on errors) or
    the map pushed with ``PUT /v1/partitions``, whichever has the higher epoch (docs/resharding.md).

    ``persist`` (set by the node) stores a pushed map before it is taken, so a restarted node never falls back to an
    older mounted map (``adopt_pushed`` loads it at start-up); a cache keeps it in memory only. ``listeners`` are
    called when the map in force changes (held writes re-check their owner)."""

    def __init__(self, path: str | os.PathLike[str], *, min_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.min_interval = min_interval
        self.load_error: str | None = None
        self._file_map: PartitionMap | None = None
        self._pushed: PartitionMap | None = None
        self._map: PartitionMap | None = None
        self._fingerprint: tuple[object, ...] | None = None
        self._checked_at = float("-inf")
        self.persist: Callable[[PartitionMap], Awaitable[None]] | None = None
        # Set by the node: renew the named fence if it stands, else False (a push with ?fence=<name>).
        self.fence_renew: Callable[[str], bool] | None = None
        self.listeners: list[Callable[[], None]] = []
        self._push_lock: asyncio.Lock | None = None
        self.reload()

    @classmethod
    def from_map(cls, pmap: PartitionMap) -> PartitionMapSource:
        """A fixed in-memory source (tests, tools); ``reload`` never changes it (a push still may)."""
        src = cls.__new__(cls)
        src.path = Path("/nonexistent")
        src.min_interval = float("inf")
        src.load_error = None
        src._file_map = src._map = pmap
        src._pushed = None
        src._fingerprint = ("fixed",)
        src._checked_at = float("inf")
        src.persist = None
        src.fence_renew = None
        src.listeners = []
        src._push_lock = None
        return src

    def _snapshot(self) -> tuple[Path, tuple[object, ...]]:
        # kubelet layout: <dir>/map.json -> ..data/map.json, ..data -> ..<timestamp>. Resolving ..data
        # once pins one snapshot; its target name changes on every update, so it is the fingerprint.
        data_dir = self.path.parent / "..data"
        if data_dir.is_symlink():
            snap = data_dir.resolve()
            file = snap / self.path.name
        else:
            file = self.path.resolve()
        st = file.stat()
        return file, (str(file), st.st_ino, st.st_mtime_ns, st.st_size)

    def reload(self) -> bool:
        """Re-read the file if it changed; True if the map in force changed. Errors keep the old map."""
        self._checked_at = time.monotonic()
        try:
            file, fingerprint = self._snapshot()
            if fingerprint == self._fingerprint:
                return False
            new = PartitionMap.from_json(file.read_bytes())
        except OSError as exc:
            return self._fail(f"cannot read partition map: {exc}")
        except ValueError as exc:
            return self._fail(str(exc))
        self._fingerprint = fingerprint
        if self._file_map is not None and new.epoch < self._file_map.epoch:
            return self._fail(f"partition map epoch went back from {self._file_map.epoch} to {new.epoch}; ignored")
        self._file_map = new
        self.load_error = None
        return self._refresh()

    def _refresh(self) -> bool:
        """Recompute the map in force; tell the listeners when it changed."""
        new = in_force(self._file_map, self._pushed)
        changed = new != self._map
        self._map = new
        if new is not None:
            MAP_EPOCH.set(new.epoch)
        if changed and new is not None:
            log.info("partition map in force: epoch %d, %d shards (%s)", new.epoch, new.shards,
                     "pushed" if new is self._pushed else "mounted file")
            for listener in self.listeners:
                listener()
        return changed

    async def push(self, pmap: PartitionMap, fence: str | None = None) -> PushOutcome:
        """Take a pushed map (persisted first when ``persist`` is set); MapConflict when it is refused. With
        ``fence``, a map not yet in force is taken only while that fence stands (renewed first, so it cannot lapse
        while the map is stored), else FenceGone: a source gives a range away only while its writes are held."""
        if self._push_lock is None:
            self._push_lock = asyncio.Lock()  # made on the serving loop, not at construction
        async with self._push_lock:  # one push at a time: the decision and the persist see the same map in force
            self.maybe_reload()
            outcome = push_decision(self._map, pmap)
            if outcome == "accepted":
                if fence is not None and (self.fence_renew is None or not self.fence_renew(fence)):
                    raise FenceGone(f"fence {fence!r} does not stand here (lifted, lapsed, or never put)")
                if self.persist is not None:
                    await self.persist(pmap)
                self._pushed = pmap
                self._refresh()
            return outcome

    def adopt_pushed(self, pmap: PartitionMap | None) -> None:
        """At start-up: the map last pushed and persisted (None: none was)."""
        if pmap is not None and (self._pushed is None or pmap.epoch > self._pushed.epoch):
            self._pushed = pmap
            self._refresh()

    @property
    def pushed(self) -> PartitionMap | None:
        """The last pushed map (None: none), in force or not."""
        return self._pushed

    def _fail(self, message: str) -> bool:
        if message != self.load_error:
            # Log once per distinct error, not on every poll.
            log.error("partition map %s: %s (keeping epoch %s)", self.path, message, self.epoch)
            MAP_LOAD_ERRORS.inc()
        self.load_error = message
        return False

    def maybe_reload(self) -> None:
        """Reload if at least ``min_interval`` seconds passed since the last check."""
        if time.monotonic() - self._checked_at >= self.min_interval:
            self.reload()

    @property
    def map(self) -> PartitionMap | None:
        """The current map (after a cheap, rate-limited change check), or None if none loaded."""
        self.maybe_reload()
        return self._map

    @property
    def epoch(self) -> int | None:
        """Epoch of the current map without triggering a reload."""
        return self._map.epoch if self._map else None

    def require(self) -> PartitionMap:
        """The current map; NoPartitionMap if none was ever loaded."""
        pmap = self.map
        if pmap is None:
            raise NoPartitionMap(f"no partition map loaded from {self.path}: {self.load_error}")
        return pmap

    def owner(self, table: str, key: str) -> int:
        """The shard owning ``(table, key)`` under the current map."""
        return self.require().owner_of(keyspace_id(table, key)).shard

    def check(self, shard_index: int, table: str, key: str) -> Misdirection | None:
        """None if ``shard_index`` owns the key, else who does."""
        pmap = self.require()
        owner = pmap.owner_of(keyspace_id(table, key)).shard
        return None if owner == shard_index else Misdirection(table, key, owner, pmap.epoch)

    def status(self) -> dict[str, object]:
        """What this process has loaded (safe to serve): epoch, shards, load error."""
        return {
            "epoch": self.epoch,
            "shards": self._map.shards if self._map else None,
            "loadError": self.load_error,
        }


class MapEpochCollector:
    """``chronoshard_partition_map_epoch`` in a process's own registry: the epoch of the map in force (pushed or
    mounted), read at scrape time (0: none loaded)."""

    def __init__(self, source: PartitionMapSource) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The one sample."""
        yield GaugeMetricFamily("chronoshard_partition_map_epoch", "Epoch of the partition map in force (pushed "
                                "or mounted; 0: none loaded)", value=self.source.epoch or 0)


class PeerURLs:
    """Base URL of each shard's cache (or node): from a template or an explicit list."""

    def __init__(self, template: str | None = None, urls: Sequence[str] | None = None,
                 **fields: object) -> None:
        if (template is None) == (urls is None):
            raise ValueError("give exactly one of a URL template or a URL list")
        self.template = template
        self.urls = [u.rstrip("/") for u in urls] if urls is not None else None
        self.fields = fields
        if template is not None:
            # Fail at start-up, not on the first forwarded request.
            try:
                template.format(shard=0, **fields)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"bad peer URL template {template!r}: missing or bad field {exc}") from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, port: int = DEFAULT_CACHE_PORT,
                 scheme: str = "http") -> PeerURLs:
        """Cluster addresses from the pod's env: POD_NAME, POD_NAMESPACE, CHRONOSHARD_HEADLESS_SERVICE;
        ``scheme`` is https when the caches serve TLS (the peers' DNS names are in their certificate).

        ``CHRONOSHARD_PEER_URLS`` (comma-separated) or ``CHRONOSHARD_PEER_URL_TEMPLATE`` override it,
        so local processes can use 127.0.0.x addresses.
        """
        env = os.environ if env is None else env
        if env.get("CHRONOSHARD_PEER_URLS"):
            return cls(urls=[u.strip() for u in env["CHRONOSHARD_PEER_URLS"].split(",") if u.strip()])
        pod = env.get("POD_NAME", "")
        m = _POD_ORDINAL.match(pod)
        shardset = m.group("shardset") if m else ""
        return cls(
            env.get("CHRONOSHARD_PEER_URL_TEMPLATE", DEFAULT_PEER_TEMPLATE),
            shardset=shardset,
            # The operator names the headless Service "<shardset>-headless" (operator/naming.py).
            service=env.get("CHRONOSHARD_HEADLESS_SERVICE", f"{shardset}-headless"),
            namespace=env.get("POD_NAMESPACE", "default"),
            port=port,
            scheme=scheme,
        )

    def __call__(self, shard: int) -> str:
        """Base URL (no trailing slash) of ``shard``."""
        if self.template is not None:
            return self.template.format(shard=shard, **self.fields).rstrip("/")
        urls = self.urls or []  # __init__ took exactly one of the two
        if not 0 <= shard < len(urls):
            raise LookupError(f"no URL configured for shard {shard} ({len(urls)} known)")
        return urls[shard]


# Hop-by-hop headers (RFC 9110 7.6.1) and those aiohttp recomputes must not be copied across a hop.
_HOP_HEADERS = frozenset(
    h.lower()
    for h in ("Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
              "Transfer-Encoding", "Upgrade", "Host", "Content-Length", "Content-Encoding")
)
# ... nor the writer a caller claims: the forward names its own (see ``forward``).
_NOT_COPIED = _HOP_HEADERS | {ON_BEHALF_HEADER.lower()}
# The owner's answer keeps its Content-Encoding: its body is passed on as it came.
_ANSWER_NOT_COPIED = _HOP_HEADERS - {"content-encoding"}


async def forward(
    request: web.Request,
    owner_url: str,
    epoch: int,
    *,
    session: PeerPool,
    timeout: aiohttp.ClientTimeout = DEFAULT_FORWARD_TIMEOUT,
) -> web.Response:
    """Send ``request`` once to ``owner_url`` (same method, path, query, body) marked as forwarded, over
    ``session``'s pooled connections (``forward_session``).

    Answers 503 ``{"error": "unavailable"}`` if the owner cannot be reached; never retries.
    """
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_COPIED}
    headers[FORWARDED_HEADER] = str(epoch)
    # The peer sees our pod certificate, so it takes the writer from us: the caller's own, never one it claimed.
    headers.update(on_behalf_headers(request))
    headers.update(onward_headers(request))  # what is left of the caller's deadline, not what it started with
    body = await request.read()
    try:
        # raw_path_qs keeps percent-encoding (a key may contain "/" or spaces), so the owner sees the same URL.
        resp = await session.request(request.method, owner_url.rstrip("/"), request.rel_url.raw_path_qs, headers,
                                     body, timeout.total)
    except (PeerError, ValueError, TimeoutError) as exc:
        FORWARDED_UNAVAILABLE.inc()
        return web.json_response(
            {"error": "unavailable", "message": f"owner at {owner_url} unreachable: {type(exc).__name__}"},
            status=503,
        )
    (FORWARDED_OK if resp.status != 421 else FORWARDED_REFUSED).inc()
    # The body is passed on as the owner sent it (not decompressed), so its Content-Encoding goes with it.
    out_headers = CIMultiDict((k, v) for k, v in resp.headers.items() if k.lower() not in _ANSWER_NOT_COPIED)
    return web.Response(status=resp.status, body=resp.body, headers=out_headers)


def _table_key(request: web.Request) -> tuple[str, str] | None:
    info = request.match_info
    table, key = info.get("table"), info.get("key")
    if table is not None and key is not None:
        return table, key
    m = _KEY_PATH.match(request.path)
    return (m.group("table"), m.group("key")) if m else None


def ownership_middleware(
    source: PartitionMapSource,
    shard_index: int,
    *,
    peers: Callable[[int], str] | None = None,
    timeout: float = 10.0,
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """aiohttp middleware refusing (421) or, with ``peers``, forwarding requests for keys not owned.

    With ``peers`` the app must keep its pooled session in ``app[FORWARD_SESSION]``
    (``app.cleanup_ctx.append(forward_session_ctx)``): a forward never opens a session of its own.
    """
    client_timeout = aiohttp.ClientTimeout(total=timeout)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        tk = _table_key(request)
        if tk is None:
            return await handler(request)
        try:
            pmap = source.require()
        except NoPartitionMap as exc:
            return web.json_response({"error": "unavailable", "message": str(exc)}, status=503)
        table, key = tk
        owner = pmap.owner_of(keyspace_id(table, key)).shard
        # A request forwarded by a cache or routed by a map-aware client has had its hop: never
        # forward it again (no loops), and refuse it if it was routed under another epoch.
        forwarded = request.headers.get(FORWARDED_HEADER) or request.headers.get(ROUTED_HEADER)
        if forwarded is not None and forwarded != str(pmap.epoch):
            # The sender routed under another map: tell it who owns the key under ours (and our
            # epoch) instead of serving, so it refreshes its map rather than trusting a stale one.
            return misdirected_response(Misdirection(table, key, owner, pmap.epoch))
        if owner == shard_index:
            return await handler(request)
        if peers is None or forwarded is not None:
            return misdirected_response(Misdirection(table, key, owner, pmap.epoch))
        return await forward(request, peers(owner), pmap.epoch, session=request.app[FORWARD_SESSION],
                             timeout=client_timeout)

    return middleware


def partitions_handler(source: PartitionMapSource) -> Handler:
    """Handler for ``GET /v1/partitions``: the map as in map.json, plus ``loadError``."""

    async def handler(request: web.Request) -> web.Response:
        pmap = source.map
        if pmap is None:
            return web.json_response(
                {"error": "unavailable", "message": f"no partition map loaded: {source.load_error}"},
                status=503,
            )
        return web.json_response(pmap.to_dict() | {"loadError": source.load_error})

    return handler


def push_handler(source: PartitionMapSource) -> Handler:
    """Handler for ``PUT /v1/partitions[?fence=<name>]`` (docs/resharding.md): a higher epoch is taken (200
    ``accepted``), the map in force again is a no-op (200 ``same``), a lower epoch or the same epoch with other content
    is 409 ``epoch_conflict``; with ``fence``, a new map is taken only while that fence stands (409 ``fence_gone``)."""

    async def handler(request: web.Request) -> web.Response:
        try:
            pmap = PartitionMap.from_json(await request.read())
        except (ValueError, UnicodeDecodeError) as exc:
            return web.json_response({"error": "invalid_body", "message": f"not a partition map: {exc}"}, status=400)
        fence = request.query.get("fence")
        try:
            outcome = await source.push(pmap, fence)
        except MapConflict as exc:
            return web.json_response({"error": "epoch_conflict", "message": str(exc), "epoch": exc.epoch},
                                     status=409)
        except FenceGone as exc:
            return web.json_response({"error": "fence_gone", "message": str(exc), "epoch": source.epoch},
                                     status=409)
        return web.json_response({"epoch": pmap.epoch, "outcome": outcome})

    return handler


def forward_session(app: web.Application) -> PeerPool:
    """The pooled connections for forwarded requests: persistent, bounded connections to each peer (presenting the
    pod's certificate and reusing TLS connections when TLS is installed); no cookie jar, so nothing one caller's
    answer set is ever sent along with another caller's request."""
    return PeerPool(ssl=app.get(tls.CLIENT_SSL), limit=FORWARD_CONNECTIONS, limit_per_peer=FORWARD_CONNECTIONS_PER_PEER,
                    keepalive=FORWARD_KEEPALIVE_SECONDS)


async def forward_session_ctx(app: web.Application) -> AsyncIterator[None]:
    """``app.cleanup_ctx.append(forward_session_ctx)``: open the app's ``forward_session`` while it runs."""
    app[FORWARD_SESSION] = forward_session(app)
    yield
    await app[FORWARD_SESSION].close()


def partition_setup(map_path: str | None, shard_index: int | None) -> tuple[PartitionMapSource | None, int | None]:
    """The partition-map source and this shard's index when --partition-map is given (else (None, None))."""
    if not map_path:
        return None, None
    if shard_index is None:
        pod = os.environ.get("POD_NAME")
        if not pod:
            raise SystemExit("--partition-map needs --shard-index or POD_NAME to know which shard this is")
        shard_index = shard_index_from_pod_name(pod)
    return PartitionMapSource(map_path), shard_index
