"""Reference model: random puts, deletes and rewraps over a few keys; at random points value_at, state_at and
diff answer what a plain in-memory list of versions says."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.shadow_history import delete, open_history, put, rewrap, ring

KEYS = ["a", "b", "c", "d"]
RING = ring(2, (1, 2))

ops = st.lists(st.tuples(st.sampled_from(["put", "delete", "rewrap"]), st.sampled_from(KEYS),
                         st.binary(min_size=0, max_size=12), st.floats(min_value=0.0, max_value=5.0)),
               min_size=1, max_size=40)


def _build(steps):
    """The stream of changes (as the node would send it) and the model: per LSN the state of every key."""
    live: dict[str, bytes] = {}
    changes, states, times = [], {0: {}}, {0: 0.0}
    t = 1000.0
    for op, key, value, dt in steps:
        lsn = len(changes) + 1
        t += dt
        if op == "put":
            live[key] = value
            changes.append(put(RING, lsn, t, "t", key, value, version=1))
        elif op == "delete" and key in live:
            del live[key]
            changes.append(delete(lsn, t, "t", key))
        elif op == "rewrap" and key in live:
            changes.append(rewrap(RING, lsn, t, "t", key, live[key], version=2))
        else:
            continue
        states[lsn], times[lsn] = dict(live), t
    return changes, states, times


def _lsn_at_time(times: dict[int, float], t: float) -> int:
    return max((lsn for lsn, tt in times.items() if tt <= t), default=0)


def _model_diff(before: dict[str, bytes], after: dict[str, bytes]) -> list[tuple[str, str]]:
    out = []
    for key in sorted(set(before) | set(after)):
        if key not in before:
            out.append((key, "created"))
        elif key not in after:
            out.append((key, "deleted"))
        elif before[key] != after[key]:
            out.append((key, "changed"))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=ops, data=st.data())
def test_answers_match_the_reference_model(steps, data):
    changes, states, times = _build(steps)
    with tempfile.TemporaryDirectory() as d:
        h, _ = open_history(Path(d), RING)
        # Applied in random pages, some repeated (an unacknowledged page read again).
        i = 0
        while i < len(changes):
            n = data.draw(st.integers(1, 8))
            h.apply(changes[max(0, i - data.draw(st.integers(0, 3))):i + n])
            i += n
        last = len(changes)
        assert h.cursor() == last
        for _ in range(4):
            lsn = data.draw(st.integers(0, last))
            state = states[lsn]
            for key in KEYS:
                v = h.value_at("t", key, lsn=lsn)
                assert (v.value if v else None) == state.get(key)
            got = h.state_at("t", lsn=lsn, limit=data.draw(st.integers(1, 5)) + 10)
            assert [(v.key, v.value) for v in got] == sorted(state.items())
            t = data.draw(st.floats(min_value=999.0, max_value=1000.0 + 5.0 * 41))
            at_t = states[_lsn_at_time(times, t)]
            assert [(v.key, v.value) for v in h.state_at("t", time=t)] == sorted(at_t.items())
            a, b = sorted((lsn, data.draw(st.integers(0, last))))
            expected = _model_diff(states[a], states[b])
            assert [(e.key, e.change) for e in h.diff("t", from_lsn=a, to_lsn=b)] == expected
        h.close()
