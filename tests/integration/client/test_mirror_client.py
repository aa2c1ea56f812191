"""The MirrorSet-aware client against real `chronoshard-node` processes replicating to each other (roles set with
PUT /v1/replication as the MirrorSet controller sets them): writes follow a switchover (the refusal's hint, then the
status), reads go on to a healthy mirror copy when the active's node is gone, read-your-writes waits for the mirror
or goes to the primary, and a write nobody takes ends within the call's timeout. The MirrorSet status is a dict the
test changes (the controller that writes it is tested with the controller)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from chronoshard.shardnode.client import AsyncClient, Client, Unavailable
from chronoshard.shardnode.keyspace.partitioning import initial_map

from tests.integration.shardnode.procs import Proc, free_port, http_json, node
from tests.support.kubelet_dir import write_keyring
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

A, B = "ns/a", "ns/b"


def role(url: str, doc: dict[str, Any]) -> dict[str, Any]:
    status, body = http_json("PUT", url + "/v1/replication", doc)
    assert status == 200, body
    return body


def primary(term: int, mirror: str = "mirror.ns.b") -> dict[str, Any]:
    return {"term": term, "role": "primary", "mode": "async", "mirrors": [mirror]}


def mirror_of(src: Proc, term: int, shard_set: str = A, consumer: str = "mirror.ns.b") -> dict[str, Any]:
    return {"term": term, "role": "mirror", "mode": "async", "source": {"url": src.url, "shardSet": shard_set},
            "consumer": consumer, "divergeLsn": None}


def applied(url: str) -> int:
    return int(http_json("GET", url + "/v1/replication")[1]["appliedLsn"])


def status(term: int, active: str, copies: list[tuple[str, str, str]]) -> dict[str, Any]:
    return {"term": term, "activeShardSet": active,
            "shards": [{"shard": 0, "primary": active,
                        "copies": [{"shardSet": s, "role": r, "health": h, "appliedLSN": 0} for s, r, h in copies]}]}


@pytest.fixture
def pair(tmp_path: Path):
    keyring = tmp_path / "keyring"
    write_keyring(keyring, 1, {1: ("primary", os.urandom(32))})
    procs = []
    for name in ("a", "b"):  # both launched, then both waited for: the cold starts overlap
        (tmp_path / name).mkdir()
        procs.append(node(tmp_path / name, keyring).launch())
    a, b = (p.wait_ready() for p in procs)
    role(a.url, primary(1))
    role(b.url, mirror_of(a, 1))
    yield a, b
    for p in procs:
        p.stop()


def client(st: dict[str, Any], urls: dict[str, list[str]], **kw: Any) -> AsyncClient:
    # The status is read through a callable, so what the test changes is what the client reads next.
    return AsyncClient.for_mirror_status(lambda: st, urls, initial_map(1), scheme="http", **kw)


def test_writes_follow_a_switchover_by_the_hint_before_the_status_moves(pair):
    a, b = pair
    st = status(1, A, [(A, "primary", "healthy"), (B, "mirror", "healthy")])

    async def scenario() -> None:
        async with client(st, {A: [a.url], B: [b.url]}) as c:
            first = await c.put("t", "k", b"v1")
            # A switchover as the controller runs it: fence A, B reaches the token, promote B (term 2).
            token = role(a.url, {"term": 2, "role": "fenced", "primaryShardSet": B})["lastLsn"]
            assert token >= first["lsn"]
            wait_for(lambda: applied(b.url) >= token, what="B to reach the demotion token")
            role(b.url, primary(2, "mirror.ns.a"))
            # The status still names A: A's 503 not_primary names B, a member, so the write goes there.
            ack = await c.put("t", "k", b"v2")
            assert ack["lsn"] > token
            # Reads go to the active the status names, A (fenced nodes serve reads): not yet the new value.
            assert (await c.get("t", "k")) == b"v1"
            st.update(status(2, B, [(B, "primary", "healthy"), (A, "fenced", "healthy")]))
            # The next write is refused by A once more and re-resolves: the status names B now, and so do reads.
            await c.put("t", "k2", b"v3")
            assert (await c.get("t", "k")) == b"v2"
            assert c.mirror_routing is not None and c.mirror_routing.current.active == B

    asyncio.run(scenario())


def test_reads_go_to_a_healthy_mirror_when_the_active_is_gone_and_read_your_writes(pair):
    a, b = pair
    st = status(1, A, [(A, "primary", "healthy"), (B, "mirror", "healthy")])

    async def scenario() -> None:
        async with client(st, {A: [a.url], B: [b.url]}, read_your_writes=True, wait_ms=10_000) as c:
            ack = await c.put("t", "k", b"v1")
            wait_for(lambda: applied(b.url) >= ack["lsn"], what="B to apply the write")
            a.kill()
            assert (await c.get("t", "k")) == b"v1" and c.mirror_fallbacks == 1
            st["shards"][0]["copies"][1]["health"] = "unavailable"
            assert c.mirror_routing is not None
            await c.mirror_routing.refresh()  # (a read that fell back reads the status at most every 5 s)
            with pytest.raises(Unavailable):
                await c.get("t", "k")  # no healthy copy left to read from
            assert c.mirror_fallbacks == 1

    asyncio.run(scenario())


def test_a_mirror_behind_our_write_sends_the_read_to_the_primary(pair):
    a, b = pair
    dead = f"http://127.0.0.1:{free_port()}"  # member "ns/old": nobody answers there
    old = status(1, "ns/old", [("ns/old", "primary", "healthy"), (B, "mirror", "healthy")])
    now = status(2, A, [(A, "primary", "healthy"), (B, "mirror", "healthy")])
    st = dict(old)

    async def scenario() -> None:
        async with client(st, {"ns/old": [dead], A: [a.url], B: [b.url]}, read_your_writes=True,
                          wait_ms=200) as c:
            routing = c.mirror_routing
            assert routing is not None
            await routing.view()  # the client knows "ns/old" as the active
            # B stops applying: its source moved to an address nobody answers at (same term: it applies).
            role(b.url, {**mirror_of(a, 1), "source": {"url": dead, "shardSet": A}})
            wait_for(lambda: http_json("GET", b.url + "/v1/replication")[1]["state"] == "error",
                     what="B to fail to reach its new source")
            st.update(now)
            ack = await c.put("t", "k", b"fresh")  # "ns/old" unreachable: re-resolved, written on A
            assert applied(b.url) < ack["lsn"] and routing.marks.min_lsn(0) == ack["lsn"]
            st.update(old)
            await routing.refresh()  # the client is back to a view whose active is gone
            st.update(now)
            # "ns/old" unreachable, B answers 409 lsn_not_reached for our write's LSN, the status names A: A answers.
            assert (await c.get("t", "k")) == b"fresh"
            assert c.mirror_fallbacks == 0 and routing.current is not None and routing.current.active == A
            # Without read-your-writes B's older answer would have been taken: B has no such block at all.
            assert http_json("GET", f"{b.url}/v1/tables/t/frames/k")[0] == 404

    asyncio.run(scenario())


def test_a_write_nobody_takes_ends_within_the_call_timeout(pair):
    a, b = pair
    role(a.url, {"term": 2, "role": "fenced", "primaryShardSet": None})
    st = status(2, A, [(A, "fenced", "healthy"), (B, "mirror", "healthy")])

    async def scenario() -> None:
        async with client(st, {A: [a.url], B: [b.url]}, timeout=1.5) as c:
            with pytest.raises(Unavailable, match="fenced") as err:
                await c.put("t", "k", b"v")
            assert err.value.status == 503

    asyncio.run(scenario())


def test_the_blocking_client_routes_by_the_mirrorset_too(pair):
    a, b = pair
    st = status(1, A, [(A, "primary", "healthy"), (B, "mirror", "healthy")])
    with Client.for_mirror_status(lambda: st, {A: [a.url], B: [b.url]}, initial_map(1), scheme="http",
                                  read_your_writes=True) as c:
        ack = c.put("t", "k", b"v")
        wait_for(lambda: applied(b.url) >= ack["lsn"], what="B to apply the write")
        a.kill()
        assert c.get("t", "k") == b"v" and c.aio.mirror_fallbacks == 1


def test_a_write_to_a_member_without_an_address_re_resolves(pair):
    a, b = pair
    calls = []

    def st() -> dict[str, Any]:
        calls.append(1)
        # First the status names a member whose pods are gone (no address known), then A.
        return status(1, "ns/gone" if len(calls) == 1 else A, [(A, "primary", "healthy")])

    async def scenario() -> None:
        async with AsyncClient.for_mirror_status(st, {A: [a.url]}, initial_map(1), scheme="http") as c:
            ack = await c.put("t", "k", b"v")
            assert ack["lsn"] > 0 and len(calls) == 2

    asyncio.run(scenario())
