"""The history checker finds each kind of violation it names, and nothing in a correct history."""

from __future__ import annotations

import pytest

from tests.support.histories import Read, Write, check, lost_within, seq_of, value_of


def w(key: str, seq: int, start: float, end: float, ok: bool = True, lsn: int | None = None) -> Write:
    return Write(key, seq, start, end, "ok" if ok else "unknown", lsn if lsn is not None else seq)


def test_values_round_trip_and_foreign_values_are_refused() -> None:
    assert seq_of("k", value_of("k", 7)) == 7
    assert seq_of("k", None) is None
    with pytest.raises(ValueError):
        seq_of("k", value_of("other", 7))


def test_a_correct_history_passes() -> None:
    writes = [w("a", 1, 0, 1), w("a", 2, 1, 2), w("a", 3, 2, 3, ok=False)]
    reads = [Read("a", 1.5, 1.6, 1), Read("a", 2.5, 2.6, 2), Read("a", 2.5, 3.5, 3)]
    report = check(writes, reads, {"a": 2})
    assert report.ok, report.summary()
    assert (report.writes, report.acknowledged, report.reads) == (3, 2, 3)


def test_an_unknown_write_may_or_may_not_survive() -> None:
    writes = [w("a", 1, 0, 1), w("a", 2, 1, 2, ok=False)]
    assert check(writes, [], {"a": 1}).ok
    assert check(writes, [], {"a": 2}).ok


def test_a_lost_acknowledged_write_is_found_with_every_later_one() -> None:
    writes = [w("a", 1, 0, 1), w("a", 2, 1, 2), w("a", 3, 2, 3)]
    report = check(writes, [], {"a": 1})
    assert [x.seq for x in report.lost] == [2, 3]
    assert [x.seq for x in check(writes, [], {"a": None}).lost] == [1, 2, 3]


def test_stale_impossible_and_phantom() -> None:
    writes = [w("a", 1, 0, 1), w("a", 2, 1, 2)]
    stale = check(writes, [Read("a", 2.5, 2.6, 1)], {"a": 2})
    assert [s[1] for s in stale.stale] == [2]
    absent = check(writes, [Read("a", 1.5, 1.6, None)], {"a": 2})
    assert len(absent.stale) == 1
    future = check(writes, [Read("a", 0.1, 0.5, 2)], {"a": 2})
    assert len(future.impossible) == 1
    phantom = check(writes, [], {"a": 9})
    assert phantom.phantom == [("a", 9)]
    assert not (stale.ok or absent.ok or future.ok or phantom.ok)


def test_a_read_overlapping_the_write_may_see_either_value() -> None:
    writes = [w("a", 1, 0, 1), w("a", 2, 1, 2)]
    assert check(writes, [Read("a", 1.2, 1.4, 1), Read("a", 1.3, 1.5, 2)], {"a": 2}).ok


def test_every_written_key_needs_a_final_state() -> None:
    with pytest.raises(KeyError):
        check([w("a", 1, 0, 1)], [], {})


def test_lost_within_reported_ranges() -> None:
    writes = [w("a", 1, 0, 1, lsn=10), w("a", 2, 1, 2, lsn=11), w("b", 1, 0, 1, lsn=12)]
    report = check(writes, [], {"a": 1, "b": None})
    assert {x.lsn for x in report.lost} == {11, 12}
    assert lost_within(report, {0: (11, 12)}) == []
    assert [x.lsn for x in lost_within(report, {0: (12, 12)})] == [11]
