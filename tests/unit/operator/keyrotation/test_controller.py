"""The per-shard rows a KeyRotation's status shows, with and without a shadow in the pod."""

from chronoshard.operator.keyrotation.controller import Step, _record_shards
from chronoshard.operator.keyrotation.plan import ProcessReport


def rep(shard, role, blocks=None, reachable=True):
    return ProcessReport(shard, role, reachable, 5, 2, frozenset({1, 2}), blocks or {}, "refused" if not reachable
                         else None)


def test_rows_count_node_blocks_and_shadow_history_on_old_versions():
    st = Step({"initialOldBlocks": {"0": 10}})
    _record_shards(st, [rep(0, "node", {1: 4, 2: 6}), rep(0, "cache"), rep(0, "shadow", {1: 9, 2: 1}),
                        rep(1, "node", {2: 3}), rep(1, "cache")], 2, 2)
    assert st.status["shards"] == [
        {"shard": 0, "oldVersionBlocks": 4, "remaining": 4, "rewrapped": 6, "loadedGeneration": 5,
         "oldHistoryVersions": 9},
        {"shard": 1, "oldVersionBlocks": 0, "remaining": 0, "rewrapped": 0, "loadedGeneration": 5},
    ]


def test_an_unreachable_shadow_is_named():
    st = Step({})
    _record_shards(st, [rep(0, "node", {2: 1}), rep(0, "shadow", reachable=False)], 1, 2)
    assert st.status["shards"][0]["message"] == "shadow unreachable: refused"


def test_an_idle_rotation_looks_again_soon_only_under_the_test_clock(monkeypatch, tmp_path):
    from chronoshard.operator.keyrotation.controller import CLOCK_OFFSET_ENV, IDLE_SECONDS, _rest

    monkeypatch.delenv(CLOCK_OFFSET_ENV, raising=False)
    assert _rest(Step({}), 1).delay == IDLE_SECONDS == 30.0
    offset = tmp_path / "offset"
    offset.write_text("0")
    monkeypatch.setenv(CLOCK_OFFSET_ENV, str(offset))
    # A test's jump of the clock wakes nothing, so the idle loop must come back within seconds to see it.
    assert _rest(Step({}), 1).delay == 2.0
