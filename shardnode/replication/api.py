"""The node's replication routes (docs/mirroring.md, "The node's replication contract"): the role document, the
digest at an LSN and a mirror's bucket repair. The source side's routes (health) live beside them in this package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from chronoshard.shardnode.auth.policy import Access
from chronoshard.shardnode.serving.http_common import ApiError, float_query, int_query, json_body
from chronoshard.shardnode.serving.scaffold import Route

from .digest import digest_at
from .repair import parse_buckets, repair
from .role import MAX_LSN, RoleInvalid, StaleTerm, TermConflict, parse_role
from .state import ReplicationState

StateOf = Callable[[web.Request], ReplicationState]


def handlers(state_of: StateOf) -> dict[str, Callable[[web.Request], Any]]:
    """The route handlers by name."""

    async def get_role(request: web.Request) -> web.Response:
        return web.json_response(await state_of(request).describe())

    async def put_role(request: web.Request) -> web.Response:
        state = state_of(request)
        try:
            role = parse_role(await json_body(request))
        except RoleInvalid as exc:
            raise ApiError(400, "invalid_body", str(exc)) from None
        try:
            status, body = await state.set_role(role)
        except StaleTerm as exc:
            raise ApiError(409, "stale_term", str(exc), term=exc.current) from None
        except TermConflict as exc:
            raise ApiError(409, "term_conflict", str(exc), term=exc.term) from None
        return web.json_response(body, status=status)

    async def digest(request: web.Request) -> web.Response:
        at = int_query(request, "atLsn", -1, 0, MAX_LSN) if "atLsn" in request.query else None
        wait = float_query(request, "waitSeconds", 10.0, 0.0, 60.0)
        return web.json_response(await digest_at(state_of(request), at, wait))

    async def repair_h(request: web.Request) -> web.Response:
        buckets = parse_buckets(await json_body(request))
        return web.json_response(await repair(state_of(request), buckets))

    return {"get": get_role, "put": put_role, "digest": digest, "repair": repair_h}


def routes(state_of: StateOf) -> list[Route]:
    """GET (REPLICATION) and PUT (ADMIN) /v1/replication, GET /v1/digest, POST /v1/replication/repair."""
    h = handlers(state_of)
    return [Route("GET", "/v1/replication", h["get"], Access.REPLICATION),
            Route("PUT", "/v1/replication", h["put"], Access.ADMIN),
            Route("GET", "/v1/digest", h["digest"], Access.REPLICATION),
            Route("POST", "/v1/replication/repair", h["repair"], Access.ADMIN)]
