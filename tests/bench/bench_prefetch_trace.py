"""Replay a block trace through LRU/ARC/S3-FIFO/SIEVE/Belady (libCacheSim) and through our cache + predictor.

    python -m tests.bench.bench_prefetch_trace --data /work/shared/data/cache/cloudPhysicsIO/cloudPhysicsIO.vscsi

The first --train-frac of the requests trains the predictor and warms every cache; only the rest
is scored. Every request counts (reads and writes, as libCacheSim does); objects are start blocks
with the size of their first request (libCacheSim's oracleGeneral convention). Prints object and
byte miss ratios at 1/5/10% of the footprint, our prefetch precision and the prefetched bytes that
were wasted (evicted, or not requested within the horizon) as a share of the bytes requested.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from chronoshard.shardnode.eviction import make_policy
from chronoshard.shardnode.predictor.access import Access
from chronoshard.shardnode.predictor.features import KINDS, CandidateGenerator, GeneratorSettings
from chronoshard.shardnode.predictor.feedback import FeedbackController, OutcomeTracker, TokenBucket
from chronoshard.shardnode.predictor.labels import label_candidates
from chronoshard.shardnode.predictor.scorers import MODEL_KINDS, fit_auto, make_scorer
from chronoshard.shardnode.predictor.traces import FORMATS, Trace, read_trace

TABLE = "trace"
BASELINES = ("LRU", "ARC", "S3FIFO", "Sieve", "Belady")


@dataclass
class Result:
    obj_miss: float
    byte_miss: float
    precision: float = float("nan")
    hints: int = 0
    prefetched_pct: float = 0.0
    wasted_pct: float = 0.0


def run_baseline(name: str, trace: Trace, obj_size: np.ndarray, nxt: np.ndarray, capacity: int, unit: bool,
                 split: int) -> tuple[float, float]:
    """Miss ratios (object, byte) of one libCacheSim policy on requests [split:], warmed on [:split]."""
    import libcachesim as lcs

    cache = getattr(lcs, name)(cache_size=capacity)
    req = lcs.Request()
    req.op = lcs.ReqOp.OP_GET
    ids, sizes, times, nx = trace.obj_id.tolist(), obj_size.tolist(), trace.time.tolist(), nxt.tolist()
    n_req = n_hit = 0
    b_req = b_hit = 0
    for i in range(len(ids)):
        req.obj_id = ids[i]
        req.obj_size = 1 if unit else sizes[i]
        req.clock_time = int(times[i])
        # libCacheSim's Belady reads the (1-based) virtual time of the next request; "never" is far away.
        req.next_access_vtime = nx[i] + 1 if nx[i] >= 0 else 1 << 62
        hit = cache.get(req)
        if i >= split:
            n_req += 1
            b_req += sizes[i]
            if hit:
                n_hit += 1
                b_hit += sizes[i]
    return 1 - n_hit / n_req, 1 - b_hit / b_req


@dataclass
class Rows:
    origin: np.ndarray
    keys: list[str]
    sizes: np.ndarray
    kind: np.ndarray
    x: np.ndarray


def build_rows(accesses: list[Access], settings: GeneratorSettings) -> Rows:
    """Run the candidate generator over the whole trace (it only sees the past at each step)."""
    gen = CandidateGenerator(settings)
    origin: list[int] = []
    keys: list[str] = []
    sizes: list[int] = []
    kinds: list[int] = []
    feats: list[np.ndarray] = []
    for i, a in enumerate(accesses):
        for c in gen.observe(a):
            origin.append(i)
            keys.append(c.key)
            sizes.append(c.size)
            kinds.append(c.kind)
            feats.append(c.features)
    return Rows(np.array(origin), keys, np.array(sizes), np.array(kinds), np.vstack(feats))


class _Simulation:
    """Our cache fed by the predictor's hints, one request at a time (the state `simulate` steps through)."""

    def __init__(self, obj_size: dict[str, int], capacity: int, unit: bool, args: argparse.Namespace) -> None:
        self.obj_size, self.capacity, self.unit, self.args = obj_size, capacity, unit, args
        self.policy = make_policy(args.policy)
        self.used_bytes = 0
        self.sizes_in: dict[str, int] = {}
        self.tracker = OutcomeTracker()
        self.fb = FeedbackController(base_threshold=args.threshold, target_precision=args.target_precision,
                                     enabled=not args.no_feedback)
        self.hints_bucket = TokenBucket(args.hints_per_s, args.hints_per_s)
        self.bytes_bucket = TokenBucket(args.bytes_per_s, args.bytes_per_s)
        self.n_req = self.n_hit = self.b_req = self.b_hit = 0
        self.sent = self.used = 0
        self.pf_bytes = self.wasted_bytes = 0

    def account(self, outs: list, counted: bool) -> None:
        self.fb.record(outs)
        if not counted:
            return
        for o in outs:
            if o.sent:
                if o.used:
                    self.used += 1
                else:
                    self.wasted_bytes += o.size

    def _insert(self, key: str, size: int, **score: float) -> None:
        while self.used_bytes + size > self.capacity and len(self.policy):
            v = self.policy.victim()
            self.policy.remove(v)
            self.used_bytes -= self.sizes_in.pop(v)
            self.account(self.tracker.evicted(TABLE, v), True)
        self.policy.insert(key, size, **score)
        self.sizes_in[key] = size
        self.used_bytes += size

    def demand(self, a: Access, counted: bool) -> None:
        """A request: expire old hints, hit or insert on the miss, count it when past the warm-up."""
        self.account(self.tracker.expire(a.time), counted)
        size = 1 if self.unit else self.obj_size[a.key]
        self.account(self.tracker.access(TABLE, a.key, a.time), counted)
        hit = a.key in self.policy
        if hit:
            self.policy.touch(a.key)
        elif size <= self.capacity:
            self._insert(a.key, size)
        if counted:
            self.n_req += 1
            self.b_req += self.obj_size[a.key]
            if hit:
                self.n_hit += 1
                self.b_hit += self.obj_size[a.key]

    def hint(self, key: str, score: float, row_size: int, now: float, counted: bool) -> None:
        """A candidate the predictor scored: prefetch it if above the threshold and within the budgets."""
        if score < self.args.threshold:
            return
        psize = self.obj_size.get(key, row_size)
        csize = 1 if self.unit else psize
        go = (score >= self.fb.threshold and key not in self.policy
              and not self.tracker.is_pending_sent(TABLE, key)
              and csize <= self.capacity
              and self.hints_bucket.take(1, now, self.fb.budget_factor)
              and self.bytes_bucket.take(psize, now, self.fb.budget_factor))
        if go:
            self._insert(key, csize, prefetch_score=score)
            if counted:
                self.sent += 1
                self.pf_bytes += psize
        self.tracker.add(TABLE, key, score, go and counted, psize, now, self.args.horizon)

    def result(self) -> Result:
        """Settle the hints still pending and summarise the scored part."""
        self.account(self.tracker.expire(float("inf")), True)
        return Result(1 - self.n_hit / self.n_req, 1 - self.b_hit / self.b_req,
                      self.used / self.sent if self.sent else float("nan"), self.sent,
                      100.0 * self.pf_bytes / self.b_req, 100.0 * self.wasted_bytes / self.b_req)


def simulate(accesses: list[Access], obj_size: dict[str, int], rows: Rows, scores: np.ndarray, capacity: int,
             unit: bool, split: int, args: argparse.Namespace) -> Result:
    """Our cache fed by the predictor's hints: demand misses insert, hints above threshold prefetch."""
    sim = _Simulation(obj_size, capacity, unit, args)
    origin = rows.origin.tolist()
    rkeys, rsizes, sc = rows.keys, rows.sizes.tolist(), scores.tolist()
    j, n_rows = 0, len(origin)
    for i, a in enumerate(accesses):
        counted = i >= split
        sim.demand(a, counted)
        while j < n_rows and origin[j] == i:
            sim.hint(rkeys[j], sc[j], rsizes[j], a.time, counted)
            j += 1
    return sim.result()


def fit_models(rows: Rows, y: np.ndarray, train: np.ndarray, test: np.ndarray, names: str) -> dict[str, np.ndarray]:
    """Train each model named in ``names`` (comma list) and score every candidate; print its test precision."""
    from sklearn.metrics import average_precision_score

    models: dict[str, np.ndarray] = {}
    for m in names.split(","):
        t2 = time.time()
        if train.sum() < 20:
            print(f"model {m}: too little training data, predictor off")
            models[m] = np.zeros(len(rows.keys))
            continue
        if m == "auto":
            choice = fit_auto(rows.x[train], y[train])
            scorer = choice.scorer
            losses = ", ".join(f"{k}={v:.4f}" for k, v in choice.validation_loss.items())
            label = f"auto->{scorer.kind}"
            print(f"model auto: held-out log loss {losses}; chose {scorer.kind}")
        else:
            scorer = make_scorer(m).fit(rows.x[train], y[train])
            label = m
        models[label] = scorer.predict(rows.x)
        ap = average_precision_score(y[test], models[label][test]) if len(np.unique(y[test])) > 1 else float("nan")
        print(f"model {label}: trained in {time.time() - t2:.1f}s, test average precision {ap:.3f}")
    return models


def print_tables(accesses: list[Access], obj_size: dict[str, int], rows: Rows, models: dict[str, np.ndarray],
                 base: dict[tuple[bool, int, str], tuple[float, float]], fracs: list[float],
                 caps: dict[bool, list[int]], split: int, args: argparse.Namespace) -> None:
    """The object and byte miss-ratio tables: the baselines, then our cache with each model's hints."""
    for unit in (True, False):
        print()
        print(("OBJECT miss ratio (unit-size objects)" if unit else "BYTE miss ratio (real sizes)") +
              "; ours = cache + predictor hints; prec = used hints / sent hints; "
              "pf% / waste% = prefetched / wasted bytes as % of bytes requested")
        hdr = f"{'size':>5} {'cap':>11} " + " ".join(f"{b:>7}" for b in BASELINES)
        hdr += f" {'best4':>7} " + " ".join(f"{m:>20}" for m in models)
        print(hdr)
        for k, f in enumerate(fracs):
            cap = caps[unit][k]
            line = f"{f * 100:4g}% {cap:>11} "
            vals = []
            for name in BASELINES:
                v = base.get((unit, k, name))
                mr = (v[0] if unit else v[1]) if v else float("nan")
                vals.append(mr)
                line += f"{mr:7.4f} "
            line += f"{min(vals[:4]):7.4f} "
            for scores in models.values():
                r = simulate(accesses, obj_size, rows, scores, cap, unit, split, args)
                mr = r.obj_miss if unit else r.byte_miss
                line += f" {mr:.4f} p{r.precision:.2f} w{r.wasted_pct:4.1f}%"
            print(line)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the tables."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="trace file")
    p.add_argument("--format", choices=FORMATS, default=None, help="default: from the file name")
    p.add_argument("--train-frac", type=float, default=0.3)
    p.add_argument("--sizes", default="0.01,0.05,0.1")
    p.add_argument("--models", default="auto", help="comma list of auto," + ",".join(MODEL_KINDS))
    p.add_argument("--horizon", type=float, default=10.0, help="seconds a hint may wait for its request")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--target-precision", type=float, default=0.5)
    p.add_argument("--no-feedback", action="store_true")
    p.add_argument("--hints-per-s", type=float, default=200.0)
    p.add_argument("--bytes-per-s", type=float, default=64 * 2**20)
    p.add_argument("--block-bytes", type=int, default=512)
    p.add_argument("--skip-baselines", action="store_true")
    p.add_argument("--policy", default="scored", help="our eviction policy (shardnode/eviction.py)")
    args = p.parse_args(argv)
    if not 0.0 <= args.train_frac < 1.0:
        p.error("--train-frac must be in [0, 1)")

    t0 = time.time()
    trace = read_trace(args.data, args.format)
    n = len(trace)
    split = int(n * args.train_frac)
    obj_size_arr = trace.object_sizes()
    nxt = trace.next_access()
    uniq, first = np.unique(trace.obj_id, return_index=True)
    wss_bytes = int(obj_size_arr[first].sum())
    print(f"trace {args.data.name}: {n} requests, {len(uniq)} objects, footprint {wss_bytes} B, "
          f"{int(trace.write.sum())} writes; train/warm-up = first {split} requests, scored = {n - split}")
    print(f"our eviction policy: chronoshard.shardnode.eviction {args.policy!r}")
    fracs = [float(x) for x in args.sizes.split(",")]
    caps = {True: [max(1, round(f * len(uniq))) for f in fracs], False: [max(1, round(f * wss_bytes)) for f in fracs]}

    base: dict[tuple[bool, int, str], tuple[float, float]] = {}
    if not args.skip_baselines:
        for unit in (True, False):
            for k, cap in enumerate(caps[unit]):
                for name in BASELINES:
                    base[(unit, k, name)] = run_baseline(name, trace, obj_size_arr, nxt, cap, unit, split)
        print(f"baselines done in {time.time() - t0:.1f}s")

    accesses = [Access(time=t, table=TABLE, key=str(o), size=s, write=w) for t, o, s, w in
                zip(trace.time.tolist(), trace.obj_id.tolist(), trace.size.tolist(), trace.write.tolist(),
                    strict=True)]
    obj_size = {str(o): int(s) for o, s in zip(trace.obj_id.tolist(), obj_size_arr.tolist(), strict=True)}
    settings = GeneratorSettings(block_bytes=args.block_bytes)
    t1 = time.time()
    rows = build_rows(accesses, settings)
    y = label_candidates(accesses, rows.origin.tolist(), [(TABLE, k) for k in rows.keys], args.horizon)
    split_time = accesses[split - 1].time if split else -np.inf
    times = trace.time[rows.origin]
    train = (rows.origin < split) & (times + args.horizon <= split_time)
    test = rows.origin >= split
    per_kind = ", ".join(f"{k}: {int((rows.kind == i).sum())}" for i, k in enumerate(KINDS))
    print(f"{len(rows.keys)} candidates ({per_kind})"
          f", {int(train.sum())} labelled for training, in {time.time() - t1:.1f}s; "
          f"share requested within {args.horizon:g}s: {y[test].mean():.3f} of test candidates")

    models = fit_models(rows, y, train, test, args.models)

    # Our eviction policy alone (no hints), to separate what the policy does from what prefetching does.
    models = {"policy only": np.zeros(len(rows.keys)), **models}
    print_tables(accesses, obj_size, rows, models, base, fracs, caps, split, args)
    print(f"\nours per cell: miss ratio, p = precision, w = wasted prefetched bytes % of bytes requested. "
          f"total {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
