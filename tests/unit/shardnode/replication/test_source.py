"""The primary's write gates (shardnode/replication/source.py): the pure decisions, and the sync wait and lag
hold on a real event loop, woken by the acknowledgements fed to them (no SQLite read per write)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from chronoshard.shardnode.replication.role import parse_role
from chronoshard.shardnode.replication.source import (
    SlotAcks,
    SourceGates,
    acked_by_a_mirror,
    holding,
    smallest_lag,
    write_policy,
)
from chronoshard.shardnode.serving.http_common import ApiError

MIRROR = "mirror.ns-b.orders-b"


def primary(**doc: Any) -> Any:
    return parse_role({"term": 1, "role": "primary", "mirrors": [MIRROR], **doc})


def slot(name: str = MIRROR, acked: int = 0, state: str = "active", lag: float = 0.0) -> dict[str, Any]:
    return {"name": name, "ackedLsn": acked, "state": state, "lagLsn": 0, "lagSeconds": lag}


def test_write_policy_from_the_role_document():
    assert write_policy(parse_role({"term": 0, "role": "primary"})) is None  # no mirrors: nothing to wait for
    assert write_policy(parse_role({"term": 1, "role": "fenced"})) is None
    sync = write_policy(primary(mode="sync", syncTimeoutSeconds=3, maxLagSeconds=5))
    assert sync is not None and sync.sync and sync.sync_timeout == 3 and sync.max_lag is None
    lazy = write_policy(primary(mode="async", maxLagSeconds=5))
    assert lazy is not None and not lazy.sync and lazy.max_lag == 5 and lazy.hold_timeout == 5
    assert write_policy(primary(mode="async")).max_lag is None


def test_acked_by_a_mirror_needs_an_active_listed_slot():
    acks = {MIRROR: (7, "active"), "shadow": (100, "active"), "old": (100, "behind")}
    assert acked_by_a_mirror(acks, [MIRROR], 7) and not acked_by_a_mirror(acks, [MIRROR], 8)
    assert not acked_by_a_mirror(acks, ["old"], 8)  # behind: it is re-seeding
    assert not acked_by_a_mirror(acks, ["absent"], 1)
    assert acked_by_a_mirror(acks, ["absent", "shadow"], 50)


def test_smallest_lag_and_holding():
    slots = [slot(lag=9.0), slot("m2", lag=2.5), slot("m3", state="behind", lag=1.0), slot("x", lag=0.1)]
    assert smallest_lag(slots, [MIRROR, "m2", "m3"]) == 2.5
    assert smallest_lag(slots, ["absent"]) is None
    policy = write_policy(primary(mode="async", maxLagSeconds=2))
    assert holding(policy, 2.5) and not holding(policy, 2.0) and not holding(policy, None)
    assert not holding(write_policy(primary(mode="sync", maxLagSeconds=2)), 100.0)


def test_slot_acks_keep_what_the_handlers_told_during_a_read_and_wake_on_change():
    acks = SlotAcks()
    first = acks.changed()
    acks.update(slot(acked=5))
    assert first.is_set() and acks.slots[MIRROR] == (5, "active")
    # A read begun before that ack answered (it saw 3): the ack is newer and stays.
    acks.replace([slot(acked=3), slot("made-by-promotion", acked=1)], read_from=0)
    assert acks.slots == {MIRROR: (5, "active"), "made-by-promotion": (1, "active")}
    # A read begun after it is the truth: a trim put the slot behind.
    before = acks.version
    same = acks.changed()
    acks.replace([slot(acked=5, state="behind"), slot("made-by-promotion", acked=1)], read_from=before)
    assert acks.slots[MIRROR] == (5, "behind") and same.is_set()
    # A reset (re-seed) moves an ack back: a stale read with the old, higher ack must not bring it back.
    stale_from = acks.version
    acks.update(slot(acked=2))
    acks.replace([slot(acked=5), slot("made-by-promotion", acked=1)], read_from=stale_from)
    assert acks.slots[MIRROR] == (2, "active")
    # Dropped during a read: stays dropped.
    stale_from = acks.version
    acks.drop(MIRROR)
    acks.replace([slot(acked=2), slot("made-by-promotion", acked=1)], read_from=stale_from)
    assert acks.slots == {"made-by-promotion": (1, "active")}
    quiet = acks.changed()
    acks.replace([slot("made-by-promotion", acked=1)], read_from=acks.version)
    assert not quiet.is_set()


async def test_sync_wait_returns_on_the_mirrors_ack():
    gates = SourceGates(lambda: primary(mode="sync", syncTimeoutSeconds=30), _no_slots)
    waiter = asyncio.create_task(gates.wait_acked(4))
    await asyncio.sleep(0)
    gates.acks.update(slot(acked=3))  # not yet
    await asyncio.sleep(0)
    assert not waiter.done()
    gates.acks.update(slot("shadow", acked=9))  # a slot that is no listed mirror does not count
    await asyncio.sleep(0)
    assert not waiter.done()
    gates.acks.update(slot(acked=4))
    await asyncio.wait_for(waiter, 5)


async def test_sync_wait_times_out_with_the_committed_lsn():
    gates = SourceGates(lambda: primary(mode="sync", syncTimeoutSeconds=0.05), _no_slots)
    with pytest.raises(ApiError) as err:
        await gates.wait_acked(12)
    assert (err.value.status, err.value.code) == (503, "sync_timeout")
    assert err.value.extra == {"lsn": 12, "committed": True} and gates.sync_timeouts == 1


async def test_async_mode_does_not_wait_for_acks():
    gates = SourceGates(lambda: primary(mode="async"), _no_slots)
    await asyncio.wait_for(gates.wait_acked(10**6), 1)


async def test_lag_hold_waits_and_resumes_or_refuses():
    slots = [slot(lag=9.0)]

    async def read() -> list[dict[str, Any]]:
        return [dict(s) for s in slots]

    gates = SourceGates(lambda: primary(mode="async", maxLagSeconds=1, holdTimeoutSeconds=30), read)
    await gates.refresh()
    assert gates.lagging and gates.describe()["writes"] == {"accepting": False, "reason": "mirror_lag"}
    assert gates.describe()["mirrors"] == [{"consumer": MIRROR, "ackedLsn": 0, "lagLsn": 0, "lagSeconds": 9.0,
                                            "state": "active"}]
    held = asyncio.create_task(gates.wait_writable())
    await asyncio.sleep(0)
    assert not held.done()
    slots[0]["lagSeconds"] = 0.5
    await gates.refresh()
    await asyncio.wait_for(held, 5)  # released by the pass that saw the mirror catch up
    assert "writes" not in gates.describe()

    slots[0]["lagSeconds"] = 9.0
    short = SourceGates(lambda: primary(mode="async", maxLagSeconds=1, holdTimeoutSeconds=0.05), read)
    await short.refresh()
    with pytest.raises(ApiError) as err:
        await short.wait_writable()
    assert (err.value.status, err.value.code) == (503, "mirror_lag") and short.lag_refusals == 1


async def _no_slots() -> list[dict[str, Any]]:
    return []
