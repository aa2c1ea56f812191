"""Long-poll for the key reports: ``GET /v1/keys?waitGeneration=N&waitSeconds=S`` answers once the process has
loaded keyring generation N or newer (and, with ``waitRewrap=true``, once its rewrap is no longer running), or
after S seconds, whichever comes first.

The KeyRotation controller asks this way so each phase hand-off happens when the report changes, not on its next
poll. The wait is in-process (the loaded generation is a field; checking it costs nothing), in short steps that
also end it when the server shuts down. Older processes ignore the parameters and answer at once, which the
controller treats like a poll.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from .http_common import bool_query, float_query, int_query

MAX_WAIT_SECONDS = 10.0
STEP_SECONDS = 0.02


@dataclass(frozen=True)
class KeyWait:
    """What a ``GET /v1/keys`` asked to wait for."""

    generation: int | None
    rewrap: bool
    seconds: float

    @property
    def any(self) -> bool:
        """True if the request asked to wait at all."""
        return self.seconds > 0 and (self.generation is not None or self.rewrap)


def parse(request: web.Request) -> KeyWait:
    """The validated wait parameters (400 on bad values; absent: no wait)."""
    generation = int_query(request, "waitGeneration", -1, 0, 2**53) if "waitGeneration" in request.query else None
    return KeyWait(generation, bool_query(request, "waitRewrap"),
                   float_query(request, "waitSeconds", 0.0, 0.0, MAX_WAIT_SECONDS))


async def wait(w: KeyWait, generation: Callable[[], int | None], rewrap_running: Callable[[], bool],
               stopping: Callable[[], bool]) -> None:
    """Return when every condition of ``w`` holds, its time is up, or ``stopping()`` (a shutdown) is true."""
    if not w.any:
        return
    deadline = time.monotonic() + w.seconds

    def satisfied() -> bool:
        g = generation()
        loaded = w.generation is None or (g is not None and g >= w.generation)
        return loaded and not (w.rewrap and rewrap_running())

    while not satisfied() and not stopping() and time.monotonic() < deadline:
        await asyncio.sleep(STEP_SECONDS)
