"""The access log ring buffer: sequence numbers, bounded size, reading after a sequence number."""

import asyncio

from chronoshard.shardnode.cache.access_log import AccessLog


def test_after_returns_entries_in_order_with_limit():
    log = AccessLog(capacity=10)
    for i in range(5):
        log.append("t", f"k{i}", "c", i % 2 == 0, i)
    got = log.after(1, 2)
    assert [(e.seq, e.key, e.hit) for e in got] == [(2, "k1", False), (3, "k2", True)]
    assert log.after(5, 10) == [] and log.last_seq == 5
    assert got[0].to_json() == {"seq": 2, "time": got[0].time, "table": "t", "key": "k1", "client": "c",
                                "hit": False, "size": 1}


def test_bounded_ring_drops_oldest_and_reader_skips_ahead():
    log = AccessLog(capacity=3)
    for i in range(10):
        log.append("t", str(i), "c", True, 1)
    assert log.first_seq == 8 and log.last_seq == 10
    assert [e.seq for e in log.after(0, 100)] == [8, 9, 10]
    assert [e.seq for e in log.after(8, 100)] == [9, 10]


def test_empty_log():
    log = AccessLog()
    assert log.after(0, 10) == [] and log.first_seq == 0 and log.last_seq == 0


async def test_wait_after_wakes_on_the_next_append_and_times_out_without_one():
    log = AccessLog()
    log.append("t", "k0", "c", False, 1)
    waiter = asyncio.create_task(log.wait_after(1, timeout=30))
    await asyncio.sleep(0)  # one turn of the loop runs the waiter to its wait (a wrong early return is done by now)
    assert not waiter.done()  # nothing after seq 1 yet
    log.append("t", "k1", "c", False, 1)
    await asyncio.wait_for(waiter, 5)  # woken by the append, long before its 30 s
    await log.wait_after(1, timeout=30)  # already satisfied: returns at once
    await log.wait_after(2, timeout=0.05)  # nothing comes: returns after the timeout
    assert [e.key for e in log.after(1, 10)] == ["k1"]


async def test_wake_releases_every_waiter():
    log = AccessLog()
    waiters = [asyncio.create_task(log.wait_after(0, timeout=30)) for _ in range(3)]
    await asyncio.sleep(0)  # one turn of the loop: all three are waiting
    assert not any(w.done() for w in waiters)
    log.wake()
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
