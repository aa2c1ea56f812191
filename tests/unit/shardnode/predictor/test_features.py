"""Candidate generation: block runs (also interleaved), successors, bounded state."""

from __future__ import annotations

from chronoshard.shardnode.predictor.access import Access
from chronoshard.shardnode.predictor.features import (
    FEATURE_NAMES,
    KIND_SEQ1,
    KIND_SEQ2,
    KIND_SUCC,
    CandidateGenerator,
    GeneratorSettings,
)

RUN = FEATURE_NAMES.index("run_len")


def acc(key: str, t: float = 0.0, size: int = 4096, client: str = "") -> Access:
    return Access(time=t, table="t", key=key, size=size, client=client)


def test_sequential_run_is_extended_by_request_size() -> None:
    g = CandidateGenerator(GeneratorSettings(block_bytes=512))
    c = {x.kind: x for x in g.observe(acc("1000"))}
    assert c[KIND_SEQ1].key == "1008" and c[KIND_SEQ2].key == "1016"  # 4096 B = 8 sectors
    assert c[KIND_SEQ1].features[RUN] == 0
    c = {x.kind: x for x in g.observe(acc("1008", 0.1))}
    assert c[KIND_SEQ1].features[RUN] == 1


def test_interleaved_runs_are_tracked_separately() -> None:
    g = CandidateGenerator(GeneratorSettings(block_bytes=4096))
    for i in range(5):
        g.observe(acc(f"{100 + i}", i))
        last = g.observe(acc(f"{900 + i}", i + 0.5))
    seq = next(x for x in last if x.kind == KIND_SEQ1)
    assert seq.key == "905" and seq.features[RUN] == 4


def test_successors_are_learned_per_client() -> None:
    g = CandidateGenerator()
    for r in range(3):
        g.observe(acc("orders", r, client="a"))
        g.observe(acc("noise", r, client="b"))  # another client's read between does not break a's chain
        g.observe(acc("items", r + 0.1, client="a"))
    succ = [x for x in g.observe(acc("orders", 9, client="a")) if x.kind == KIND_SUCC]
    assert [x.key for x in succ] == ["items"]
    assert succ[0].features[FEATURE_NAMES.index("succ_ratio")] == 1.0


def test_state_stays_bounded() -> None:
    g = CandidateGenerator(GeneratorSettings(max_streams=4, max_keys=50))
    for i in range(1000):
        g.observe(acc(f"k{i * 977 % 100000}", i))
    st = g._tables["t"]
    assert len(st.streams) <= 4 and len(st.key_stats) <= 50 and len(st.successors) <= 50
    assert all(len(c.features) == len(FEATURE_NAMES) for c in g.observe(acc("k1", 2000)))


def test_clients_are_bounded_and_the_recent_ones_kept() -> None:
    g = CandidateGenerator(GeneratorSettings(max_clients=10))
    for i in range(100):  # a new client id per job, as with X-Client-Id per run
        g.observe(acc("orders", i, client=f"job{i}"))
    st = g._tables["t"]
    assert len(st.last_key_by_client) == 10 and len(st.client_runs) == 10
    assert "job99" in st.last_key_by_client and "job0" not in st.last_key_by_client
    g.observe(acc("items", 200, client="job99"))  # the most recent client's chain is still known
    assert [x.key for x in g.observe(acc("orders", 300, client="x")) if x.kind == KIND_SUCC] == ["items"]
