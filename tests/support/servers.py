"""Test helper: run the real node and cache aiohttp apps on 127.0.0.1 free ports inside the test's loop."""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web
from chronoshard.shardnode.cache.server import CacheConfig
from chronoshard.shardnode.cache.server import create_app as create_cache
from chronoshard.shardnode.node.server import NodeConfig
from chronoshard.shardnode.node.server import create_app as create_node
from chronoshard.shardnode.serving.http_common import SERVER_LIMITS

from tests.support.kubelet_dir import write_kek, write_keyring

KEY1, KEY2 = os.urandom(32), os.urandom(32)
KEK = os.urandom(32)


@contextlib.asynccontextmanager
async def serve(app: web.Application, ssl_context: ssl.SSLContext | None = None, port: int = 0
                ) -> AsyncIterator[str]:
    """Serve ``app`` on a loopback port (``port``, or an ephemeral one; HTTPS with ``ssl_context``); yields its
    base URL."""
    runner = web.AppRunner(app, access_log=None, **SERVER_LIMITS)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"{'https' if ssl_context is not None else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def keyring_dir(tmp: Path, generation: int = 1, wrapped: bool = False) -> Path:
    """A kubelet-style keyring directory with version 1 primary (wrapped under KEK, in ``tmp/kek``, if asked)."""
    d = tmp / "keyring"
    if wrapped:
        write_kek(tmp / "kek", KEK)
        write_keyring(d, generation, {1: ("primary", KEY1)}, kek=KEK, wrapped={1})
    else:
        write_keyring(d, generation, {1: ("primary", KEY1)})
    return d


@contextlib.asynccontextmanager
async def node_and_cache(tmp: Path, wrapped: bool = False,
                         **cache_kw: object) -> AsyncIterator[tuple[str, str, aiohttp.ClientSession,
                                                                    web.Application, web.Application]]:
    """A node and a cache in front of it, plus a client session; ``wrapped``: a KEK-wrapped keyring."""
    kdir = keyring_dir(tmp, wrapped=wrapped)
    kek_dir = tmp / "kek" if wrapped else None
    napp = create_node(NodeConfig(data_dir=tmp / "data", keyring_dir=kdir, keyring_poll_seconds=0.05,
                                  kek_dir=kek_dir))
    async with serve(napp) as node_url:
        capp = create_cache(CacheConfig(node_url=node_url, keyring_dir=kdir, keyring_poll_seconds=0.05,
                                        kek_dir=kek_dir, **cache_kw))  # type: ignore[arg-type]
        async with serve(capp) as cache_url, aiohttp.ClientSession() as session:
            yield node_url, cache_url, session, napp, capp
