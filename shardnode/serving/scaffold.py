"""The one server scaffold of every shard-pod process (node, cache, predictor, and the ones to come).

A process supplies its state object (a ``Service``: start, shutting_down, stop), what its probes report
(``Probes``) and its own routes; ``create_server_app`` adds what every shard-pod server has: the JSON error
middleware with request counting, the partition-map ownership check, ``/healthz``, ``/readyz``,
``/metrics``, ``/openapi.json`` and ``/v1/partitions``; ``block_routes`` is the block API node and cache
share. The process start-up is shared too: ``process_parser`` (--host, --port, --log-level),
``shard_process_parser`` (plus the key Secrets, the partition map and the settings file) with
``apply_shard_args``, ``parse_process_args`` (flags and logging) and ``run`` (``web.run_app``).

Security (docs/security.md): every route declares its ``Access``; ``secure_app`` installs the auth middleware
(shardnode/auth/) with that table, and ``run`` does it for a process started with ``--security-config``, serving
HTTPS with ``--tls-dir`` (serving/tls.py). A process with neither flag refuses to start unless ``--insecure``.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import yaml
from aiohttp import web
from chronoshard.shardnode.auth.apiserver import ApiServer, load_connection
from chronoshard.shardnode.auth.authenticators import Authenticator
from chronoshard.shardnode.auth.config import SecurityConfig, SecurityConfigError, load_security_config
from chronoshard.shardnode.auth.guard import Guard
from chronoshard.shardnode.auth.policy import Access
from chronoshard.shardnode.auth.tiered import (
    TOKENS_FILE,
    RevocationSet,
    TieredTokenAuthenticator,
    TokensFile,
    parse_revocations,
)
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from . import tls
from .deadlines import deadline_middleware
from .http_common import (
    AIOHTTP_LIMITS,
    SERVER_LIMITS,
    Handler,
    error_middleware,
    load_json_config,
    setup_logging,
)
from .revocation_pull import RevocationPuller
from .routing import (
    MapEpochCollector,
    PartitionMapSource,
    PeerURLs,
    forward_session_ctx,
    ownership_middleware,
    partition_setup,
    partitions_handler,
    push_handler,
)

log = logging.getLogger("chronoshard.serving")

# A JSON request envelope around the largest block (batch bodies and headers) still fits in this.
BODY_ENVELOPE_BYTES = 1 << 20
TABLE_PATH = "/v1/tables/{table}"

# (method, route template) -> Access of every route of a built app: what the auth middleware enforces.
ROUTE_POLICIES: web.AppKey[dict[tuple[str, str], Access | None]] = web.AppKey("chronoshard_route_policies")
GUARD = web.AppKey("chronoshard_guard", Guard)
_REGISTRY = web.AppKey("chronoshard_registry", CollectorRegistry)
_AUTH_SLOT = web.AppKey("chronoshard_auth_slot", int)  # where in the middlewares the auth one goes
# The tiered tokens revoked before their exp (docs/tokens.md): pushed by the token service, checked per request.
REVOCATIONS = web.AppKey("chronoshard_revocations", RevocationSet)


class Service(Protocol):
    """The state object of one server process; its methods are the aiohttp lifecycle hooks."""

    async def start(self, app: web.Application) -> None:
        """on_startup: open stores and sessions, start background tasks."""

    async def shutting_down(self, app: web.Application) -> None:
        """on_shutdown: release long-polling readers so a graceful shutdown does not wait for them."""

    async def stop(self, app: web.Application) -> None:
        """on_cleanup: stop background tasks, close what start opened."""


S = TypeVar("S", bound=Service)


@dataclass(frozen=True)
class Probes:
    """What the standard routes report: ``readiness()`` gives the ``/readyz`` body (200 if its "ready" is
    true, else 503); ``before_scrape`` refreshes gauges that are read from a store at scrape time."""

    registry: CollectorRegistry
    readiness: Callable[[], dict[str, Any]]
    before_scrape: Callable[[], Awaitable[None]] | None = None


@dataclass(frozen=True)
class Partitioning:
    """A server that owns part of the keyspace: the mounted map and this shard's index. With ``peers``
    (the cache) a request for another shard's key is forwarded to its owner; without (the node) it gets 421."""

    source: PartitionMapSource
    shard_index: int
    peers: PeerURLs | None = None


class Route(NamedTuple):
    """One of a server's own routes and who may call it (``access``; None: refused once auth is on)."""

    method: str
    path: str
    handler: Handler
    access: Access | None = None


def block_routes(*, get: Handler, put: Handler, delete: Handler, batch_get: Handler, scan: Handler) -> list[Route]:
    """The block API (docs/interfaces.md) that the node serves from its store and the cache in front of it."""
    return [Route("GET", TABLE_PATH + "/blocks/{key}", get, Access.DATA_GET),
            Route("PUT", TABLE_PATH + "/blocks/{key}", put, Access.DATA_UPDATE),
            Route("DELETE", TABLE_PATH + "/blocks/{key}", delete, Access.DATA_DELETE),
            # A batch read names its blocks, as a GET of each would: verb get, not list.
            Route("POST", TABLE_PATH + "/blocks:batchGet", batch_get, Access.DATA_GET),
            Route("GET", TABLE_PATH + "/blocks", scan, Access.DATA_LIST)]


def load_openapi(package: str) -> dict[str, Any]:
    """Load the OpenAPI document packaged beside a server (``shardnode/<package>/openapi.yaml``)."""
    text = resources.files(f"chronoshard.shardnode.{package}").joinpath("openapi.yaml").read_text()
    return dict(yaml.safe_load(text))


def openapi_handler(package: str) -> Handler:
    """A handler serving the server's OpenAPI document as JSON (read once, when the app is built)."""
    doc = load_openapi(package)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(doc)

    return handler


async def healthz(request: web.Request) -> web.StreamResponse:
    """Liveness: the event loop answers."""
    return web.json_response({"ok": True})


def readyz_handler(readiness: Callable[[], dict[str, Any]]) -> Handler:
    """Readiness: the process's own body, 200 when its "ready" is true, else 503."""

    async def readyz(request: web.Request) -> web.StreamResponse:
        body = readiness()
        return web.json_response(body, status=200 if body["ready"] else 503)

    return readyz


def metrics_handler(probes: Probes) -> Handler:
    """Prometheus exposition of the process's registry."""

    async def metrics(request: web.Request) -> web.StreamResponse:
        if probes.before_scrape is not None:
            await probes.before_scrape()
        return web.Response(body=generate_latest(probes.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics


def _middlewares(requests: Counter | None, json_errors: bool,
                 partitioning: Partitioning | None) -> list[Any]:
    # The error middleware is outermost, so a refusal or failure in any later one is answered as JSON too.
    middlewares: list[Any] = [error_middleware(requests)] if json_errors else []
    # Next the caller's deadline, so authentication, forwarding and the handler all count against it.
    middlewares.append(deadline_middleware())
    if partitioning is not None:
        middlewares.append(ownership_middleware(partitioning.source, partitioning.shard_index,
                                                peers=partitioning.peers))
    return middlewares


def _standard_routes(probes: Probes, openapi: str | None, partitioning: Partitioning | None,
                     pushed_maps: bool = True) -> list[Route]:
    routes = [Route("GET", "/healthz", healthz, Access.PUBLIC),
              Route("GET", "/readyz", readyz_handler(probes.readiness), Access.PUBLIC),
              Route("GET", "/metrics", metrics_handler(probes), Access.METRICS)]
    if openapi is not None:
        routes.append(Route("GET", "/openapi.json", openapi_handler(openapi), Access.PUBLIC))
    if partitioning is not None:
        routes.append(Route("GET", "/v1/partitions", partitions_handler(partitioning.source), Access.PARTITIONS))
        if pushed_maps:
            routes.append(Route("PUT", "/v1/partitions", push_handler(partitioning.source), Access.ADMIN))
    return routes


def _add_routes(app: web.Application, routes: Iterable[Route], allow_head: bool) -> None:
    policies: dict[tuple[str, str], Access | None] = {}
    for route in routes:
        if route.method == "GET" and allow_head:
            resource = app.router.add_get(route.path, route.handler).resource
        else:
            resource = app.router.add_route(route.method, route.path, route.handler).resource
        # HEAD is checked as the GET it mirrors; the route template is what the middleware matches on.
        policies[(route.method, resource.canonical if resource is not None else route.path)] = route.access
    app[ROUTE_POLICIES] = policies


def route_policies(app: web.Application) -> dict[tuple[str, str], Access | None]:
    """The access table of a built app: every route's (method, template) and its Access (None: none declared)."""
    table = app[ROUTE_POLICIES]
    return dict(table)


def secure_app(app: web.Application, cfg: SecurityConfig, api: ApiServer, server: str, *,
               authenticators: Sequence[Authenticator] = ()) -> Guard:
    """Install the auth middleware (authenticate, authorize, audit) in an app built by create_server_app, before
    it starts; ``server`` labels its metrics; ``authenticators`` go first in the chain."""
    guard = Guard(cfg, api, app[_REGISTRY], server, authenticators=authenticators)
    # Inside the JSON-error middleware (so handler errors stay JSON), before the ownership check and forwarding.
    table = app[ROUTE_POLICIES]
    app.middlewares.insert(app[_AUTH_SLOT], guard.middleware(table))
    app[GUARD] = guard
    app.on_startup.append(guard.start)
    app.on_cleanup.append(guard.close)
    return guard


async def _warn_if_open(app: web.Application) -> None:
    if GUARD not in app:
        log.warning("serving WITHOUT authentication or authorization (--insecure, or no security config): "
                    "any caller may read, write and administer this shard")


def create_server_app(service: S, probes: Probes, routes: Sequence[Route], *, key: web.AppKey[S] | None = None,
                      requests: Counter | None = None, openapi: str | None = None,
                      partitioning: Partitioning | None = None, max_block_bytes: int | None = None,
                      json_errors: bool = True, allow_head: bool = False, pushed_maps: bool = True
                      ) -> web.Application:
    """Build a shard-pod server: ``routes`` plus the standard ones, the shared middlewares and ``service``'s
    lifecycle hooks; the handlers find ``service`` under ``app[key]``.

    ``requests`` counts requests by route and status; ``openapi`` names the package whose openapi.yaml
    ``/openapi.json`` serves; ``max_block_bytes`` sizes the body limit for block uploads; ``json_errors=False``
    and ``allow_head=True`` keep aiohttp's own error pages and HEAD routes (the predictor's API, which
    predates the scaffold); ``pushed_maps=False``: no ``PUT /v1/partitions`` (only node and cache take pushed maps,
    docs/resharding.md; the others follow the mounted file).
    """
    client_max_size = 1024**2 if max_block_bytes is None else max_block_bytes + BODY_ENVELOPE_BYTES
    app = web.Application(middlewares=_middlewares(requests, json_errors, partitioning),
                          client_max_size=client_max_size)
    if key is not None:
        app[key] = service
    app[_REGISTRY] = probes.registry
    app[REVOCATIONS] = RevocationSet()
    if partitioning is not None:  # the map in force, pushed or mounted, in the process's own metrics
        probes.registry.register(MapEpochCollector(partitioning.source))
    app[_AUTH_SLOT] = 2 if json_errors else 1  # after the error and deadline middlewares
    app.on_startup.append(_warn_if_open)
    app.on_startup.append(service.start)
    app.on_shutdown.append(service.shutting_down)
    app.on_cleanup.append(service.stop)
    if partitioning is not None and partitioning.peers is not None:
        app.cleanup_ctx.append(forward_session_ctx)  # one pooled session for forwarded requests
    _add_routes(app, [*routes, *_standard_routes(probes, openapi, partitioning, pushed_maps)], allow_head)
    return app


# ---- process start-up ----------------------------------------------------------------------------
def process_parser(prog: str, description: str, *, port: int, env_prefix: str | None = None
                   ) -> argparse.ArgumentParser:
    """The flags every shard-pod process has: --host, --port, --log-level. With ``env_prefix``
    (CHRONOSHARD_NODE) --host and --port fall back to <prefix>_HOST and <prefix>_PORT first."""
    env = os.environ.get
    p = argparse.ArgumentParser(prog=prog, description=description)
    pod_ip = env("POD_IP", "127.0.0.1")
    p.add_argument("--host", default=env(f"{env_prefix}_HOST", pod_ip) if env_prefix else pod_ip,
                   help="address to bind (default: $POD_IP or 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(env(f"{env_prefix}_PORT", str(port))) if env_prefix else port)
    p.add_argument("--log-level", default=env("CHRONOSHARD_LOG_LEVEL", "INFO"))
    p.add_argument("--tls-dir", default=None, help="the mounted <shardset>-tls Secret (tls.crt, tls.key, ca.crt): "
                   "serve HTTPS only")
    p.add_argument("--security-config", default=None,
                   help="security.json: authenticate and authorize every request (docs/security.md)")
    p.add_argument("--insecure", action="store_true",
                   help="without --security-config: no authentication at all (tests and local experiments only)")
    return p


@dataclass(frozen=True)
class ProcessSecurity:
    """What the security flags ask for: TLS from ``tls_dir``, auth from ``config`` (security.json); ``server``
    names the process in the auth metrics."""

    server: str
    tls_dir: Path | None
    config: Path | None
    insecure: bool
    replication_dir: Path | None = None  # the mounted <shardset>-replication ConfigMap (peers-ca.crt)


def process_security(p: argparse.ArgumentParser, args: argparse.Namespace) -> ProcessSecurity:
    """The security flags, checked: authentication is on unless --insecure says otherwise (fail closed)."""
    if args.security_config and args.insecure:
        p.error("--insecure contradicts --security-config")
    if not args.security_config and not args.insecure:
        p.error("refusing to start without authentication: pass --tls-dir and --security-config "
                "(production pods always do), or --insecure")
    return ProcessSecurity(server=p.prog.removeprefix("chronoshard-"),
                           tls_dir=Path(args.tls_dir) if args.tls_dir else None,
                           config=Path(args.security_config) if args.security_config else None,
                           insecure=bool(args.insecure),
                           replication_dir=Path(args.replication_dir) if getattr(args, "replication_dir", None)
                           else None)


def shard_process_parser(prog: str, description: str, *, port: int, env_prefix: str,
                         settings_file: str) -> argparse.ArgumentParser:
    """The flags of a process serving one shard's keyspace: process_parser's, the mounted key Secrets
    (--keyring-dir, --kek-dir), the partition map (--partition-map, --shard-index) and the settings file
    (--config, falling back to <env_prefix>_CONFIG)."""
    env = os.environ.get
    p = process_parser(prog, description, port=port, env_prefix=env_prefix)
    keyring_dir = env("CHRONOSHARD_KEYRING_DIR")
    p.add_argument("--keyring-dir", default=keyring_dir, required=not keyring_dir,
                   help="mounted keyring Secret directory")
    p.add_argument("--kek-dir", default=env("CHRONOSHARD_KEK_DIR"),
                   help="mounted KEK Secret directory (kek.key); required when the keyring holds v<N>.wrapped")
    p.add_argument("--partition-map", default=env("CHRONOSHARD_PARTITION_MAP"), help="partition map file (map.json)")
    p.add_argument("--shard-index", type=int, default=None,
                   help="this shard's index (default: the ordinal in $POD_NAME)")
    p.add_argument("--config", default=env(f"{env_prefix}_CONFIG"), help=f"{settings_file} settings file")
    p.add_argument("--replication-dir", default=env("CHRONOSHARD_REPLICATION_DIR"),
                   help="the mounted <shardset>-replication ConfigMap: its peers-ca.crt (the other MirrorSet "
                   "members' CAs) is trusted for replica certificates (with --tls-dir)")
    return p


def parse_process_args(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse the flags and set up logging (the first thing every process does); ``args.security`` is the
    checked ProcessSecurity for ``run``."""
    args = p.parse_args(argv)
    args.security = process_security(p, args)
    setup_logging(args.log_level)
    return args


class ShardSettings(Protocol):
    """The settings object of a process serving one shard: overlaid from its settings file, which it keeps
    watching, and told which part of the keyspace it serves."""

    settings_path: str | None
    partitioning: Partitioning | None

    def apply(self, settings: dict[str, Any]) -> None:
        """Overlay the settings file's values."""


def apply_shard_args(cfg: ShardSettings, args: argparse.Namespace, *, forward: bool = False) -> None:
    """Apply what shard_process_parser's flags ask for: the settings file now (the body size limit is fixed
    when the app is built) and watched later, and the partitioning; ``forward``: forward misdirected
    requests to the peers named by the pod's environment (PeerURLs.from_env) instead of refusing them."""
    cfg.apply(load_json_config(args.config))
    cfg.settings_path = args.config
    source, shard_index = partition_setup(args.partition_map, args.shard_index)
    if source is not None and shard_index is not None:
        # Caches serving TLS forward to their peers over https (minimal edit by the TLS work).
        scheme = "https" if getattr(args, "tls_dir", None) else "http"
        cfg.partitioning = Partitioning(source, shard_index, PeerURLs.from_env(scheme=scheme) if forward else None)


def secure_from_flags(app: web.Application, security: ProcessSecurity) -> None:
    """Install what ``security`` asks for before the app starts: the auth middleware from security.json (the API
    server from the in-cluster config or $KUBECONFIG); a broken config or connection ends the process."""
    if security.config is None:
        return
    try:
        cfg = load_security_config(security.config)
        connection = load_connection()
    except SecurityConfigError as exc:
        log.error("security config not usable, refusing to start: %s", exc)
        raise SystemExit(2) from None
    except Exception as exc:  # kubernetes.config's errors: no in-cluster config, no usable kubeconfig
        log.error("no API server connection for TokenReview/SubjectAccessReview, refusing to start: %s",
                  type(exc).__name__)
        raise SystemExit(2) from None
    if security.tls_dir is None:
        log.warning("authentication is on but TLS is not (no --tls-dir): credentials travel in plain text")
    tiered = tiered_authenticator(app, security.config.parent / TOKENS_FILE, cfg)
    secure_app(app, cfg, ApiServer(connection), security.server, authenticators=[tiered])
    puller = RevocationPuller(tiered.tokens, app[REVOCATIONS])  # the pushes' back-up (docs/tokens.md)
    app.on_startup.append(puller.start)
    app.on_cleanup.append(puller.stop)


def tiered_authenticator(app: web.Application, tokens_json: Path, cfg: SecurityConfig) -> TieredTokenAuthenticator:
    """The tiered-token verifier of a server: keys from ``tokens_json`` (beside security.json in the mounted config
    ConfigMap; re-read when it changes, none while it is absent), the app's revocation set."""
    return TieredTokenAuthenticator(TokensFile(tokens_json), f"{cfg.namespace}/{cfg.name}", app[REVOCATIONS])


async def put_revocations(request: web.Request) -> web.StreamResponse:
    """PUT /v1/tokens/revocations {"revocations": [{"tokenId", "expiresAt"}]}: refused at once from now on."""
    try:
        items = parse_revocations(await request.json())
    except ValueError as exc:
        return web.json_response({"error": "invalid_body", "message": str(exc)}, status=400)
    revoked = request.app[REVOCATIONS]
    kept = sum(revoked.add(jti, exp) for jti, exp in items)
    return web.json_response({"accepted": len(items), "kept": kept, "revoked": len(revoked)})


async def get_revocations(request: web.Request) -> web.StreamResponse:
    """GET /v1/tokens/revocations: the revoked token ids still in force."""
    return web.json_response({"revocations": request.app[REVOCATIONS].entries()})


def revocation_routes() -> list[Route]:
    """The tiered tokens' revocation routes of node and cache (ADMIN: pod, operator, or the token service's identity
    listed in operatorIdentities)."""
    return [Route("PUT", "/v1/tokens/revocations", put_revocations, Access.ADMIN),
            Route("GET", "/v1/tokens/revocations", get_revocations, Access.ADMIN)]


def run(app: web.Application, host: str, port: int, *, security: ProcessSecurity,
        long_request_lines: bool = True) -> None:
    """Serve ``app`` until SIGTERM (no access log, 10 s graceful shutdown), secured as ``security`` says (HTTPS
    with its TLS directory, the auth middleware with its security config). ``long_request_lines`` allows request
    lines long enough for any valid block key (servers whose URLs carry keys)."""
    secure_from_flags(app, security)
    ssl_context = (tls.install(app, security.tls_dir, replication_dir=security.replication_dir)
                   if security.tls_dir is not None else None)
    limits = SERVER_LIMITS if long_request_lines else AIOHTTP_LIMITS
    web.run_app(app, host=host, port=port, access_log=None, print=None, shutdown_timeout=10,
                ssl_context=ssl_context, **limits)
