"""Test helper: a real node and a real shadow (the aiohttp apps) on 127.0.0.1 inside the test's loop, and small
HTTP helpers for both."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from chronoshard.shardnode.node.server import NodeConfig
from chronoshard.shardnode.node.server import create_app as create_node
from chronoshard.shardnode.shadow.config import ShadowConfig
from chronoshard.shardnode.shadow.server import SHADOW, Shadow
from chronoshard.shardnode.shadow.server import create_app as create_shadow

from tests.support.servers import keyring_dir, serve
from tests.support.waiting import wait_for_async


@dataclass
class Pair:
    """A node and a shadow following it, plus a client session."""

    node_url: str
    shadow_url: str
    session: aiohttp.ClientSession
    node_app: web.Application
    shadow_app: web.Application

    @property
    def shadow(self) -> Shadow:
        """The shadow's state object."""
        return self.shadow_app[SHADOW]

    async def put(self, table: str, key: str, value: bytes) -> int:
        """Write through the node; its LSN."""
        async with self.session.put(f"{self.node_url}/v1/tables/{table}/blocks/{key}", data=value) as r:
            assert r.status == 200, await r.text()
            return int((await r.json())["lsn"])

    async def delete(self, table: str, key: str) -> int:
        """Delete through the node; its LSN."""
        async with self.session.delete(f"{self.node_url}/v1/tables/{table}/blocks/{key}") as r:
            assert r.status == 200, await r.text()
            return int((await r.json())["lsn"])

    async def get(self, path: str, **params: Any) -> tuple[int, Any]:
        """GET a shadow path; (status, JSON)."""
        async with self.session.get(self.shadow_url + path, params=params) as r:
            return r.status, await r.json()

    async def post(self, path: str, doc: Any) -> tuple[int, Any]:
        """POST JSON to a shadow path; (status, JSON)."""
        async with self.session.post(self.shadow_url + path, data=json.dumps(doc)) as r:
            return r.status, await r.json()

    async def node_value(self, table: str, key: str) -> bytes | None:
        """The node's current plaintext (None if absent)."""
        async with self.session.get(f"{self.node_url}/v1/tables/{table}/blocks/{key}") as r:
            return await r.read() if r.status == 200 else None

    async def caught_up(self) -> bool:
        """The capture has applied everything the node committed."""
        async with self.session.get(f"{self.node_url}/v1/changes", params={"after": 0, "limit": 1}) as r:
            last = (await r.json())["lastLsn"]
        capture = self.shadow.capture
        return capture is not None and capture.state == "running" and capture.position >= last

    async def wait_caught_up(self) -> None:
        """Wait until the capture has applied everything the node committed."""
        await wait_for_async(self.caught_up, what="the shadow to catch up with the node")


def shadow_config(tmp: Path, node_url: str, keyring: Path, settings: dict[str, Any] | None = None,
                  **kw: Any) -> ShadowConfig:
    """A shadow config over ``tmp/shadow`` with fast polls, shadow.json written from ``settings``."""
    path = tmp / "shadow.json"
    path.write_text(json.dumps(settings or {}))
    cfg = ShadowConfig(node_url=node_url, data_dir=tmp / "shadow", keyring_dir=keyring, keyring_poll_seconds=0.05,
                       wait_seconds=1.0, backoff_seconds=0.05, max_backoff_seconds=0.2, **kw)
    cfg.settings_path = str(path)
    cfg.apply(settings or {})
    return cfg


@contextlib.asynccontextmanager
async def node_and_shadow(tmp: Path, settings: dict[str, Any] | None = None,
                          node_settings: dict[str, Any] | None = None, **kw: Any) -> AsyncIterator[Pair]:
    """A node over ``tmp/data`` and a shadow following it (``settings``: shadow.json; ``node_settings``:
    node.json values)."""
    kdir = keyring_dir(tmp)
    ncfg = NodeConfig(data_dir=tmp / "data", keyring_dir=kdir, keyring_poll_seconds=0.05)
    ncfg.apply(node_settings or {})
    napp = create_node(ncfg)
    async with serve(napp) as node_url:
        sapp = create_shadow(shadow_config(tmp, node_url, kdir, settings, **kw))
        async with serve(sapp) as shadow_url, aiohttp.ClientSession() as session:
            pair = Pair(node_url, shadow_url, session, napp, sapp)
            # Seeded first, so the tests' writes are captured as changes, not as part of the base snapshot.
            await wait_for_async(lambda: pair.shadow.capture is not None and pair.shadow.capture.seeds > 0,
                                 what="the shadow's first seed")
            yield pair
