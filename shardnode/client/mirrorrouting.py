"""The MirrorSet-aware client's state: the MirrorSet's status as last read (``MirrorView``), where each member's
shards are, and the read-your-writes marks. Where the status and the addresses come from is pluggable: the
Kubernetes API (``discovery.MirrorSetStatus``, ``discovery.MemberPods``) or, for tests and tools, a dict or a
callable (``StaticMirrorSet``, ``StaticEndpoints``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from chronoshard.shardnode.client.errors import Unavailable, Unreachable
from chronoshard.shardnode.client.mirrors import MirrorView, WriteMarks
from chronoshard.shardnode.client.transport import Endpoint


class StatusSource(Protocol):
    """Anything that can read a MirrorSet's current status."""

    async def fetch(self) -> MirrorView:
        """The status now, or Unavailable."""
        ...


class EndpointBook(Protocol):
    """Where shard ``i`` of member ShardSet ``namespace/name`` is."""

    def endpoint(self, shard_set: str, shard: int) -> Endpoint:
        """Its address now; Unreachable if none is known."""
        ...

    async def refresh(self, shard_set: str) -> None:
        """Look the member's addresses up again (a pod moved)."""
        ...


class StaticMirrorSet:
    """A MirrorSet status given as a dict, or a callable returning the current one (tests, tools)."""

    def __init__(self, status: Mapping[str, Any] | Callable[[], Mapping[str, Any]], name: str = "MirrorSet") -> None:
        self._status = status
        self.name = name

    async def fetch(self) -> MirrorView:
        """The status, read through the callable if one was given."""
        doc = self._status() if callable(self._status) else self._status
        return MirrorView.from_status(doc, self.name)


class StaticEndpoints:
    """Member ``namespace/name`` -> its shards' URLs by index, or a callable (member, shard) -> URL."""

    def __init__(self, where: Mapping[str, Sequence[str | Endpoint]] | Callable[[str, int], str | Endpoint]) -> None:
        self._where = where

    def endpoint(self, shard_set: str, shard: int) -> Endpoint:
        """The given address; Unreachable for a member or shard not given."""
        if callable(self._where):
            ep = self._where(shard_set, shard)
        else:
            urls = self._where.get(shard_set)
            if urls is None or not 0 <= shard < len(urls):
                raise Unreachable(f"shard {shard} of {shard_set}", "no address given for it")
            ep = urls[shard]
        return ep if isinstance(ep, Endpoint) else Endpoint.parse(ep)

    async def refresh(self, shard_set: str) -> None:
        """Nothing to look up again."""


class MirrorRouting:
    """The view a MirrorSet-aware ``AsyncClient`` routes by, read again when a node says the primary moved."""

    def __init__(self, source: StatusSource, book: EndpointBook, *, read_your_writes: bool = False,
                 wait_ms: int | None = None) -> None:
        """``read_your_writes``: reads from a mirror copy carry this client's last acknowledged LSN of the shard
        (``X-Chronoshard-Min-Lsn``, and ``X-Chronoshard-Wait-Ms`` = ``wait_ms`` when given)."""
        self.source, self.book = source, book
        self.read_your_writes, self.wait_ms = read_your_writes, wait_ms
        self.marks = WriteMarks()
        self._view: MirrorView | None = None
        self._read_at = float("-inf")  # when the last read of the status began
        self._lock: asyncio.Lock | None = None
        self.resolutions = 0  # how many times the status was read (tests, metrics)

    @property
    def current(self) -> MirrorView | None:
        """The view as last read (None before the first)."""
        return self._view

    async def view(self) -> MirrorView:
        """The view, read on first use."""
        return self._view if self._view is not None else await self.refresh()

    async def refresh(self, observed_at: float | None = None) -> MirrorView:
        """Read the status again, once for many callers: a caller whose trouble was seen at ``observed_at``
        (``time.monotonic()``) gets the view of a read that began after that without reading again."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._view is not None and observed_at is not None and self._read_at >= observed_at:
                return self._view
            started = time.monotonic()
            self._view = await self.source.fetch()
            self._read_at = started
            self.resolutions += 1
            return self._view

    async def refresh_if_older(self, max_age: float) -> MirrorView:
        """Read the status again if the last read began more than ``max_age`` s ago (a read that had to go to a
        mirror copy asks: a client that only reads learns of a failover this way, at most once per ``max_age``)."""
        if self._view is not None and time.monotonic() - self._read_at <= max_age:
            return self._view
        return await self.refresh(time.monotonic() - max_age)

    def endpoint(self, shard_set: str, shard: int) -> Endpoint:
        """Where shard ``shard`` of ``shard_set`` is."""
        return self.book.endpoint(shard_set, shard)

    def active_endpoint(self, shard: int) -> Endpoint:
        """Shard ``shard`` of the active ShardSet (scans and batch reads go there); Unavailable before the first
        read of the status."""
        if self._view is None:
            raise Unavailable(f"shard {shard}", "the MirrorSet's status has not been read yet")
        return self.book.endpoint(self._view.active, shard)
