"""The revocation push against real node processes: a node that is down when a token is revoked gets the revocation
from the retries once it is back (and the node that was up got it at once)."""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web
from chronoshard.shardnode.tokens.config import parse_service_config
from chronoshard.shardnode.tokens.peers import Peers
from chronoshard.shardnode.tokens.revocation import Pusher

from tests.integration.client.shards import write_keyring
from tests.integration.shardnode import procs
from tests.support.waiting import wait_for


def listed(url: str) -> set[str]:
    status, body = procs.http_json("GET", url + "/v1/tokens/revocations")
    assert status == 200, body
    return {r["tokenId"] for r in body["revocations"]}


async def test_a_node_down_at_revocation_gets_it_from_the_retries(tmp_path):
    write_keyring(tmp_path / "keyring")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    up = procs.node(tmp_path / "a", tmp_path / "keyring").start()
    down_port = procs.free_port()
    later = procs.node(tmp_path / "b", tmp_path / "keyring", port=down_port)
    cfg = parse_service_config({
        "mirrorSet": "shop/orders-ms", "activeStore": "shop/orders",
        "members": [{"store": "shop/orders", "shards": [{"index": 0, "node": up.url},
                                                        {"index": 1, "node": later.url}]}]})
    peers = Peers()
    peers.open(web.Application())
    pusher = Pusher(peers, lambda: cfg)
    stop = asyncio.Event()
    retries = asyncio.create_task(pusher.run(stop))
    try:
        result = await pusher.push("t1", time.time() + 600)
        assert (result.pushed, result.pending) == (1, 1)
        assert "t1" in listed(up.url) and pusher.pending_targets() == 1
        await pusher.push("t2", time.time() + 600)  # a second one waits for the same target
        await asyncio.to_thread(later.start)
        await asyncio.to_thread(wait_for, lambda: {"t1", "t2"} <= listed(later.url), 60,
                                what="the retried revocations on the node that came back")
        await asyncio.to_thread(wait_for, lambda: pusher.pending_targets() == 0, 10, what="nothing pending")
        assert json.dumps(pusher.last_push)  # reported in /v1/status
    finally:
        stop.set()
        retries.cancel()
        await peers.close()
        up.stop()
        later.stop()
