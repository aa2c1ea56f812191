"""Replay a trace through LRU/ARC/S3-FIFO/SIEVE/Belady (libCacheSim) and through our cache + predictor.

    python -m tests.bench.bench_prefetch_trace --data /work/shared/data/cache/cloudPhysicsIO/cloudPhysicsIO.vscsi

Any format of predictor/traces.py (csv, oracleGeneral, vscsi, txt); object ids are mapped to dense ones
for libCacheSim (its request takes an unsigned 64-bit id). The first --train-frac of the requests trains
the predictor and warms every cache; only the rest is scored. Every request counts (reads and writes, as
libCacheSim does); objects are start blocks with the size of their first request (libCacheSim's
oracleGeneral convention). For each cache size (share of the footprint) it prints the baselines, our
eviction policies alone, then our cache with the predictor's hints at each hint budget (hints per request,
one hint = one backend fetch: a block, or a read-ahead range of a run): the miss ratio, the backend
fetches (demand + prefetch) beside the best online policy's, precision and the wasted prefetched bytes
(evicted, or not requested within the horizon) as a share of the bytes requested.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from chronoshard.shardnode.eviction import make_policy
from chronoshard.shardnode.predictor.access import Access, offset_key
from chronoshard.shardnode.predictor.features import (
    FEATURE_NAMES,
    KIND_SEQ1,
    KINDS,
    CandidateGenerator,
    GeneratorSettings,
)
from chronoshard.shardnode.predictor.feedback import FeedbackController, OutcomeTracker, TokenBucket
from chronoshard.shardnode.predictor.labels import label_candidates
from chronoshard.shardnode.predictor.ranking import BudgetRanker, range_length, tail_threshold
from chronoshard.shardnode.predictor.scorers import MODEL_KINDS, fit_auto, make_scorer
from chronoshard.shardnode.predictor.traces import FORMATS, Trace, read_trace

TABLE = "trace"
BASELINES = ("LRU", "ARC", "S3FIFO", "Sieve", "Belady")
RUN_LEN = FEATURE_NAMES.index("run_len")


@dataclass
class Result:
    obj_miss: float
    byte_miss: float
    precision: float = float("nan")
    hints: int = 0
    prefetched_pct: float = 0.0
    wasted_pct: float = 0.0
    demand_fetches: int = 0
    prefetch_fetches: int = 0


def dense_ids(obj_id: np.ndarray) -> np.ndarray:
    """Object ids as 1..n (libCacheSim takes unsigned ids; traces may hold any 64-bit pattern, even negative)."""
    _, inverse = np.unique(obj_id, return_inverse=True)
    return inverse.astype(np.int64) + 1


def run_baseline(name: str, trace: Trace, obj_size: np.ndarray, nxt: np.ndarray, capacity: int, unit: bool,
                 split: int) -> tuple[float, float]:
    """Miss ratios (object, byte) of one libCacheSim policy on requests [split:], warmed on [:split]."""
    import libcachesim as lcs

    cache = getattr(lcs, name)(cache_size=capacity)
    req = lcs.Request()
    req.op = lcs.ReqOp.OP_GET
    ids, sizes, times, nx = dense_ids(trace.obj_id).tolist(), obj_size.tolist(), trace.time.tolist(), nxt.tolist()
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
    x = np.vstack(feats) if feats else np.zeros((0, len(FEATURE_NAMES)))
    as_int = np.int64
    return Rows(np.array(origin, dtype=as_int), keys, np.array(sizes, dtype=as_int), np.array(kinds, dtype=as_int), x)


class _Simulation:
    """Our cache fed by the predictor's hints, one request at a time (the state `simulate` steps through)."""

    def __init__(self, obj_size: dict[str, int], capacity: int, unit: bool, args: argparse.Namespace,
                 policy: str | None = None, hints_per_s: float | None = None) -> None:
        self.obj_size, self.capacity, self.unit, self.args = obj_size, capacity, unit, args
        self.policy = make_policy(policy or args.policy.split(",")[0])
        self.hints_per_s = args.hints_per_s if hints_per_s is None else hints_per_s
        self.ranker = BudgetRanker()
        # The cache's own limit (cache.json prefetchBudgetFraction): unused prefetched bytes per cache budget.
        self.pf_limit = args.prefetch_budget_fraction * capacity
        self.pf_unused: dict[str, int] = {}
        self.unused_pf = 0
        self.used_bytes = 0
        self.sizes_in: dict[str, int] = {}
        self.tracker = OutcomeTracker()
        self.fb = FeedbackController(base_threshold=args.threshold, target_precision=args.target_precision,
                                     enabled=not args.no_feedback)
        self.hints_bucket = TokenBucket(self.hints_per_s, max(1.0, self.hints_per_s))
        self.bytes_bucket = TokenBucket(args.bytes_per_s, args.bytes_per_s)
        self.n_req = self.n_hit = self.b_req = self.b_hit = 0
        self.sent = self.used = self.fetches = 0
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
            self.unused_pf -= self.pf_unused.pop(v, 0)
            self.account(self.tracker.evicted(TABLE, v), True)
        self.policy.insert(key, size, **score)
        if score:
            self.pf_unused[key] = size
            self.unused_pf += size
        self.sizes_in[key] = size
        self.used_bytes += size

    def demand(self, a: Access, counted: bool) -> None:
        """A request: expire old hints, hit or insert on the miss, count it when past the warm-up."""
        self.account(self.tracker.expire(a.time), counted)
        size = 1 if self.unit else self.obj_size[a.key]
        self.account(self.tracker.access(TABLE, a.key, a.time), counted)
        hit = a.key in self.policy
        self.unused_pf -= self.pf_unused.pop(a.key, 0)
        self.fb.record_demand(self.obj_size[a.key])
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

    def _new(self, key: str) -> bool:
        return key not in self.policy and not self.tracker.is_pending_sent(TABLE, key)

    def plan(self, a: Access, key: str, score: float, kind: int, run_len: float) -> list[tuple[str, float]]:
        """The blocks one fetch for this candidate covers, with their use probabilities (tracked if over the
        base threshold); a run's next block becomes a read-ahead range unless --no-ranges."""
        if kind != KIND_SEQ1 or self.args.no_ranges:
            return [(key, score)]
        k = range_length(score, run_len, self.args.threshold, tail_threshold(self.fb.max_waste_share))
        blocks = max(1, -(-a.size // self.args.block_bytes)) if a.size > 0 else 1
        out = []
        for i in range(k):
            nxt = key if i == 0 else offset_key(key, i * blocks)
            if nxt is None:
                break
            out.append((nxt, score ** (i + 1)))
        return out

    def _worth(self, blocks: list[tuple[str, float]], score: float, run_len: float) -> tuple[float, list]:
        """(benefit, blocks to fetch) of a plan at the current threshold; nothing if too little of it is new."""
        k = len(blocks) if len(blocks) <= 1 else range_length(score, run_len, self.fb.threshold,
                                                              tail_threshold(self.fb.max_waste_share))
        want = [(b, p) for b, p in blocks[:k] if p >= self.fb.threshold]
        new = [(b, p) for b, p in want if self._new(b)]
        # A read-ahead range is re-issued once half of it is used up, not for every block read.
        if not new or len(new) < max(1, len(want) // 2):
            return 0.0, []
        return sum(p for _, p in new), new

    def hints(self, a: Access, cands: list[tuple[str, float, int, int, float]], counted: bool) -> None:
        """This request's candidates: plans (one fetch each) ranked by expected benefit, sent within budget."""
        plans, covered = [], set()
        for key, score, row_size, kind, run_len in sorted(cands, key=lambda c: c[3] != KIND_SEQ1):
            if score < self.args.threshold or key in covered:
                continue
            blocks = self.plan(a, key, score, kind, run_len)
            covered.update(b for b, _ in blocks)
            benefit, fetch = self._worth(blocks, score, run_len)
            if fetch:
                self.ranker.offer(benefit, a.time)
            plans.append((benefit, blocks, fetch, row_size))
        cutoff = self.ranker.cutoff(self.hints_per_s * self.fb.budget_factor) if not self.args.no_rank else 0.0
        for benefit, blocks, fetch, row_size in sorted(plans, key=lambda p: -p[0]):
            sent = set()
            if fetch and benefit >= cutoff and self._send(fetch, row_size, a.time, counted):
                sent = {b for b, _ in fetch}
            for b, p in blocks:
                psize = self.obj_size.get(b, row_size)
                self.tracker.add(TABLE, b, p, b in sent and counted, psize, a.time, self.args.horizon)

    def _send(self, fetch: list[tuple[str, float]], row_size: int, now: float, counted: bool) -> bool:
        sizes = [self.obj_size.get(b, row_size) for b, _ in fetch]
        csizes = [1 if self.unit else s for s in sizes]
        if self.unused_pf + sum(csizes) > self.pf_limit:
            return False
        if not (self.hints_bucket.take(1, now, self.fb.budget_factor)
                and self.bytes_bucket.take(sum(sizes), now, self.fb.budget_factor)):
            return False
        for (b, p), cs in zip(fetch, csizes, strict=True):
            self._insert(b, cs, prefetch_score=p)
        if counted:
            self.fetches += 1
            self.sent += len(fetch)
            self.pf_bytes += sum(sizes)
        return True

    def result(self) -> Result:
        """Settle the hints still pending and summarise the scored part."""
        self.account(self.tracker.expire(float("inf")), True)
        return Result(1 - self.n_hit / self.n_req, 1 - self.b_hit / self.b_req,
                      self.used / self.sent if self.sent else float("nan"), self.sent,
                      100.0 * self.pf_bytes / self.b_req, 100.0 * self.wasted_bytes / self.b_req,
                      self.n_req - self.n_hit, self.fetches)


def simulate(accesses: list[Access], obj_size: dict[str, int], rows: Rows, scores: np.ndarray, capacity: int,
             unit: bool, split: int, args: argparse.Namespace, policy: str | None = None,
             hints_per_s: float | None = None) -> Result:
    """Our cache fed by the predictor's hints: demand misses insert, hints above threshold prefetch."""
    sim = _Simulation(obj_size, capacity, unit, args, policy, hints_per_s)
    origin = rows.origin.tolist()
    rkeys, rsizes, sc, kinds = rows.keys, rows.sizes.tolist(), scores.tolist(), rows.kind.tolist()
    runs = rows.x[:, RUN_LEN].tolist() if len(rows.keys) else []
    j, n_rows = 0, len(origin)
    for i, a in enumerate(accesses):
        counted = i >= split
        sim.demand(a, counted)
        cands = []
        while j < n_rows and origin[j] == i:
            cands.append((rkeys[j], sc[j], rsizes[j], kinds[j], runs[j]))
            j += 1
        if cands:
            sim.hints(a, cands, counted)
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


def _baseline_line(base: dict[tuple[bool, int, str], tuple[float, float]], unit: bool, k: int,
                   n_scored: int) -> tuple[str, float, int]:
    """The baselines' cells, the best online miss ratio and that policy's backend fetches (its misses)."""
    cells, best, best_fetches = [], float("nan"), 0
    for name in BASELINES:
        v = base.get((unit, k, name))
        mr = (v[0] if unit else v[1]) if v else float("nan")
        cells.append(f"{name} {mr:.4f}")
        if v and name != "Belady" and not mr >= best:
            best, best_fetches = mr, round(v[0] * n_scored)
    return "  ".join(cells), best, best_fetches


def _cell(label: str, r: Result, unit: bool, best_fetches: int) -> str:
    mr = r.obj_miss if unit else r.byte_miss
    total = r.demand_fetches + r.prefetch_fetches
    rel = f"{total / best_fetches:5.2f}x best" if best_fetches else "    -     "
    prec = f"prec {r.precision:.2f}" if r.hints else "prec   - "
    return (f"  {label:<26} miss {mr:.4f}  fetches {total:>7} = {r.demand_fetches:>6} + {r.prefetch_fetches:>6} "
            f"({rel})  {prec}  waste {r.wasted_pct:4.1f}%")


def print_tables(accesses: list[Access], obj_size: dict[str, int], rows: Rows, models: dict[str, np.ndarray],
                 base: dict[tuple[bool, int, str], tuple[float, float]], fracs: list[float],
                 caps: dict[bool, list[int]], split: int, args: argparse.Namespace) -> None:
    """Per cache size: the baselines, each of our policies alone, then each model's hints at each budget."""
    n_scored = len(accesses) - split
    span = accesses[-1].time - accesses[0].time
    rate = len(accesses) / span if span > 0 else 1.0
    budgets = [float(b) for b in args.hint_budgets.split(",")] if args.hint_budgets else []
    for unit in (True, False):
        print()
        print(("OBJECT miss ratio (unit-size objects)" if unit else "BYTE miss ratio (real sizes)") +
              "; fetches = backend fetches in the scored part (demand misses + prefetch fetches; a read-ahead "
              "range is one), beside the best online policy's (its misses); waste = unused prefetched bytes, "
              "% of bytes requested")
        for k, f in enumerate(fracs):
            cap = caps[unit][k]
            line, best, best_fetches = _baseline_line(base, unit, k, n_scored)
            print(f"{f * 100:g}% (cap {cap}): {line}  best online {best:.4f} ({best_fetches} fetches)")
            zeros = np.zeros(len(rows.keys))
            for pol in args.policy.split(","):
                r = simulate(accesses, obj_size, rows, zeros, cap, unit, split, args, policy=pol)
                print(_cell(f"{pol} alone", r, unit, best_fetches))
            for name, scores in models.items():
                for b in budgets:
                    r = simulate(accesses, obj_size, rows, scores, cap, unit, split, args, hints_per_s=b * rate)
                    print(_cell(f"{name} {b:g} hint/req", r, unit, best_fetches))
                if not budgets:
                    r = simulate(accesses, obj_size, rows, scores, cap, unit, split, args)
                    print(_cell(f"{name} {args.hints_per_s:g} hint/s", r, unit, best_fetches))


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
    p.add_argument("--hints-per-s", type=float, default=200.0, help="the budget when --hint-budgets is empty")
    p.add_argument("--hint-budgets", default="0.5,1,2,4,12",
                   help="hint budgets to compare, in hints (backend fetches) per request of the trace")
    p.add_argument("--prefetch-budget-fraction", type=float, default=0.5,
                   help="as the cache's prefetchBudgetFraction: unused prefetched bytes per cache budget")
    p.add_argument("--no-ranges", action="store_true", help="one hint per block, no read-ahead ranges")
    p.add_argument("--no-rank", action="store_true", help="send hints as they come, no benefit cutoff")
    p.add_argument("--bytes-per-s", type=float, default=64 * 2**20)
    p.add_argument("--block-bytes", type=int, default=512)
    p.add_argument("--skip-baselines", action="store_true")
    p.add_argument("--policy", default="scored,greedydual",
                   help="our eviction policies to show alone (comma list; the first one also runs with the hints)")
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
    print(f"our eviction policies: chronoshard.shardnode.eviction {args.policy!r}")
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

    print_tables(accesses, obj_size, rows, models, base, fracs, caps, split, args)
    print(f"\ntotal {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
