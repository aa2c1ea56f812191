"""The partition proxy with real sockets: it forwards, a cut drops live connections and holds new ones without
reaching the target, and a heal delivers what was held."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from tests.support.tcpproxy import TcpProxy
from tests.support.waiting import wait_for


class _Echo(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.accepted = 0


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, _Echo)
        server.accepted += 1
        while data := self.request.recv(4096):
            self.request.sendall(data)


@pytest.fixture()
def echo() -> Iterator[_Echo]:
    server = _Echo()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture()
def proxy(echo: _Echo) -> Iterator[TcpProxy]:
    with TcpProxy(echo.server_address[:2]) as p:  # type: ignore[arg-type]
        yield p


def _connect(p: TcpProxy) -> socket.socket:
    s = socket.create_connection(p.address, timeout=10)
    return s


def _roundtrip(s: socket.socket, data: bytes) -> bytes:
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


def test_forwards_both_ways(proxy: TcpProxy, echo: _Echo) -> None:
    with _connect(proxy) as s:
        assert _roundtrip(s, b"hello") == b"hello"
        assert _roundtrip(s, b"x" * 200_000) == b"x" * 200_000
    assert echo.accepted == 1 and proxy.forwarded == 1


def test_cut_drops_live_connections_and_holds_new_ones_unanswered(proxy: TcpProxy, echo: _Echo) -> None:
    live = _connect(proxy)
    assert _roundtrip(live, b"before") == b"before"
    proxy.cut()
    # The live connection is gone: the next read ends (reset or EOF), it does not hang.
    try:
        live.sendall(b"after")
        assert live.recv(4096) == b""
    except ConnectionError:
        pass
    live.close()

    held = _connect(proxy)  # accepted (a blackhole, not a refusal)...
    held.sendall(b"during the cut")
    wait_for(lambda: proxy.held == 1, what="the proxy to hold the new connection")
    # ...and never forwarded: the target saw no new connection.
    assert (echo.accepted, proxy.forwarded) == (1, 1)

    proxy.heal()
    # What the client sent during the cut arrives once the path is back.
    assert held.recv(4096) == b"during the cut"
    held.close()
    with _connect(proxy) as s:
        assert _roundtrip(s, b"healed") == b"healed"
    assert echo.accepted == 3 and proxy.held == 0


def test_close_drops_held_connections(echo: _Echo) -> None:
    p = TcpProxy(echo.server_address[:2]).start()  # type: ignore[arg-type]
    p.cut()
    held = _connect(p)
    wait_for(lambda: p.held == 1, what="the proxy to hold the connection")
    p.close()
    try:
        assert held.recv(4096) == b""
    except ConnectionError:
        pass
    held.close()
    assert echo.accepted == 0
