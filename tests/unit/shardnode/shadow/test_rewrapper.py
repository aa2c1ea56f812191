"""Rewrap of the history onto a new primary: resumable batches over hot rows and compacted segments, counts per
key version, versions that do not open left as they were and reported."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass

from chronoshard.shardnode.keys import frames
from chronoshard.shardnode.shadow import rewrapper
from chronoshard.shardnode.shadow.columnar import decode_segment
from chronoshard.shardnode.shadow.rewrapper import RewrapRunner

from tests.support.shadow_history import delete, open_history, put, ring
from tests.support.waiting import wait_for_async

T0 = 1_000_000 * 3600.0
ONE = ring(1, (1,))
BOTH = ring(2, (1, 2))


@dataclass(frozen=True)
class Ret:
    hot_seconds: float = 600.0
    warm_seconds: float = 86400.0
    cold_seconds: float = 7 * 86400.0


def _history(tmp_path, n=30):
    h, holder = open_history(tmp_path, ONE)
    h.apply([put(ONE, i + 1, T0 + i * 60.0, "t", f"k{i:02d}", f"value {i}".encode()) for i in range(n)]
            + [delete(n + 1, T0 + n * 60.0, "t", "k00")])
    h.compact(T0 + n * 30.0 + 600, Ret(), 60.0)  # the older half into warm segments
    holder.keyring = BOTH
    return h, holder


def test_a_pass_reseals_every_version_in_resumable_batches(tmp_path):
    h, _ = _history(tmp_path)
    assert h.version_counts() == {1: 30}
    tiers = dict(sqlite3.connect(h.path).execute("SELECT tier, count(*) FROM frames GROUP BY tier").fetchall())
    assert tiers[0] > 0 and tiers[1] > 0
    assert h.rewrap_batch(BOTH, 2, 4) == 4
    h.close()
    again, _ = open_history(tmp_path, BOTH)  # a restart keeps the cursor: nothing is done twice
    done = 4
    while (n := again.rewrap_batch(BOTH, 2, 4)) or rewrapper.progress_in(_conn(again))["state"] == "running":
        done += n
    assert done == 30 and again.version_counts() == {2: 30}
    st = rewrapper.progress_in(_conn(again))
    assert (st["state"], st["rewrapped"], st["failed"], st["remaining"], st["blocks"]) == ("done", 30, 0, 0,
                                                                                            {"2": 30})
    assert again.rewrap_batch(BOTH, 2, 4) == 0  # done: no new pass to the same target
    # Values unchanged, every frame names version 2, and the segments' metadata says so too.
    assert [v.value for v in again.state_at("t", values=True)][:2] == [b"value 1", b"value 2"]
    conn = _conn(again)
    assert {frames.peek_key_version(bytes(f)) for (f,) in conn.execute("SELECT frame FROM frames WHERE frame "
                                                                         "IS NOT NULL")} == {2}
    metas = [r for (b,) in conn.execute("SELECT meta FROM segments") for r in decode_segment(b)]
    assert metas and {r.key_version for r in metas if r.op != "delete"} == {2}


def _conn(h):
    return sqlite3.connect(h.path)


def test_versions_that_do_not_open_are_left_and_reported(tmp_path):
    h, holder = _history(tmp_path, n=6)
    conn = sqlite3.connect(h.path)
    (frame,) = conn.execute("SELECT frame FROM frames WHERE key = 'k03'").fetchone()
    bad = bytearray(frame)
    bad[-1] ^= 1
    conn.execute("UPDATE frames SET frame = ? WHERE key = 'k03'", (bytes(bad),))
    conn.commit()
    while h.rewrap_batch(BOTH, 2, 2) or rewrapper.progress_in(_conn(h))["state"] == "running":
        pass
    st = rewrapper.progress_in(_conn(h))
    assert st["failed"] == 1 and st["problems"][0]["key"] == "k03" and st["problems"][0]["keyVersion"] == 1
    assert "value" not in st["lastError"]  # no plaintext in what is reported
    assert h.version_counts() == {1: 1, 2: 5} and st["remaining"] == 1  # version 1 is still needed
    (still,) = conn.execute("SELECT frame FROM frames WHERE key = 'k03'").fetchone()
    assert bytes(still) == bytes(bad)


def test_a_missing_key_version_is_reported_not_fatal(tmp_path):
    h, holder = _history(tmp_path, n=4)
    only_two = ring(2, (2,))
    while h.rewrap_batch(only_two, 2, 10) or rewrapper.progress_in(_conn(h))["state"] == "running":
        pass
    st = rewrapper.progress_in(_conn(h))
    assert st["failed"] == 4 and h.version_counts() == {1: 4}
    assert "key version 1" in st["problems"][0]["error"]


def test_the_runner_drives_a_pass_and_resumes_one_a_crash_interrupted(tmp_path):
    h, holder = _history(tmp_path, n=10)

    async def run():
        runner = RewrapRunner(h, holder, pause=0.0)
        with h.write() as conn:
            rewrapper.start_in_txn(conn, 2, 3)  # as if a process died with this pass running
        await runner.resume_if_running()
        st = await wait_for_async(lambda: (p := runner.progress())["state"] == "done" and p, what="the pass")
        await runner.stop()
        return st

    st = asyncio.run(run())
    assert st["rewrapped"] == 10 and h.version_counts() == {2: 10}


def test_stop_waits_for_the_batch_running_in_its_thread_and_none_starts_after(tmp_path):
    import threading

    h, holder = _history(tmp_path, n=10)
    entered, release, finished = threading.Event(), threading.Event(), threading.Event()
    real = h.rewrap_batch

    def slow_batch(*args, **kwargs):
        entered.set()
        release.wait(10)
        try:
            return real(*args, **kwargs)
        finally:
            finished.set()

    h.rewrap_batch = slow_batch  # type: ignore[method-assign]

    async def run():
        runner = RewrapRunner(h, holder, pause=0.0)
        await runner.start(3)
        await asyncio.to_thread(entered.wait, 10)
        stopping = asyncio.ensure_future(runner.stop())
        await asyncio.sleep(0.2)
        assert not stopping.done()  # held while the batch still writes the history
        release.set()
        await asyncio.wait_for(stopping, 10)
        assert finished.is_set()
        try:
            runner.step()
        except RuntimeError as exc:
            return str(exc)
        return None

    assert asyncio.run(run()) == "the history rewrap was stopped"
    h.close()  # safe now: nothing writes it any more
