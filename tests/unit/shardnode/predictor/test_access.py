"""Access-log entries and block-key arithmetic."""

from __future__ import annotations

import pytest
from chronoshard.shardnode.predictor.access import AccessLogError, offset_key, parse_log_entry, split_numeric


def test_parse_cache_log_entry() -> None:
    a = parse_log_entry({"seq": 7, "time": 1700000000.5, "table": "t", "key": "blk-0001", "client": "c1",
                         "hit": True, "size": 4096})
    assert (a.seq, a.time, a.table, a.key, a.client, a.hit, a.size) == (7, 1700000000.5, "t", "blk-0001", "c1",
                                                                        True, 4096)


def test_parse_iso_time() -> None:
    a = parse_log_entry({"seq": 1, "time": "1970-01-01T00:01:00Z", "table": "t", "key": "k"})
    assert a.time == 60.0 and a.size == 0 and a.client == ""


@pytest.mark.parametrize("entry", [
    {"time": 1, "table": "t", "key": "k"},  # no seq
    {"seq": 1, "time": 1, "table": "", "key": "k"},
    {"seq": 1, "time": 1, "table": "t", "key": 5},
    {"seq": 1, "time": "yesterday", "table": "t", "key": "k"},
    {"seq": 1, "time": True, "table": "t", "key": "k"},
    {"seq": "x", "time": 1, "table": "t", "key": "k"},
])
def test_bad_entries_are_refused(entry: dict) -> None:
    with pytest.raises(AccessLogError):
        parse_log_entry(entry)


def test_offset_key_keeps_padding_and_prefix() -> None:
    assert split_numeric("blk-000123") == ("blk-", 123)
    assert offset_key("blk-000123", 8) == "blk-000131"
    assert offset_key("42932745", 13) == "42932758"
    assert offset_key("orders", 1) is None
    assert offset_key("a-1", -5) is None
    assert offset_key("x0999", 1) == "x1000"
