"""kill -9 in the middle of applying batches, again and again: the cursor and the stored versions agree exactly."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
from pathlib import Path

from chronoshard.shardnode.shadow import historydb

from tests.support.shadow_history import delete, open_history, put, ring
from tests.support.waiting import wait_for

R = ring(1, (1,))
BATCH = 40
KEYS = 7


def change(lsn: int):
    """The change at ``lsn`` (deterministic, so every process regenerates the same stream)."""
    key = f"k{lsn % KEYS}"
    if lsn % 5 == 0:
        return delete(lsn, float(lsn), "t", key)
    return put(R, lsn, float(lsn), "t", key, f"value-{lsn}".encode() * 20)


def _apply_forever(data_dir: str) -> None:
    """Child: from a bit before the cursor (an unacknowledged page seen again), apply batches without end."""
    h, _ = open_history(Path(data_dir))
    nxt = max(1, h.cursor() - BATCH // 2)
    while True:
        h.apply([change(lsn) for lsn in range(nxt, nxt + BATCH)])
        nxt += BATCH


def _cursor(path: Path) -> int:
    conn = sqlite3.connect(path, timeout=30)
    try:
        row = conn.execute("SELECT value FROM meta WHERE name = 'cursor'").fetchone()
        return int(row[0]) if row else 0
    finally:
        conn.close()


def test_sigkill_during_apply_loses_nothing_and_applies_nothing_twice(tmp_path):
    db = tmp_path / historydb.DB_NAME
    open_history(tmp_path)[0].close()
    ctx = multiprocessing.get_context("spawn")
    last = 0
    for _ in range(6):
        child = ctx.Process(target=_apply_forever, args=(str(tmp_path),))
        child.start()
        before = last
        last = wait_for(lambda b=before: (c := _cursor(db)) > b + 2 * BATCH and c, timeout=60,
                        what="the child to apply two more batches")
        os.kill(child.pid, signal.SIGKILL)  # mid-loop: most likely inside a transaction
        child.join()
        assert child.exitcode == -signal.SIGKILL
        last = _cursor(db)
    conn = sqlite3.connect(db)
    cursor = _cursor(db)
    lsns = [r[0] for r in conn.execute("SELECT lsn FROM frames ORDER BY lsn")]
    assert cursor == last and lsns == list(range(1, cursor + 1))  # every LSN once, none beyond the cursor
    h, _ = open_history(tmp_path)
    for lsn in range(1, cursor + 1):
        expected = change(lsn)
        [v] = [v for v in h.history("t", expected.key, after_lsn=lsn - 1, limit=1)]
        assert v.lsn == lsn and v.op == expected.op
        assert v.value == (None if expected.op == "delete" else f"value-{lsn}".encode() * 20)
