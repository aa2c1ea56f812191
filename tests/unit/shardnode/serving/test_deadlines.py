"""Request deadlines: parsing, the middleware, and the write a caller gave up on never landing later."""

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web
from chronoshard.shardnode.client import aio
from chronoshard.shardnode.serving import deadlines
from chronoshard.shardnode.serving.deadlines import TIMEOUT_HEADER, deadline_middleware, own_budget, parse_timeout
from chronoshard.shardnode.serving.http_common import error_middleware

from tests.support.kubelet_dir import write_keyring
from tests.support.servers import KEY1, KEY2, node_and_cache, serve
from tests.support.waiting import wait_for_async


@pytest.mark.parametrize("raw", ["", "abc", "0", "-1", "nan", "inf", "3601"])
def test_a_bad_timeout_is_refused(raw):
    with pytest.raises(ValueError, match=TIMEOUT_HEADER):
        parse_timeout(raw)


def test_each_hop_keeps_a_margin_back():
    assert parse_timeout("2.5") == 2.5
    assert own_budget(10) == 10 - deadlines.HOP_MARGIN
    assert own_budget(0.4) == pytest.approx(0.3)  # a quarter at most, so short timeouts stay usable


def test_the_client_names_the_same_header():
    assert aio.TIMEOUT_HEADER == deadlines.TIMEOUT_HEADER


@pytest.fixture
async def slow_server():
    seen: dict[str, str] = {}

    async def slow(request: web.Request) -> web.Response:
        seen.update(deadlines.onward_headers(request))
        await asyncio.sleep(float(request.query.get("sleep", "0")))
        return web.json_response({"ok": True})

    async def own_timeout(request: web.Request) -> web.Response:
        raise TimeoutError("a timeout of the handler's own")

    app = web.Application(middlewares=[error_middleware(), deadline_middleware()])
    app.router.add_get("/slow", slow)
    app.router.add_get("/own", own_timeout)
    async with serve(app) as url, aiohttp.ClientSession() as session:
        yield url, session, seen


async def test_the_handler_is_abandoned_when_the_callers_time_is_up(slow_server):
    url, s, _ = slow_server
    r = await s.get(f"{url}/slow", params={"sleep": "5"}, headers={TIMEOUT_HEADER: "0.4"})
    assert r.status == 503 and (await r.json())["error"] == "deadline_exceeded"


async def test_without_the_header_or_within_it_nothing_changes(slow_server):
    url, s, seen = slow_server
    r = await s.get(f"{url}/slow", params={"sleep": "0.05"})
    assert r.status == 200 and seen == {}
    r = await s.get(f"{url}/slow", params={"sleep": "0.05"}, headers={TIMEOUT_HEADER: "5"})
    assert r.status == 200
    # What is passed on is less than what came in: this hop's margin and its time so far are taken off.
    assert 0 < float(seen[TIMEOUT_HEADER]) <= 5 - deadlines.HOP_MARGIN


async def test_a_bad_header_is_a_400_and_a_handlers_own_timeout_is_not_a_deadline(slow_server):
    url, s, _ = slow_server
    r = await s.get(f"{url}/slow", headers={TIMEOUT_HEADER: "soon"})
    assert r.status == 400 and (await r.json())["error"] == "invalid_timeout"
    r = await s.get(f"{url}/own", headers={TIMEOUT_HEADER: "5"})
    assert r.status == 500


def _compromised(primary: int) -> str:
    versions = [{"id": v, "state": "primary" if v == primary else "decrypt-only", "compromised": v == 1}
                for v in (1, 2)]
    return json.dumps({"format": 1, "generation": 5 if primary == 1 else 6, "algorithm": "AES-256-GCM",
                       "versions": versions})


async def test_a_write_the_caller_gave_up_on_never_lands_after_its_next_write(tmp_path):
    """The stale read seen under load: a write held by the node (compromised primary) outlived its caller's
    timeout and committed after the caller's next, acknowledged write of the same key."""
    from chronoshard.shardnode.node.server import NODE

    async with node_and_cache(tmp_path) as (node, cache, s, napp, _):
        napp[NODE].cfg.compromised_write_hold_seconds = 30  # far longer than the caller waits
        write_keyring(tmp_path / "keyring", 5, {1: ("primary", KEY1), 2: ("decrypt-only", KEY2)},
                      manifest_text=_compromised(1))

        async def compromised() -> bool:
            return (await (await s.get(f"{node}/v1/keys")).json()).get("compromised") == [1]

        await wait_for_async(compromised, timeout=10, what="the node to see version 1 compromised")
        key_url = f"{cache}/v1/tables/t/blocks/k"
        r = await s.put(key_url, data=b"old", headers={TIMEOUT_HEADER: "0.6"})
        assert r.status == 503 and (await r.json())["error"] == "deadline_exceeded"
        # The node abandoned it too (its handler answered 503): from then on nothing can make that write.
        registry = napp[NODE].metrics.registry
        await wait_for_async(lambda: registry.get_sample_value(
            "chronoshard_node_requests_total",
            {"route": "/v1/tables/{table}/blocks/{key}", "status": "503"}) == 1, timeout=5,
            what="the node to abandon the held write")
        # The new primary arrives; the caller's next write of the key is acknowledged.
        write_keyring(tmp_path / "keyring", 6, {1: ("decrypt-only", KEY1), 2: ("primary", KEY2)},
                      manifest_text=_compromised(2))
        await wait_for_async(lambda: napp[NODE].db.current_keyring().primary == 2, timeout=10,
                             what="the node to load the new primary")
        r = await s.put(key_url, data=b"new", headers={TIMEOUT_HEADER: "5"})
        assert r.status == 200
        new_lsn = (await r.json())["lsn"]
        page = await (await s.get(f"{node}/v1/changes", params={"after": "0", "limit": "100"})).json()
        assert [(c["key"], c["lsn"]) for c in page["changes"] if c["key"] == "k"] == [("k", new_lsn)]
        assert await (await s.get(f"{node}/v1/tables/t/blocks/k")).read() == b"new"
