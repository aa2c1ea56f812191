"""The failover benchmark's pure figures on hand-made histories: the per-key gap that spans a fault, and which
checker findings count as violations in sync and async mode."""

from __future__ import annotations

from tests.bench.bench_mirror_failover import pct, violations
from tests.e2e.test_mirror import longest_gap
from tests.support.histories import Read, Write, check


def ok(key: str, seq: int, start: float, end: float, lsn: int = 0, shard: int = 0) -> Write:
    return Write(key, seq, start, end, "ok", lsn, shard)


def test_the_gap_of_a_writer_blocked_by_the_fault_starts_at_its_last_ack_before_it() -> None:
    # "a" is acknowledged at 1 and 2, frozen from 3, acknowledged again at 9: 7 s without an acknowledgement.
    writes = [ok("a", 1, 0, 1), ok("a", 2, 1, 2), ok("a", 3, 2, 9), ok("a", 4, 9, 9.5), ok("b", 1, 0, 5),
              ok("b", 2, 5, 6)]
    assert longest_gap(writes, after=3) == 7
    assert longest_gap(writes, after=9.2) == 0.5  # gaps that ended before ``after`` do not count
    assert longest_gap([Write("a", 1, 0, 1, "unknown")], after=0) == 0.0


def test_sync_counts_every_loss_and_async_only_losses_outside_the_reported_range() -> None:
    # Shard 0 acknowledged seq 2 (LSN 11) and seq 3 (LSN 12); the final state has seq 1: both lost. A read after
    # seq 3's acknowledgement returned seq 1: stale.
    writes = [ok("a", 1, 0, 1, 10), ok("a", 2, 1, 2, 11), ok("a", 3, 2, 3, 12)]
    report = check(writes, [Read("a", 4, 5, 1)], {"a": 1})
    assert (len(report.lost), len(report.stale)) == (2, 1)
    assert violations("sync", report, {0: (11, 12)}) == 3
    assert violations("async", report, {0: (11, 12)}) == 0  # reported by lostWrites: the stale read is excused too
    assert violations("async", report, {0: (12, 12)}) == 1  # LSN 11 lost, not reported (seq 3 was)
    assert violations("async", report, {1: (11, 12)}) == 3  # another shard's range accounts for nothing


def test_nearest_rank_percentile() -> None:
    assert pct([3.0, 1.0, 2.0], 0.5) == 2.0
    assert pct([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert pct([5.0], 0.99) == 5.0
