"""The role's write and read checks and role changes on a real store (no replicator: no source is dialled)."""

import asyncio

import aiohttp
import pytest
from chronoshard.shardnode.node.store import put_in_txn
from chronoshard.shardnode.node.verify import Digest
from chronoshard.shardnode.replication import apply
from chronoshard.shardnode.replication.role import StaleTerm, parse_role
from chronoshard.shardnode.replication.state import ReplicationState
from chronoshard.shardnode.serving.http_common import ApiError

from tests.support.stores import open_store, ring


@pytest.fixture
async def rs(tmp_path):
    store, _ = open_store(tmp_path, ring(1, (1,)))
    event = asyncio.Event()
    state = ReplicationState(lambda: event, Digest)
    state.store = store
    store.write_guards.append(state.store_guard)
    yield state, store
    store.close()


def test_a_primary_accepts_writes_and_runs_the_extra_gates():
    state = ReplicationState(asyncio.Event, Digest)
    state.check_writable()
    assert state.writes() == {"accepting": True, "reason": None}

    def lease_lost() -> None:
        raise ApiError(503, "lease_lost", "no lease")

    state.write_gates.append(lease_lost)
    with pytest.raises(ApiError) as e:
        state.check_writable()
    assert e.value.code == "lease_lost"
    assert state.writes() == {"accepting": False, "reason": "lease_lost"}


def test_a_mirror_refuses_writes_naming_its_primary():
    state = ReplicationState(asyncio.Event, Digest)
    state.role = parse_role({"term": 3, "role": "mirror", "source": {"url": "http://x:1", "shardSet": "ns/a"},
                             "consumer": "m"})
    with pytest.raises(ApiError) as e:
        state.check_writable()
    assert (e.value.status, e.value.code, e.value.extra, e.value.headers) == (
        503, "not_primary", {"role": "mirror", "term": 3, "primaryShardSet": "ns/a"}, {"Retry-After": "1"})
    state.seeding = True
    assert state.writes() == {"accepting": False, "reason": "seeding"}


async def test_reads_while_seeding_and_bad_headers(rs):
    state, _ = rs
    with pytest.raises(ApiError) as e:
        await state.before_read({"X-Chronoshard-Min-Lsn": "１"})  # a non-ASCII digit
    assert e.value.status == 400
    with pytest.raises(ApiError) as e:
        await state.before_read({"X-Chronoshard-Min-Lsn": "1", "X-Chronoshard-Wait-Ms": "-5"})
    assert e.value.status == 400
    state.seeding = True
    with pytest.raises(ApiError) as e:
        await state.before_read({})
    assert (e.value.status, e.value.code) == (503, "mirror_seeding")


async def test_a_primary_answers_read_your_writes_at_once(rs):
    state, store = rs
    await store.write(lambda c: put_in_txn(c, store.current_keyring(), "t", "k", b"v"))
    await state.before_read({"X-Chronoshard-Min-Lsn": "1"})
    with pytest.raises(ApiError) as e:
        await state.before_read({"X-Chronoshard-Min-Lsn": "2", "X-Chronoshard-Wait-Ms": "10000"})
    assert (e.value.status, e.value.code, e.value.extra) == (409, "lsn_not_reached", {"appliedLsn": 1})


async def test_fencing_answers_a_token_covering_every_queued_write(rs):
    state, store = rs
    queued = [asyncio.ensure_future(store.put("t", f"k{i}", b"v")) for i in range(20)]
    await asyncio.sleep(0)  # every put is queued (the guard passed) before the fence
    body = (await state.set_role(parse_role({"term": 1, "role": "fenced", "primaryShardSet": "ns/b"})))[1]
    lsns = [r.lsn for r in await asyncio.gather(*queued)]
    assert max(lsns) <= body["lastLsn"] == 20
    with pytest.raises(ApiError) as e:
        await store.put("t", "late", b"v")  # refused where it would be queued
    assert e.value.code == "fenced"
    assert await store.read(lambda c: apply.get_meta(c, apply.ROLE_META)) == {
        "term": 1, "role": "fenced", "primaryShardSet": "ns/b"}
    with pytest.raises(StaleTerm):
        await state.set_role(parse_role({"term": 0, "role": "primary"}))


async def test_promotion_of_a_fenced_node_continues_above_the_floor(rs):
    state, store = rs
    await store.write(lambda c: put_in_txn(c, store.current_keyring(), "t", "k", b"v"))
    await state.set_role(parse_role({"term": 1, "role": "fenced"}))
    _, body = await state.set_role(parse_role({"term": 2, "role": "primary", "lsnFloor": 9}))
    assert (body["promotedAtLsn"], body["lastLsn"], body["changed"]) == (1, 9, True)
    assert (await store.put("t", "k2", b"v")).lsn == 10


async def test_a_mirror_half_way_through_a_seed_is_not_promoted(rs):
    state, store = rs
    await store.write(lambda c: apply.seed_begin(c, 5, 10))  # as a crash mid-seed leaves it
    mirror = parse_role({"term": 1, "role": "mirror", "source": {"url": "http://127.0.0.1:9"}, "consumer": "m"})
    await store.write(lambda c: apply.set_meta(c, apply.ROLE_META, mirror.doc))
    async with aiohttp.ClientSession() as session:
        await state.start(store, session)  # the replicator dials a closed port and backs off
        assert state.seeding
        with pytest.raises(ApiError) as e:
            await state.set_role(parse_role({"term": 2, "role": "primary"}))
        assert (e.value.status, e.value.code) == (409, "mirror_seeding")
        assert state.role.role == "mirror" and state.replicator is not None
        with pytest.raises(ApiError) as e:
            await store.put("t", "k", b"v")
        assert e.value.code == "not_primary"
        await state.stop()


def test_only_a_primary_of_the_term_or_a_mirror_streaming_under_it_vouches_for_its_lsns():
    state = ReplicationState(asyncio.Event, Digest)
    state.role = parse_role({"term": 3, "role": "primary"})
    assert state.on_timeline_of(3) and state.on_timeline_of(0) and not state.on_timeline_of(4)
    state.role = parse_role({"term": 4, "role": "mirror", "source": {"url": "http://x:1", "shardSet": "ns/a"},
                             "consumer": "m"})
    assert not state.on_timeline_of(4)  # rewinding or seeding: its LSNs may still be the old primary's
    state.mark_streaming()
    assert state.on_timeline_of(4) and state.state == "streaming"
    state.state = "error"  # its source died afterwards: exactly when a mirror is read, still vouched for
    assert state.on_timeline_of(4) and not state.on_timeline_of(5)
    state.role = parse_role({"term": 5, "role": "fenced"})
    assert not state.on_timeline_of(5)
