"""Group commit: writes queued while the writer is busy commit together, their callers hear back in one hand-off
per group, blocks are sealed before queueing (and sealed again if the keyring changed meanwhile)."""

import asyncio
import threading

import pytest
from chronoshard.shardnode.keys.crypto import CompromisedVersion, open_block
from chronoshard.shardnode.keys.keyring import Keyring, KeyVersion
from chronoshard.shardnode.node.store import get_block, version_counts
from chronoshard.shardnode.serving.metrics import NodeMetrics

from tests.support.stores import ring


async def queue_behind_busy_writer(s, puts):
    """Hold the writer with a job, start ``puts`` (coroutines) so they queue behind it; returns (release, busy,
    tasks): set ``release`` to let the writer go on."""
    began, release = threading.Event(), threading.Event()

    def hold(conn):
        began.set()
        return release.wait(10)

    busy = s.submit(hold)
    await asyncio.to_thread(began.wait, 10)  # the writer has taken it: what follows queues behind it
    tasks = [asyncio.ensure_future(p) for p in puts]
    for _ in range(5):
        await asyncio.sleep(0)  # every put reaches the queue (sealing happens before it)
    return release, busy, tasks


async def test_writes_queued_behind_a_commit_share_the_next_one(store):
    s, _ = store
    release, busy, tasks = await queue_behind_busy_writer(s, [s.put("t", f"k{i}", b"v") for i in range(10)])
    commits, jobs = s.commits, s.committed_jobs
    release.set()
    await asyncio.wrap_future(busy)
    results = await asyncio.gather(*tasks)
    assert sorted(r.lsn for r in results) == list(range(1, 11))
    # the busy job committed alone, the ten queued writes together in one transaction
    assert (s.commits - commits, s.committed_jobs - jobs) == (2, 11)


async def test_a_group_is_handed_to_the_event_loop_in_one_call(store):
    s, _ = store
    loop = asyncio.get_running_loop()
    calls = []
    original = loop.call_soon_threadsafe

    def counting(callback, *args, **kwargs):
        if threading.current_thread().name == "store-writer":
            calls.append(callback)
        return original(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counting
    try:
        release, busy, tasks = await queue_behind_busy_writer(s, [s.put("t", f"k{i}", b"v") for i in range(20)])
        release.set()
        await asyncio.to_thread(busy.result, 10)  # not wrap_future: that would be one more call from the writer
        await asyncio.gather(*tasks)
    finally:
        del loop.call_soon_threadsafe
    assert len(calls) == 1  # one wake-up of the loop for twenty acknowledged writes


async def test_a_failing_job_in_a_group_fails_only_its_own_caller(store):
    s, _ = store

    def bad(conn):
        raise ValueError("boom")

    release, busy, tasks = await queue_behind_busy_writer(s, [s.put("t", "a", b"1"), s.write(bad),
                                                              s.put("t", "b", b"2")])
    release.set()
    await asyncio.wrap_future(busy)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(outcomes[1], ValueError)
    assert [o.lsn for o in (outcomes[0], outcomes[2])] == [1, 2]


async def test_a_write_cancelled_after_the_writer_began_it_still_commits(store):
    s, _ = store
    began, release = threading.Event(), threading.Event()

    def slow(conn):
        began.set()
        release.wait(10)
        conn.execute("INSERT INTO meta (name, value) VALUES ('slow', '1')")
        return "done"

    task = asyncio.ensure_future(s.write(slow))
    await asyncio.to_thread(began.wait, 10)
    task.cancel()  # too late to take it back: the writer is running it
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the writer lived on and the begun job is in the store
    assert (await s.put("t", "after", b"x")).lsn == 1
    assert await s.read(lambda c: c.execute("SELECT value FROM meta WHERE name = 'slow'").fetchone()) == ("1",)


async def test_blocks_are_sealed_before_queueing_with_the_loaded_keyring(store):
    s, holder = store
    sealed = s.seal_ahead("t", "k", b"plain")
    assert sealed is not None and sealed.keyring is holder.keyring and sealed.version == 1
    assert open_block(holder.keyring, "t", "k", sealed.frame, sealed.checksum) == b"plain"
    await s.put("t", "k", b"plain")
    block = await s.read(lambda c: get_block(c, "t", "k"))
    assert open_block(holder.keyring, "t", "k", block.frame, block.checksum) == b"plain"


async def test_a_keyring_swapped_while_the_write_was_queued_reseals_it_with_the_new_primary(store):
    s, holder = store
    release, busy, tasks = await queue_behind_busy_writer(s, [s.put("t", "k", b"v")])
    holder.keyring = ring(2, (1, 2), generation=2)  # loaded after the block was sealed under version 1
    release.set()
    await asyncio.wrap_future(busy)
    (res,) = await asyncio.gather(*tasks)
    assert res.key_version == 2
    assert await s.read(version_counts) == {2: 1}
    block = await s.read(lambda c: get_block(c, "t", "k"))
    assert open_block(holder.keyring, "t", "k", block.frame, block.checksum) == b"v"


async def test_nothing_is_sealed_ahead_without_a_usable_primary(store):
    s, holder = store
    holder.keyring = None
    assert s.seal_ahead("t", "k", b"v") is None
    holder.keyring = Keyring(2, [KeyVersion(1, "primary", compromised=True)], {1: bytes([1]) * 32})
    assert s.seal_ahead("t", "k", b"v") is None
    with pytest.raises(CompromisedVersion):  # refused by the writer, as before
        await s.put("t", "k", b"v")


async def test_node_metrics_export_the_commit_counters(store):
    s, _ = store
    await asyncio.gather(*(s.put("t", f"k{i}", b"v") for i in range(30)))
    metrics = NodeMetrics()
    metrics.watch_commits(lambda: (s.commits, s.committed_jobs))
    assert metrics.registry.get_sample_value("chronoshard_node_store_committed_jobs_total") == 30
    assert 1 <= metrics.registry.get_sample_value("chronoshard_node_store_commits_total") <= 30
    idle = NodeMetrics()
    idle.watch_commits(lambda: None)  # before the store is open
    assert idle.registry.get_sample_value("chronoshard_node_store_commits_total") == 0
