"""Shared HTTP plumbing for the node and the cache: JSON errors, input validation, request metrics."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypedDict

from aiohttp import web
from prometheus_client import Counter

log = logging.getLogger(__name__)

TABLE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Keys travel as one URL path segment: no "/" and no control characters.
KEY_RE = re.compile(r"[^\x00-\x1f\x7f/]{1,1024}")
MAX_BATCH_KEYS = 1000


class ServerLimits(TypedDict):
    """The HTTP parser's limits (keyword arguments of web.run_app and web.AppRunner)."""

    max_line_size: int
    max_field_size: int


# aiohttp's parser answers over-long request lines with a text/plain 400 before any middleware runs;
# a 1024-character key percent-encodes to up to ~12 KiB, so allow lines far beyond any valid request.
SERVER_LIMITS = ServerLimits(max_line_size=1024 * 1024, max_field_size=64 * 1024)
# aiohttp's own defaults, for a server whose URLs carry no block keys.
AIOHTTP_LIMITS = ServerLimits(max_line_size=8190, max_field_size=8190)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answered as ``{"error": code, "message": ...}`` with the given status."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra
        self.headers: dict[str, str] = {}  # sent with the error (e.g. Retry-After), never in the body

    def with_headers(self, **headers: str) -> ApiError:
        """The same error answered with these headers (``Retry_After`` is sent as ``Retry-After``)."""
        self.headers.update({name.replace("_", "-"): value for name, value in headers.items()})
        return self


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    """A JSON error body."""
    return web.json_response({"error": code, "message": message, **extra}, status=status)


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
               415: "unsupported_media_type", 421: "misdirected"}


def error_middleware(requests: Counter | None = None) -> Any:
    """Turn every failure into a JSON error; count requests by route template and status."""
    children: dict[tuple[str, int], Any] = {}  # labels() takes a lock and builds a key: resolve each pair once

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except ApiError as exc:
            resp = error_response(exc.status, exc.code, exc.message, **exc.extra)
            resp.headers.update(exc.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            text = exc.text if exc.text and not exc.text.startswith("{") else exc.reason
            resp = error_response(exc.status, _HTTP_CODES.get(exc.status, "http_error"), text or exc.reason)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            resp = error_response(500, "internal", "internal server error")
        if requests is not None:
            info = request.match_info.route.resource
            route = info.canonical if info is not None else "unmatched"
            child = children.get((route, resp.status))
            if child is None:
                child = children[(route, resp.status)] = requests.labels(route, str(resp.status))
            child.inc()
        return resp

    return middleware


def table_param(request: web.Request) -> str:
    """The validated {table} path parameter."""
    table = request.match_info["table"]
    if not TABLE_RE.fullmatch(table):
        raise ApiError(400, "invalid_table", "table must match [A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
    return table


def check_key(key: Any) -> str:
    """Validate one block key (used for path parameters and JSON bodies)."""
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise ApiError(400, "invalid_key", "key must be 1-1024 characters without '/' or control characters")
    try:
        key.encode()
    except UnicodeEncodeError:
        raise ApiError(400, "invalid_key", "key must be valid Unicode") from None
    return key


def key_param(request: web.Request) -> str:
    """The validated {key} path parameter."""
    return check_key(request.match_info["key"])


def int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter within [lo, hi]."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise ApiError(400, "invalid_parameter", f"{name} must be between {lo} and {hi}")
    return value


def float_query(request: web.Request, name: str, default: float, lo: float, hi: float) -> float:
    """A number query parameter within [lo, hi]."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{name} must be a number") from None
    if not lo <= value <= hi:  # also rejects NaN
        raise ApiError(400, "invalid_parameter", f"{name} must be between {lo} and {hi}")
    return value


def bool_query(request: web.Request, name: str) -> bool:
    """A true/false query parameter (absent = false)."""
    raw = request.query.get(name, "false")
    if raw not in ("true", "false"):
        raise ApiError(400, "invalid_parameter", f"{name} must be true or false")
    return raw == "true"


async def json_body(request: web.Request, required: bool = True) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is {} when not required."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise ApiError(400, "invalid_body", "a JSON object body is required")
        return {}
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "invalid_body", "body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "invalid_body", "body must be a JSON object")
    return doc


def keys_list(doc: dict[str, Any]) -> list[str]:
    """The validated ``keys`` array of a batch request."""
    keys = doc.get("keys")
    if not isinstance(keys, list) or not keys:
        raise ApiError(400, "invalid_body", "keys must be a non-empty array of strings")
    if len(keys) > MAX_BATCH_KEYS:
        raise ApiError(400, "invalid_body", f"at most {MAX_BATCH_KEYS} keys per batch")
    return [check_key(k) for k in keys]


def load_json_config(path: str | None) -> dict[str, Any]:
    """Read a JSON settings file; a missing or broken file gives {} and a logged error (defaults apply)."""
    if not path:
        return {}
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        log.error("config %s not usable, using defaults: %s", path, exc)
        return {}
    if not isinstance(doc, dict):
        log.error("config %s is not a JSON object, using defaults", path)
        return {}
    return doc


def setup_logging(level: str) -> None:
    """Log to stderr with time, level and logger name (what every shard process does at start)."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


async def read_block_body(request: web.Request, limit: int) -> bytes:
    """The request body of a block PUT; 413 before reading when the declared length is over ``limit``."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "too_large", f"block larger than {limit} bytes")
    body = await request.read()
    if len(body) > limit:
        raise ApiError(413, "too_large", f"block larger than {limit} bytes")
    return body
