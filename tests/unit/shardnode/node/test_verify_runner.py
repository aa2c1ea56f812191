"""The verify runner: one scan at a time, its status body, reports to callbacks, and a stop that ends a scan."""

import asyncio

import pytest
from chronoshard.shardnode.node.store import connect
from chronoshard.shardnode.node.verify import VerifyReport, VerifyRunner, VerifyRunning

from tests.support.stores import flip_frame_bit, open_store, ring
from tests.support.waiting import wait_for_async


async def _store(tmp_path, n):
    s, holder = open_store(tmp_path, ring(1, (1,)))
    for i in range(n):
        await s.put("t", f"k{i}", f"v{i}".encode())
    return s, holder


async def test_a_scan_reports_to_its_callbacks_and_the_status_body(tmp_path):
    s, holder = await _store(tmp_path, 12)
    runner = VerifyRunner()
    reports: list[VerifyReport] = []
    runner.on_report.append(reports.append)
    assert runner.status() == {"state": "idle", "error": None, "last": None}
    runner.start(s.path, holder.keyring, None)
    with pytest.raises(VerifyRunning):
        runner.start(s.path, holder.keyring, 3)  # one at a time
    await wait_for_async(lambda: not runner.running, what="the scan to finish")
    st = runner.status()
    assert st["state"] == "done" and st["last"]["passed"] and st["last"]["scanned"] == 12
    assert [r.mode for r in reports] == ["full"]
    runner.start(s.path, holder.keyring, 5)
    await wait_for_async(lambda: not runner.running, what="the sampled scan to finish")
    assert runner.status()["last"]["mode"] == "sample" and runner.status()["last"]["scanned"] == 5
    s.close()


async def test_corruption_is_reported_and_a_failed_scan_keeps_its_error(tmp_path):
    s, holder = await _store(tmp_path, 4)
    s.close()
    conn = connect(s.path)
    flip_frame_bit(conn, "t", "k1", 30 * 8)
    conn.close()
    runner = VerifyRunner()
    runner.start(s.path, holder.keyring, None)
    await wait_for_async(lambda: not runner.running, what="the scan to finish")
    assert runner.status()["last"]["corrupt"] == 1 and not runner.status()["last"]["passed"]
    runner.start(tmp_path / "missing" / "blocks.sqlite3", holder.keyring, None)
    await wait_for_async(lambda: not runner.running, what="the failing scan to end")
    st = runner.status()
    assert st["state"] == "failed" and st["error"].startswith("verify failed:") and st["last"]["corrupt"] == 1


async def test_should_stop_ends_a_scan_without_a_report(tmp_path):
    s, holder = await _store(tmp_path, 600)
    runner = VerifyRunner(should_stop=lambda: True)
    reports: list[VerifyReport] = []
    runner.on_report.append(reports.append)
    runner.start(s.path, holder.keyring, None)
    await wait_for_async(lambda: not runner.running, what="the stopped scan to end")
    assert runner.status()["state"] == "failed" and "shutting down" in runner.status()["error"] and not reports
    await runner.stop()  # idempotent once the scan ended
    s.close()


async def test_stop_cancels_a_running_scan(tmp_path):
    s, holder = await _store(tmp_path, 50)
    runner = VerifyRunner()
    runner.start(s.path, holder.keyring, None)
    await runner.stop()
    assert not runner.running
    await asyncio.sleep(0)
    s.close()
