"""The one bounded wait: poll a predicate until it holds, or fail saying what was awaited and what was last seen.

Tests wait on the event that proves their claim (a status field, a counter, a log line) with this, never with a
bare sleep. ``wait_for`` polls from a thread; ``wait_for_async`` is the same wait inside an event loop (its
predicate may be a coroutine function), so a test's in-process server keeps running while it waits.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0
DEFAULT_INTERVAL = 0.05


class WaitTimeout(AssertionError):
    """A wait ran out of time; the message names what it waited for and the last value seen."""


def _timed_out(what: str, timeout: float, last: object) -> WaitTimeout:
    return WaitTimeout(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def wait_for(predicate: Callable[[], T], timeout: float = DEFAULT_TIMEOUT, *, interval: float = DEFAULT_INTERVAL,
             what: str = "condition") -> T:
    """Call ``predicate`` every ``interval`` s until it returns something truthy and return that value."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, last)
        time.sleep(interval)


async def wait_for_async(predicate: Callable[[], Awaitable[T]] | Callable[[], T], timeout: float = DEFAULT_TIMEOUT, *,
                         interval: float = DEFAULT_INTERVAL, what: str = "condition") -> T:
    """``wait_for`` inside an event loop: awaits the predicate's result if it is awaitable."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        last = await value if inspect.isawaitable(value) else value
        if last:
            return last
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, last)
        await asyncio.sleep(interval)
