"""The Python client with a TieredTokenSource against the real token service process and a real member node and
cache over TLS (the world of test_tokens_service.py): it requests a valid token by itself, follows the
pre-issued temporary token after its node went down (checked at once after the refused request), a write made with
it is queued (``Queued``) and, asked with ``client.queued(id)``, applied exactly once; once the node is back the
client holds a valid token again. The application only sees ``token_status``."""

from __future__ import annotations

import pytest
from chronoshard.shardnode.client import AsyncClient, NotFound, Queued, Unavailable
from chronoshard.shardnode.client.credentials import Credentials, fixed_source
from chronoshard.shardnode.client.tiered import TieredTokenSource
from chronoshard.shardnode.keyspace.partitioning import initial_map

from tests.integration.shardnode.test_tokens_service import _restart_node, wait_tier, world  # noqa: F401
from tests.support.waiting import wait_for_async

pytestmark = pytest.mark.integration


async def test_the_client_follows_its_tokens_tier_and_its_queued_write_lands_once(world):  # noqa: F811
    w = world
    wait_tier(w, "valid")
    member = w["member"]
    source = TieredTokenSource(w["svc"].url, Credentials([fixed_source("the app's token", w["app"])]),
                               {"table": "orders", "verbs": ["get", "update"]}, ca=member.ca_file,
                               poll_seconds=3600)  # only the refused requests make it ask (deterministic)
    client = AsyncClient(initial_map(1), [member.cache_url], ca=member.ca_file, tiered=source, restart_wait=0.5)
    try:
        first = await client.put("orders", "a", b"one")
        assert not isinstance(first, Queued) and first["lsn"] >= 1
        status = client.token_status
        assert status is not None and status.tier == "valid" and status.store == f"{w['ns']}/orders"
        valid_id = status.token_id

        node = member.procs[0]
        node.kill()
        node.wait()
        member.procs.remove(node)
        try:
            async def temporary() -> bool:
                try:  # an uncached block: the cache asks the node, which is down (503): the status is checked next
                    await client.get("orders", "never-written")
                except (Unavailable, NotFound):
                    pass
                return client.token_status is not None and client.token_status.tier == "temporary"

            await wait_for_async(temporary, 60, interval=0.3, what="the client to hold the pre-issued temporary token")
            assert client.token_status.token_id != valid_id
        finally:
            _restart_node(member)
        # Still temporary (no refusal since, and the status is not asked before poll_seconds): the write is queued.
        queued = await client.put("orders", "b", b"queued-once")
        assert isinstance(queued, Queued) and queued.position >= 1

        async def applied() -> dict | None:
            entry = await client.queued(queued.id)
            return entry if entry["state"] == "applied" else None

        entry = await wait_for_async(applied, 60, interval=0.2, what="the queued write to be applied")
        assert entry["error"] is None and entry["lsn"] >= 1
        assert await client.get("orders", "b") == b"queued-once"

        # Back to valid: the service pre-issues it once the node is healthy again; the client takes it at its
        # next status check (a refusal, or poll_seconds).
        wait_tier(w, "valid")

        async def valid_again() -> bool:
            source.refused(503)
            await client.get("orders", "a")
            return client.token_status is not None and client.token_status.tier == "valid"

        await wait_for_async(valid_again, 60, interval=0.3, what="the client to hold a valid token again")
        again = await client.put("orders", "c", b"direct")
        assert not isinstance(again, Queued) and again["lsn"] > entry["lsn"]
    finally:
        await client.close()
        await source.close()
