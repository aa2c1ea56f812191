"""Request deadlines: a request that carries ``X-Chronoshard-Timeout`` is abandoned when its caller's time is up.

Why: a write whose caller has given up must not commit later than a write the caller sent afterwards. Without a
deadline, a write held by the node (a compromised primary parks writes until the new key arrives) could outlive
its caller's timeout and land after the caller's next, acknowledged write of the same key, overwriting it. With
a deadline, every hop cancels its handler when the time is up; a write the store's writer has not begun is then
never made (the writer drops cancelled jobs), and one it has begun commits before anything sent later (the writer
is first in, first out).

Each hop gives up ``HOP_MARGIN`` (at most a quarter of the timeout) before the time its caller gave it, counted
from the request's arrival, and passes on what is left: a hop always gives up before the hop that called it, so
the caller's next request, sent after its own timeout, arrives after the old one was abandoned (as long as the
network's jitter stays below the margin).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from aiohttp import web

from .http_common import ApiError, Handler

TIMEOUT_HEADER = "X-Chronoshard-Timeout"  # seconds the caller still waits; same value as the client's constant
MAX_TIMEOUT = 3600.0
HOP_MARGIN = 0.25  # seconds each hop keeps back for the way back and the network's jitter
DEADLINE: web.RequestKey[float] = web.RequestKey("chronoshard_deadline", float)  # event-loop time


def parse_timeout(raw: str) -> float:
    """Seconds from a header value; ValueError unless a finite number in (0, MAX_TIMEOUT]."""
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{TIMEOUT_HEADER} must be a number of seconds, not {raw[:40]!r}") from None
    if not math.isfinite(value) or value <= 0 or value > MAX_TIMEOUT:
        raise ValueError(f"{TIMEOUT_HEADER} must be more than 0 and at most {MAX_TIMEOUT:g} seconds")
    return value


def own_budget(timeout: float) -> float:
    """How long this hop works on a request whose caller waits ``timeout`` seconds: a margin less."""
    return timeout - min(HOP_MARGIN, timeout / 4)


def remaining(deadline: float, now: float) -> float:
    """What the next hop may spend: the time left before this hop's ``deadline`` (never below zero)."""
    return max(0.0, deadline - now)


def onward_headers(request: web.Request) -> dict[str, str]:
    """The timeout header for a request this one makes downstream (empty if this request has no deadline)."""
    deadline = request.get(DEADLINE)
    if deadline is None:
        return {}
    left = remaining(deadline, asyncio.get_running_loop().time())
    # A hop with nothing left still sends the smallest valid value: the downstream hop then gives up at once.
    return {TIMEOUT_HEADER: f"{max(left, 0.001):.3f}"}


def deadline_middleware() -> Any:
    """Cancel the handler of a request carrying ``X-Chronoshard-Timeout`` when its time is up (503)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = request.headers.get(TIMEOUT_HEADER)
        if raw is None:
            return await handler(request)
        try:
            timeout = parse_timeout(raw)
        except ValueError as exc:
            raise ApiError(400, "invalid_timeout", str(exc)) from None
        budget = own_budget(timeout)
        request[DEADLINE] = asyncio.get_running_loop().time() + budget
        scope = asyncio.timeout(budget)
        try:
            async with scope:
                return await handler(request)
        except TimeoutError:
            if not scope.expired():
                raise  # a timeout of the handler's own, not the caller's deadline
            raise ApiError(503, "deadline_exceeded",
                           f"not completed within the caller's {timeout:g} s; a write the store had not begun "
                           "was not made") from None

    return middleware
