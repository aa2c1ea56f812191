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
                horizon=10.0, policy="scored")
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
    assert "OBJECT miss ratio" in out and "BYTE miss ratio" in out and "policy only" in out
