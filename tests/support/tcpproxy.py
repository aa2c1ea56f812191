"""A TCP forwarder that can cut the network between its two sides, for partition faults in synchronous tests.

``TcpProxy(target, host, port).start()`` listens on ``host:port`` and forwards every connection to ``target``, on
its own event loop in a background thread. ``cut()`` is a partition: the connections it carries are dropped, and new
ones are accepted but never answered (nothing reaches the target; a client waits for its own timeout, as behind a
blackholing firewall, rather than being refused). ``heal()`` ends it: connections accepted during the cut are then
forwarded with whatever their client had sent (TCP would deliver it once the path is back), and new ones are too.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
CHUNK = 65536


class TcpProxy:
    """A forwarder from ``host:port`` (0: any free port) to ``target`` (host, port) with ``cut()`` and ``heal()``."""

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1", port: int = 0) -> None:
        self.target, self.host, self.port = target, host, port
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"tcpproxy-{host}:{port}", daemon=True)
        self._server: asyncio.Server | None = None
        self._healed: asyncio.Event | None = None
        self._live: set[asyncio.StreamWriter] = set()  # both ends of every forwarded connection
        self.forwarded = 0  # connections opened to the target
        self.held = 0  # connections accepted while cut and not forwarded yet
        self._closed = False

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def start(self) -> TcpProxy:
        """Bind and serve in the background thread; ``port`` is then the bound port."""
        self._thread.start()
        self._run(self._start())
        return self

    async def _start(self) -> None:
        self._healed = asyncio.Event()
        self._healed.set()
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> tuple[str, int]:
        """Where clients connect."""
        return self.host, self.port

    def cut(self) -> None:
        """Drop every forwarded connection and hold new ones unanswered; returns once it is in force."""
        self._run(self._cut())

    async def _cut(self) -> None:
        assert self._healed is not None
        self._healed.clear()
        for w in list(self._live):
            w.transport.abort()  # abort: no orderly FIN after whatever was still queued
        self._live.clear()

    def heal(self) -> None:
        """Forward again, the connections held during the cut included."""
        self._run(self._heal())

    async def _heal(self) -> None:
        assert self._healed is not None
        self._healed.set()

    def close(self) -> None:
        """Stop listening, drop every connection and stop the thread."""
        if not self._thread.is_alive():
            return
        self._run(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._closed = True
        for w in list(self._live):
            w.transport.abort()
        self._live.clear()
        assert self._healed is not None
        self._healed.set()  # the held connections wake up and are dropped (closed)
        await asyncio.sleep(0)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._healed is not None
        if not self._healed.is_set():
            # Read nothing: the client's bytes wait in the socket buffer, as they would in flight.
            self.held += 1
            await self._healed.wait()
            self.held -= 1
        if self._closed:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.forwarded += 1
        self._live.update((writer, up_writer))
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._live.discard(w)
                w.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction until EOF (passed on as a half-close) or an error (the connection was dropped)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not writer.transport.is_closing():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()
