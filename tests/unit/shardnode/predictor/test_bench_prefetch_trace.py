"""The trace benchmark's own replay (no libCacheSim needed): hints must beat the bare policy on planted runs."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
from chronoshard.shardnode.predictor.features import GeneratorSettings
from chronoshard.shardnode.predictor.labels import label_candidates
from chronoshard.shardnode.predictor.scorers import make_scorer
from chronoshard.shardnode.predictor.traces import read_trace

from tests.bench.bench_prefetch_trace import TABLE, build_rows, main, simulate


def planted_csv(path: Path, n: int = 6000, seed: int = 3) -> None:
    """Interleaved sequential runs of 8 KiB writes/reads plus random reads, one request per 10 ms."""
    rng = random.Random(seed)
    lines = ["version,time,op,size,lbn"]
    heads = [rng.randrange(10**7) for _ in range(3)]
    for i in range(n):
        if rng.random() < 0.2:
            lbn = rng.randrange(10**8)
        else:
            s = rng.randrange(3)
            lbn = heads[s]
            heads[s] = lbn + 16 if rng.random() > 0.02 else rng.randrange(10**7)
        lines.append(f"1,{i / 100:.2f},{rng.choice(['28', '2a'])},8192,{lbn}")
    path.write_text("\n".join(lines) + "\n")


def args(**kw: object) -> argparse.Namespace:
    base = dict(threshold=0.5, target_precision=0.5, no_feedback=False, hints_per_s=200.0, bytes_per_s=64 * 2**20,
                horizon=10.0, policy="scored", block_bytes=512, no_ranges=False, no_rank=False,
                prefetch_budget_fraction=0.5)
    base.update(kw)
    return argparse.Namespace(**base)


def test_replay_with_hints_beats_the_bare_policy(tmp_path: Path) -> None:
    planted_csv(tmp_path / "t.csv")
    trace = read_trace(tmp_path / "t.csv")
    from chronoshard.shardnode.predictor.access import Access

    accesses = [Access(time=t, table=TABLE, key=str(o), size=s, write=w) for t, o, s, w in
                zip(trace.time.tolist(), trace.obj_id.tolist(), trace.size.tolist(), trace.write.tolist(),
                    strict=True)]
    obj_size = {str(o): int(s) for o, s in zip(trace.obj_id.tolist(), trace.object_sizes().tolist(), strict=True)}
    rows = build_rows(accesses, GeneratorSettings())
    y = label_candidates(accesses, rows.origin.tolist(), [(TABLE, k) for k in rows.keys], 10.0)
    split = 2000
    train = rows.origin < split - 1000
    scores = make_scorer("stats").fit(rows.x[train], y[train]).predict(rows.x)
    cap = 200
    bare = simulate(accesses, obj_size, rows, np.zeros(len(rows.keys)), cap, True, split, args())
    ours = simulate(accesses, obj_size, rows, scores, cap, True, split, args())
    assert bare.hints == 0 and bare.wasted_pct == 0.0
    # ~78% of requests continue a run; the bare cache misses nearly all of them.
    assert bare.obj_miss > 0.9 and ours.obj_miss < 0.45, (bare, ours)
    assert ours.precision > 0.8 and ours.wasted_pct < 20.0
    # With a budget of zero hints per second nothing is prefetched.
    none = simulate(accesses, obj_size, rows, scores, cap, True, split, args(hints_per_s=0.0))
    assert none.hints == 0 and abs(none.obj_miss - bare.obj_miss) < 1e-9


def test_main_runs_on_a_small_trace_without_baselines(tmp_path: Path, capsys) -> None:
    planted_csv(tmp_path / "t.csv", n=3000)
    main(["--data", str(tmp_path / "t.csv"), "--models", "stats", "--skip-baselines"])
    out = capsys.readouterr().out
    assert "OBJECT miss ratio" in out and "BYTE miss ratio" in out and "scored alone" in out and "0.5 hint/req" in out


def test_dense_ids_fit_an_unsigned_request_id() -> None:
    from tests.bench.bench_prefetch_trace import dense_ids

    ids = np.array([2**64 - 1, 5, 2**63, 5], dtype=np.uint64).view(np.int64)  # two read negative
    out = dense_ids(ids)
    assert out.min() >= 1 and out[1] == out[3] and len(set(out.tolist())) == 3


def hashed_ids_txt(path: Path, n: int = 2000) -> None:
    """A key-value style trace: 64-bit hashed ids, half of them over 2**63, Zipf-ish reuse."""
    rng = random.Random(9)
    keys = [rng.getrandbits(64) for _ in range(300)]
    path.write_text("\n".join(str(keys[min(int(rng.paretovariate(1.0)) - 1, 299)]) for _ in range(n)) + "\n")


def test_main_runs_on_ids_beyond_signed_64_bits(tmp_path: Path, capsys) -> None:
    hashed_ids_txt(tmp_path / "kv.txt")
    main(["--data", str(tmp_path / "kv.txt"), "--models", "stats", "--skip-baselines", "--hint-budgets", "1"])
    out = capsys.readouterr().out
    assert "scored alone" in out and "1 hint/req" in out


def test_libcachesim_baselines_take_hashed_ids(tmp_path: Path) -> None:
    import pytest

    pytest.importorskip("libcachesim")  # the bench extra
    from tests.bench.bench_prefetch_trace import run_baseline

    hashed_ids_txt(tmp_path / "kv.txt")
    trace = read_trace(tmp_path / "kv.txt")
    obj_miss, byte_miss = run_baseline("LRU", trace, trace.object_sizes(), trace.next_access(), 30, True, 500)
    assert 0.0 < obj_miss < 1.0 and byte_miss == obj_miss
