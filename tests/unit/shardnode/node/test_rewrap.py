"""Rewrap: batches move blocks to the primary, the cursor commits with them, interruptions resume."""

import asyncio

from chronoshard.shardnode.keys.crypto import open_block
from chronoshard.shardnode.node import changelog, rewrap
from chronoshard.shardnode.node.pacing import ForegroundGauge, PaceSettings
from chronoshard.shardnode.node.store import get_block, version_counts

from tests.support.stores import flip_frame_bit, open_store, ring


async def _fill(s, n, table="t"):
    for i in range(n):
        await s.put(table, f"k{i:03}", f"value-{i}".encode())


async def test_batches_move_everything_and_log_rewraps(tmp_path):
    s, holder = open_store(tmp_path, ring(1, (1,)))
    try:
        await _fill(s, 25)
        holder.keyring = ring(2, (1, 2), generation=2)
        k = holder.keyring
        st = await s.write(lambda c: rewrap.start_in_txn(c, k, 10))
        assert st["state"] == "running" and st["target"] == 2
        states = []
        while st["state"] == "running":
            st = await s.write(lambda c: rewrap.batch_in_txn(c, k))
            states.append(st["rewrapped"])
        assert states == [10, 20, 25]
        assert await s.read(version_counts) == {2: 25}
        prog = await s.read(rewrap.progress)
        assert prog["state"] == "done" and prog["remaining"] == 0 and prog["blocks"] == {"2": 25}
        entries = await s.read(lambda c: changelog.read(c, 25, 100))
        assert {e.op for e in entries} == {"rewrap"} and len(entries) == 25
        assert [e.lsn for e in entries] == list(range(26, 51))
        # every block points at its own rewrap entry
        lsn_of = {e.key: e.lsn for e in entries}
        rows = await s.read(lambda c: c.execute("SELECT key, lsn, key_version FROM blocks").fetchall())
        assert all(lsn == lsn_of[key] and v == 2 for key, lsn, v in rows)
        b = await s.read(lambda c: get_block(c, "t", "k007"))
        assert b.key_version == 2 and open_block(k, "t", "k007", b.frame, b.checksum) == b"value-7"
    finally:
        s.close()


async def test_interrupted_rewrap_resumes_from_persisted_cursor(tmp_path):
    s, holder = open_store(tmp_path, ring(1, (1,)))
    await _fill(s, 30)
    k = ring(2, (1, 2), generation=2)
    holder.keyring = k
    await s.write(lambda c: rewrap.start_in_txn(c, k, 8))
    await s.write(lambda c: rewrap.batch_in_txn(c, k))
    s.close()  # "crash" between batches
    s, holder = open_store(tmp_path, k)
    try:
        st = await s.read(rewrap.load_state)
        assert st["state"] == "running" and st["rewrapped"] == 8 and st["cursor"] == ["t", "k007"]
        runner = rewrap.RewrapRunner(s)
        await runner.resume_if_running()
        for _ in range(100):
            if not runner.running:
                break
            await asyncio.sleep(0.02)
        st = await s.read(rewrap.load_state)
        assert st["state"] == "done" and st["rewrapped"] == 30
        assert await s.read(version_counts) == {2: 30}
    finally:
        s.close()


async def test_blocks_that_cannot_be_opened_are_left_untouched_and_reported(tmp_path):
    s, holder = open_store(tmp_path, ring(1, (1,)))
    try:
        await _fill(s, 5)
        await s.write(lambda c: flip_frame_bit(c, "t", "k002", 200))
        before = await s.read(lambda c: get_block(c, "t", "k002"))
        k = ring(2, (1, 2), generation=2)
        holder.keyring = k
        runner = rewrap.RewrapRunner(s)
        await runner.start(2)
        while runner.running:
            await asyncio.sleep(0.01)
        st = await s.read(rewrap.progress)
        assert st["state"] == "done" and st["rewrapped"] == 4 and st["failed"] == 1
        assert st["blocks"] == {"1": 1, "2": 4} and st["remaining"] == 1
        assert st["problems"][0]["key"] == "k002" and "authentication" in st["problems"][0]["error"]
        assert await s.read(lambda c: get_block(c, "t", "k002")) == before
    finally:
        s.close()


async def test_missing_old_version_fails_blocks_with_a_named_version(tmp_path):
    s, holder = open_store(tmp_path, ring(1, (1,)))
    try:
        await _fill(s, 2)
        k = ring(3, (3,), generation=3)  # version 1 retired too early
        holder.keyring = k
        await s.write(lambda c: rewrap.start_in_txn(c, k, 10))
        st = await s.write(lambda c: rewrap.batch_in_txn(c, k))
        assert st["failed"] == 2 and "key version 1 is not in the loaded keyring" in st["lastError"]
        assert await s.read(version_counts) == {1: 2}
    finally:
        s.close()


async def test_primary_change_mid_run_restarts_towards_new_primary(tmp_path):
    s, holder = open_store(tmp_path, ring(1, (1,)))
    try:
        await _fill(s, 10)
        k2 = ring(2, (1, 2), generation=2)
        await s.write(lambda c: rewrap.start_in_txn(c, k2, 4))
        await s.write(lambda c: rewrap.batch_in_txn(c, k2))
        k3 = ring(3, (1, 2, 3), generation=3)
        st = await s.write(lambda c: rewrap.batch_in_txn(c, k3))
        assert st["target"] == 3 and st["passes"] == 1
        while st["state"] == "running":
            st = await s.write(lambda c: rewrap.batch_in_txn(c, k3))
        assert await s.read(version_counts) == {3: 10}
    finally:
        s.close()


async def test_writes_during_rewrap_land_on_primary(tmp_path):
    s, holder = open_store(tmp_path, ring(1, (1,)))
    try:
        await _fill(s, 40)
        holder.keyring = ring(2, (1, 2), generation=2)
        runner = rewrap.RewrapRunner(s)
        await runner.start(5)
        writes = [s.put("t", f"k{i:03}", b"new") for i in range(0, 40, 3)]
        await asyncio.gather(*writes)
        while runner.running:
            await asyncio.sleep(0.01)
        assert await s.read(version_counts) == {2: 40}
        b = await s.read(lambda c: get_block(c, "t", "k003"))
        assert open_block(holder.keyring, "t", "k003", b.frame, b.checksum) == b"new"
    finally:
        s.close()


async def test_rewrap_entries_carry_their_new_frame_while_a_slot_exists(tmp_path):
    from chronoshard.shardnode.node import consumers

    s, holder = open_store(tmp_path, ring(1, (1,)))
    try:
        for i in range(4):
            await s.put("t", f"k{i}", f"v{i}".encode())
        await s.write(lambda c: consumers.register(c, "c", None, False, 1.0))
        s.frames_enabled = True
        k2 = holder.keyring = ring(2, (1, 2))
        await s.write(lambda c: rewrap.start_in_txn(c, k2, 10))
        await s.write(lambda c: rewrap.batch_in_txn(c, k2, frames=s.frames_enabled))
        entries = await s.read(lambda c: list(changelog.iter_changes(c, 4, 100, frames=True)))
        assert [(e.op, e.key_version) for e in entries] == [("rewrap", 2)] * 4
        for e in entries:
            stored = await s.read(lambda c, e=e: get_block(c, "t", e.key))
            assert e.frame == stored.frame and e.lsn == stored.lsn
            assert open_block(k2, "t", e.key, e.frame, e.checksum) == f"v{e.key[1]}".encode()
        assert await s.read(changelog.frame_bytes) == sum(len(e.frame) for e in entries)
    finally:
        s.close()


class _Busy:
    """A foreground that is always busy with the latency given (steers the pace without real clients)."""

    def __init__(self, latency: float, baseline: float) -> None:
        from chronoshard.shardnode.node.pacing import ForegroundGauge, ForegroundSample, PaceSettings

        self.gauge = ForegroundGauge(PaceSettings(busy_batch_seconds=1e-9))  # any batch is over budget
        self.gauge.sample = lambda: ForegroundSample(True, latency, baseline)  # type: ignore[method-assign]


async def _run_to_done(runner, s, k, batch):
    seen = []
    runner.on_batch.append(lambda st: seen.append((st["rewrapped"], runner.pace)))
    await runner.start(batch)
    while runner.running:
        await asyncio.sleep(0.005)
    assert await s.read(version_counts) == {2: 60}
    return seen


async def test_adaptive_runner_uses_short_batches_while_clients_are_busy(tmp_path):
    s, holder = open_store(tmp_path, ring(1, (1,)))
    try:
        await _fill(s, 60)
        holder.keyring = k = ring(2, (1, 2), generation=2)
        busy = _Busy(latency=0.010, baseline=0.002)  # far above the target: the duty falls to its floor
        runner = rewrap.RewrapRunner(s, pause=None, gauge=busy.gauge)
        seen = await _run_to_done(runner, s, k, 20)
        paces = [p for _, p in seen if p is not None]
        assert len(paces) >= 2 and all(p.busy and p.batch == PaceSettings().min_batch for p in paces)
        assert paces[-1].duty < paces[0].duty
        st = await s.read(rewrap.load_state)
        assert st["state"] == "done" and st["rewrapped"] == 60 and st["pauseSeconds"] is None
        assert runner.pace is None and not busy.gauge.rewrap_running
    finally:
        s.close()


async def test_adaptive_runner_runs_full_batches_when_idle_and_a_fixed_pause_is_not_adapted(tmp_path):
    s, holder = open_store(tmp_path, ring(1, (1,)))
    try:
        await _fill(s, 60)
        holder.keyring = k = ring(2, (1, 2), generation=2)
        idle = rewrap.RewrapRunner(s, pause=None, gauge=ForegroundGauge())
        seen = await _run_to_done(idle, s, k, 25)
        assert [n for n, _ in seen] == [25, 50, 60]
        assert all(p is None or not p.busy for _, p in seen[:-1])
    finally:
        s.close()
    s, holder = open_store(tmp_path / "fixed", ring(1, (1,)))
    try:
        await _fill(s, 60)
        holder.keyring = k = ring(2, (1, 2), generation=2)
        busy = _Busy(latency=0.010, baseline=0.002)
        fixed = rewrap.RewrapRunner(s, pause=0.0, gauge=busy.gauge)  # the node's setting fixes the pause
        seen = await _run_to_done(fixed, s, k, 25)
        assert [n for n, _ in seen] == [25, 50, 60] and all(p is None for _, p in seen)
    finally:
        s.close()
