"""The MirrorSet-aware client's pure decisions and its view bookkeeping: which copy a read goes to, which write
refusals are sent again and where, the backoff, and the read-your-writes marks."""

import asyncio
import time

import pytest
from chronoshard.shardnode.client.errors import Unavailable, Unreachable
from chronoshard.shardnode.client.mirrorrouting import MirrorRouting, StaticEndpoints, StaticMirrorSet
from chronoshard.shardnode.client.mirrors import (
    MAX_WRITE_ATTEMPTS,
    MirrorView,
    WriteMarks,
    backoff,
    next_write_target,
    read_failed,
    read_needs_primary,
    write_refusal,
)


def copy(shard_set, role="mirror", health="healthy", applied=10):
    return {"shardSet": shard_set, "role": role, "health": health, "appliedLSN": applied}


STATUS = {"term": 4, "activeShardSet": "a/x", "shards": [
    {"shard": 0, "copies": [copy("a/x", "primary"), copy("b/y", applied=7), copy("c/z", applied=9),
                            copy("d/w", health="degraded", applied=10), copy("e/v", role="fenced", applied=10)]},
    {"shard": 1, "copies": [copy("a/x", "primary"), copy("b/y", health="unavailable")]},
]}


def test_view_from_status_and_read_fallbacks_most_caught_up_healthy_mirrors_first():
    view = MirrorView.from_status(STATUS, "MirrorSet a/orders")
    assert (view.term, view.active) == (4, "a/x")
    assert view.read_fallbacks(0) == ["c/z", "b/y"]  # not degraded, not fenced, not the active itself
    assert view.read_fallbacks(1) == [] and view.read_fallbacks(7) == []
    assert view.members() == {"a/x", "b/y", "c/z", "d/w", "e/v"}


@pytest.mark.parametrize("status", [{}, {"activeShardSet": ""}, {"activeShardSet": "no-namespace"}])
def test_a_status_without_an_active_is_unavailable(status):
    with pytest.raises(Unavailable, match="names no activeShardSet"):
        MirrorView.from_status(status, "MirrorSet a/orders")


def test_write_refusals_sent_again_are_only_those_before_commit():
    for error in ("not_primary", "fenced", "lease_lost"):
        assert write_refusal(503, {"error": error}) == error
    for status, error in ((503, "sync_timeout"), (503, "mirror_lag"), (500, "not_primary"), (409, "stale_term")):
        assert write_refusal(status, {"error": error}) is None


def test_the_hint_is_taken_only_from_the_refusing_active_and_only_for_a_member():
    view = MirrorView.from_status(STATUS, "m")
    assert next_write_target(view, "a/x", {"primaryShardSet": "b/y"}) == "b/y"  # the status lags the roles
    assert next_write_target(view, "a/x", {"primaryShardSet": "evil/ss"}) == "a/x"  # not a member
    assert next_write_target(view, "a/x", {"primaryShardSet": None}) == "a/x"
    assert next_write_target(view, "b/y", {"primaryShardSet": "c/z"}) == "a/x"  # the status moved on: it wins


def test_backoff_doubles_up_to_a_second_and_attempts_are_bounded():
    assert [backoff(n) for n in range(1, 7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert sum(backoff(n) for n in range(1, MAX_WRITE_ATTEMPTS)) < 10


def test_reads_go_on_after_5xx_and_to_the_primary_after_lsn_not_reached():
    assert read_failed(503) and read_failed(502) and not read_failed(404) and not read_failed(409)
    assert read_needs_primary(409, {"error": "lsn_not_reached", "appliedLsn": 3})
    assert not read_needs_primary(409, {"error": "stale_term"}) and not read_needs_primary(503, {})


def test_write_marks_keep_the_highest_acknowledged_lsn_per_shard():
    marks = WriteMarks()
    assert marks.min_lsn(0) is None and marks.headers(0, 500) == {}
    marks.note(0, {"lsn": 12})
    marks.note(0, {"lsn": 9})  # an older acknowledgement answered late
    marks.note(0, {"lsn": True})
    marks.note(1, {"error": "x"})
    assert marks.min_lsn(0) == 12 and marks.min_lsn(1) is None
    assert marks.headers(0, 500) == {"X-Chronoshard-Min-Lsn": "12", "X-Chronoshard-Wait-Ms": "500"}
    assert marks.headers(0, None) == {"X-Chronoshard-Min-Lsn": "12"}
    marks.note(0, {"lsn": 40, "term": 3})  # after a failover: the new primary's LSNs and term
    marks.note(0, {"lsn": 38, "term": 2})
    assert marks.headers(0, None) == {"X-Chronoshard-Min-Lsn": "40", "X-Chronoshard-Min-Term": "3"}


async def test_concurrent_refreshes_after_one_refusal_read_the_status_once():
    reads = []

    def status():
        reads.append(1)
        return STATUS | {"term": 4 + len(reads)}

    routing = MirrorRouting(StaticMirrorSet(status), StaticEndpoints({"a/x": ["http://127.0.0.1:1"]}))
    first = await routing.view()
    seen = time.monotonic()
    views = await asyncio.gather(*(routing.refresh(seen) for _ in range(10)))
    assert first.term == 5 and {v.term for v in views} == {6} and routing.resolutions == 2
    assert (await routing.refresh_if_older(60)).term == 6 and routing.resolutions == 2
    assert (await routing.refresh_if_older(0)).term == 7
    assert str(routing.active_endpoint(0)) == "http://127.0.0.1:1"
    with pytest.raises(Unreachable):
        routing.endpoint("b/y", 0)
