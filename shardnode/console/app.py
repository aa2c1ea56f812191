"""The console's aiohttp app: the JSON API behind the session and CSRF checks, the scaffold's probes and OpenAPI
document, and the UI's static files (package data) at ``/``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from aiohttp import web
from chronoshard.shardnode.serving.http_common import ApiError, Handler, error_middleware
from chronoshard.shardnode.serving.scaffold import Probes, healthz, metrics_handler, openapi_handler, readyz_handler
from prometheus_client import CollectorRegistry, Counter

from .api import ROUTES
from .middleware import headers_middleware, session_middleware
from .proxyauth import proxy_middleware
from .state import CONSOLE, Console

STATIC = "static"


def static_dir() -> Path:
    """Where the UI's files are (``shardnode/console/static/``, installed as package data)."""
    return Path(str(resources.files("chronoshard.shardnode.console").joinpath(STATIC)))


def resolve_static(root: Path, tail: str) -> Path | None:
    """The file ``tail`` names under ``root`` (``index.html`` for the root or a directory); None for anything
    outside ``root``, hidden, or missing."""
    parts = [p for p in tail.split("/") if p]
    if any(p.startswith(".") or "\\" in p for p in parts):
        return None
    base = root.resolve()
    path = base.joinpath(*parts).resolve() if parts else base
    if not path.is_relative_to(base):
        return None
    if path.is_dir():
        path = path / "index.html"
    return path if path.is_file() else None


def static_handler(root: Path) -> Handler:
    """Serve the UI's files; an unknown path is a JSON 404."""

    async def handler(request: web.Request) -> web.StreamResponse:
        path = resolve_static(root, request.match_info["tail"])
        if path is None:
            raise ApiError(404, "not_found", f"no such page: {request.path}")
        return web.FileResponse(path)

    return handler


def create_app(console: Console, *, static_root: Path | None = None,
               registry: CollectorRegistry | None = None) -> web.Application:
    """The console app over ``console`` (the UI from ``static_root``, default the packaged files)."""
    registry = registry if registry is not None else CollectorRegistry()
    requests = Counter("chronoshard_console_requests", "Console requests by route and status",
                       ["route", "status"], registry=registry)
    # The proxy's headers are judged (and stripped) before the session check, which compares them.
    proxy = [proxy_middleware(console.proxy)] if console.proxy is not None else []
    app = web.Application(middlewares=[headers_middleware, error_middleware(requests), *proxy, session_middleware],
                          client_max_size=64 * 1024)
    app[CONSOLE] = console
    app.on_startup.append(console.start)
    app.on_shutdown.append(console.shutting_down)
    app.on_cleanup.append(console.stop)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    probes = Probes(registry, lambda: {"ready": True, "sessions": len(console.sessions)})
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz_handler(probes.readiness))
    app.router.add_get("/metrics", metrics_handler(probes))
    app.router.add_get("/openapi.json", openapi_handler("console"))
    # Last: everything no route above serves is a file of the UI (or a 404).
    app.router.add_get("/{tail:.*}", static_handler(static_root or static_dir()))
    return app
