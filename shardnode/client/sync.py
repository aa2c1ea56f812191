"""The blocking client: the asyncio client run on a private event loop in a background thread.

Example::

    from chronoshard.shardnode.client import Client, ConfigMapMap

    with Client(ConfigMapMap("orders", "team-a"), PeerURLs.from_env()) as c:
        c.put("orders", "o-1", b"...")
        print(c.get("orders", "o-1"))

A private loop (rather than ``asyncio.run`` per call) keeps one connection pool for the client's
life (so one TLS handshake per connection, not per request) and lets it be used from any thread, including
inside programs that already run a loop. Credentials and TLS take the same arguments as ``AsyncClient``
(``token=``, ``token_provider=``, ``token_file=``, ``ca=``, ``scheme=``); ``Client.for_shardset(name, ns)``
finds the map, the pods and the CA through the Kubernetes API; ``Client.for_mirrorset(name, ns)`` routes by a
MirrorSet (``AsyncClient.with_mirrors``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from chronoshard.shardnode.client.aio import DEFAULT_TIMEOUT, AsyncClient, BlockInfo
from chronoshard.shardnode.client.credentials import TokenGetter
from chronoshard.shardnode.client.discovery import MapProvider
from chronoshard.shardnode.client.tiered import TieredTokenSource, TokenStatus
from chronoshard.shardnode.client.transport import Endpoint, Scheme
from chronoshard.shardnode.keyspace.partitioning import PartitionMap

T = TypeVar("T")


class Client:
    """Blocking put/get/delete/batch-get/scan; same arguments and errors as ``AsyncClient``."""

    def __init__(
        self,
        maps: MapProvider | PartitionMap | None,
        endpoints: Sequence[str | Endpoint] | Callable[[int], str | Endpoint] | None = None,
        *,
        service_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        concurrency: int = 64,
        token: str | None = None,
        token_provider: TokenGetter | None = None,
        token_file: str | Path | None = None,
        ca: str | Path | None = None,
        scheme: Scheme = "auto",
        tiered: TieredTokenSource | None = None,
    ) -> None:
        """``maps`` + ``endpoints`` (direct routing) or ``service_url`` (one address; caches forward); ``tiered``:
        a MirrorSet's tiered tokens instead of a Kubernetes token (docs/tokens.md).

        ``token_provider`` is called on the client's own loop thread (a plain function or a coroutine function).
        """
        if (service_url is None) == (endpoints is None):
            raise ValueError("give either endpoints (direct routing) or service_url")
        security: dict[str, Any] = {"token": token, "token_provider": token_provider, "token_file": token_file,
                                    "ca": ca, "scheme": scheme, "tiered": tiered}
        build: Callable[[], AsyncClient]
        if service_url is not None:
            build = partial(AsyncClient.via_service, service_url,
                            maps=maps if not isinstance(maps, PartitionMap) else None, timeout=timeout,
                            concurrency=concurrency, **security)
        elif maps is not None and endpoints is not None:
            build = partial(AsyncClient, maps, endpoints, timeout=timeout, concurrency=concurrency, **security)
        else:
            raise ValueError("direct routing (endpoints) needs maps: a PartitionMap or a MapProvider")
        self._start(build)

    @classmethod
    def for_shardset(cls, name: str, namespace: str, **kwargs: Any) -> Client:
        """Blocking twin of ``AsyncClient.for_shardset`` (same keyword arguments)."""
        client = cls.__new__(cls)
        client._start(partial(AsyncClient.for_shardset, name, namespace, **kwargs))
        return client

    @classmethod
    def for_mirrorset(cls, name: str, namespace: str, **kwargs: Any) -> Client:
        """Blocking twin of ``AsyncClient.for_mirrorset``: writes to the MirrorSet's active ShardSet, reads going
        on to a healthy mirror copy (same keyword arguments, e.g. ``read_your_writes=True``)."""
        client = cls.__new__(cls)
        client._start(partial(AsyncClient.for_mirrorset, name, namespace, **kwargs))
        return client

    @classmethod
    def for_mirror_status(cls, status: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
                          endpoints: Mapping[str, Sequence[str | Endpoint]] | Callable[[str, int], str | Endpoint],
                          maps: MapProvider | PartitionMap, **kwargs: Any) -> Client:
        """Blocking twin of ``AsyncClient.for_mirror_status`` (a callable ``status`` is called on the client's
        loop thread)."""
        client = cls.__new__(cls)
        client._start(partial(AsyncClient.for_mirror_status, status, endpoints, maps, **kwargs))
        return client

    def _start(self, build: Callable[[], AsyncClient]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chronoshard-client", daemon=True)
        self._thread.start()

        async def make() -> AsyncClient:
            return build()  # built on the private loop so its lock and session belong to that loop

        self._aio = self._run(make())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            raise RuntimeError("client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close connections and stop the private loop."""
        if self._loop.is_closed():
            return
        self._run(self._aio.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    @property
    def aio(self) -> AsyncClient:
        """The underlying async client (only use it on this client's loop)."""
        return self._aio

    def partition_map(self) -> PartitionMap:
        """The map in use (fetched on first use)."""
        return self._run(self._aio.partition_map())

    def refresh_map(self) -> PartitionMap:
        """Fetch the map again."""
        return self._run(self._aio.refresh_map())

    def put(self, table: str, key: str, value: bytes) -> dict[str, Any]:
        """Store a block; returns the node's acknowledgement."""
        return self._run(self._aio.put(table, key, value))

    def queued(self, write_id: str) -> dict[str, Any]:
        """A queued write's state (a ``Queued`` answer's id; see ``AsyncClient.queued``)."""
        return self._run(self._aio.queued(write_id))

    @property
    def token_status(self) -> TokenStatus | None:
        """The tiered token held now (tier, store, expiresAt), if any."""
        return self._aio.token_status

    def get(self, table: str, key: str) -> bytes:
        """A block's bytes; NotFound if missing."""
        return self._run(self._aio.get(table, key))

    def delete(self, table: str, key: str, *, missing_ok: bool = False) -> bool:
        """Delete a block; True if it existed."""
        return self._run(self._aio.delete(table, key, missing_ok=missing_ok))

    def batch_get(self, table: str, keys: Iterable[str]) -> dict[str, bytes | None]:
        """Many blocks at once; missing keys map to None."""
        return self._run(self._aio.batch_get(table, list(keys)))

    def scan(self, table: str, *, prefix: str = "", limit: int | None = None) -> Iterator[BlockInfo]:
        """Blocks of a table in key order across all shards (collected, then yielded)."""

        async def collect() -> list[BlockInfo]:
            return [b async for b in self._aio.scan(table, prefix=prefix, limit=limit)]

        yield from self._run(collect())
