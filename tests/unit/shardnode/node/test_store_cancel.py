"""A write its caller cancelled while it waited for the store's writer is never made, and the writer lives on."""

import asyncio
import contextlib
import threading

from chronoshard.shardnode.node.store import get_block

from tests.support.stores import open_store, ring


async def test_a_write_cancelled_while_queued_is_dropped_and_later_writes_still_commit(tmp_path):
    s, _ = open_store(tmp_path, ring(1, (1,)))
    try:
        release = threading.Event()
        busy = s.submit(lambda c: release.wait(10))  # holds the writer so the next job stays queued
        queued = asyncio.ensure_future(s.put("t", "cancelled", b"never"))
        await asyncio.sleep(0)  # let the put reach the queue
        queued.cancel()  # what the deadline middleware does to the handler awaiting it
        # The cancellation reaches the queued job when the task next runs: wait for that before the writer is
        # released (released at once, under load the writer took the job first and made the write, LSN 1).
        with contextlib.suppress(asyncio.CancelledError):
            await queued
        release.set()
        assert await asyncio.wrap_future(busy) is True
        # The writer survived the cancelled job (before the fix its thread died here and this never answered).
        res = await asyncio.wait_for(s.put("t", "after", b"made"), 10)
        assert res.lsn == 1  # the cancelled write took no LSN: it was never made
        assert await s.read(lambda c: get_block(c, "t", "cancelled")) is None
        assert queued.cancelled()
    finally:
        s.close()
